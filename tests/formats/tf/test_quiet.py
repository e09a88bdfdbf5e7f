"""Nothing but surgery's own words on the terminal: TensorFlow, absl and Keras logging stay off stderr.

Each command runs in a fresh subprocess (as a user's shell runs it), with no
TF_CPP_MIN_LOG_LEVEL of its own, so TensorFlow's C++ start-up lines would show.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES, ROOT

pytest.importorskip("tensorflow")

# One process runs the commands one after the other, each as the console script would.
_SCRIPT = """
import sys
from surgery.cli import cli
for args in {commands!r}:
    try:
        cli.main(args=args, prog_name="surgery", standalone_mode=False)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
"""


def _run(commands: list[list[str]]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND", "GRPC_VERBOSITY")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", _SCRIPT.format(commands=commands)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_reading_tf_files_and_a_keras_transplant_print_nothing_on_stderr(tmp_path):
    commands = [["inspect", str(FIXTURES / "tf" / "tf1" / "model.ckpt")],
                ["inspect", str(FIXTURES / "tf" / "tf2" / "ckpt.index")],
                ["inspect", str(FIXTURES / "tf" / "saved_model")],
                ["transplant", str(FIXTURES / "keras" / "vgg.keras"), str(FIXTURES / "torch" / "vgg_port.pt"),
                 "--map", str(FIXTURES / "torch" / "keras_map.yaml"), "-o", str(tmp_path / "out.pt")]]
    done = _run(commands)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"stderr was not quiet:\n{done.stderr}"
    assert "block1_conv1" in done.stdout and (tmp_path / "out.pt").exists()


def test_a_bad_tf_file_is_one_line_of_surgery(tmp_path):
    bad = tmp_path / "model.ckpt.index"
    bad.write_bytes(b"not an index")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", "import sys; from surgery.cli import main; sys.argv[0] = 'surgery'; main()",
                           "inspect", str(bad)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(bad) in done.stderr, done.stderr
