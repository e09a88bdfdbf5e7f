"""The ``verify`` and ``check`` commands through click's CliRunner: exit codes, table, JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import save_file

from surgery.cli.proof import check, verify
from surgery.errors import SurgeryError

from tests.proof import nets
from tests.conftest import FACTORY


def _invoke(command, *args: object):
    return CliRunner().invoke(command, [str(a) for a in args])


def test_verify_match_exits_0(small_pt: pathlib.Path) -> None:
    result = _invoke(verify, small_pt, "--factory", FACTORY, "--input-shape", "2,3,6,6", "--against", small_pt)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("verify torch Small") and ": PASS" in result.output


def test_verify_mismatch_exits_1_and_names_the_layer(small_pt: pathlib.Path, tmp_path: pathlib.Path) -> None:
    net = nets.build()
    with torch.no_grad():
        net.fc2.weight.copy_(net.fc2.weight.T.clone())
    torch.save(net.state_dict(), tmp_path / "bad.pt")
    result = _invoke(verify, tmp_path / "bad.pt", "--factory", FACTORY, "--input-shape", "1x3x6x6",
                     "--against", small_pt, "--layers", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)  # stdout holds only the JSON: exporter chatter is kept out
    assert data["ok"] is False
    assert data["comparisons"][1]["first_divergent_layer"]["layer"] == "fc2"
    assert data["comparisons"][1]["outputs"][0]["passed"] is False


def test_verify_inputs_npz_and_tolerances(small_onnx: pathlib.Path, tmp_path: pathlib.Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.ones((2, 3, 6, 6), np.float32))
    result = _invoke(verify, small_onnx, "--inputs", tmp_path / "x.npz", "--rtol", "0", "--atol", "1e-3", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)["comparisons"][0]["outputs"][0]
    assert (out["rtol"], out["atol"]) == (0.0, 1e-3)


def test_verify_usage_errors(small_onnx: pathlib.Path) -> None:
    assert _invoke(verify, small_onnx, "--input-shape", "1,a").exit_code == 2
    both = _invoke(verify, small_onnx, "--input-shape", "1,3,6,6", "--inputs", small_onnx)
    assert both.exit_code == 2 and "not both" in both.output


def test_verify_bad_input_raises_surgery_error(small_pt: pathlib.Path) -> None:
    """The lead's main group turns this into one line and exit 2."""
    result = _invoke(verify, small_pt)
    assert isinstance(result.exception, SurgeryError) and "--factory" in str(result.exception)


def test_main_group_exit_2_when_registered(small_pt: pathlib.Path) -> None:
    from surgery.cli import cli

    if "verify" not in cli.commands:
        pytest.skip("verify is not registered in surgery.cli yet")
    result = CliRunner().invoke(cli, ["verify", str(small_pt)])
    assert result.exit_code == 2 and "--factory" in result.output


def test_check_exit_codes(tmp_path: pathlib.Path) -> None:
    base = {"a.weight": np.ones((2, 2), np.float32), "b.weight": np.ones(3, np.float32)}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(base, str(tmp_path / "ok.safetensors"))
    save_file({**base, "a.weight": np.full((2, 2), np.nan, np.float32)}, str(tmp_path / "nan.safetensors"))
    ok = _invoke(check, tmp_path / "ok.safetensors", "--base", tmp_path / "base.safetensors", "--frozen", "a")
    assert ok.exit_code == 0 and "PASS" in ok.output
    bad = _invoke(check, tmp_path / "nan.safetensors", "--base", tmp_path / "base.safetensors",
                  "--frozen", "a", "--json")
    assert bad.exit_code == 1
    problems = {(p["tensor"], p["check"]) for p in json.loads(bad.output)["problems"]}
    assert problems == {("a.weight", "finite"), ("a.weight", "frozen")}
    assert _invoke(check, tmp_path / "ok.safetensors").exit_code == 2  # --base is required


def test_help_needs_no_framework() -> None:
    block = ("import sys\nfor m in ('torch', 'tensorflow', 'keras', 'onnx', 'onnxruntime', 'h5py'): "
             "sys.modules[m] = None\nfrom surgery.cli.proof import verify, check\n")
    for name in ("verify", "check"):
        code = block + f"{name}(['--help'], prog_name='surgery {name}')"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert f"Usage: surgery {name}" in result.stdout and "Exit codes" in result.stdout
