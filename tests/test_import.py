"""``import surgery`` and every ``--help`` work with no framework importable."""

import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "h5py", "safetensors")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_surgery_loads_no_framework():
    result = _python(f"import sys, surgery; print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_help_works_without_frameworks():
    block = f"import sys\nfor m in {FRAMEWORKS!r}: sys.modules[m] = None\n"
    result = _python(block + "from surgery.cli import cli\nprint(sorted(cli.commands))")
    assert result.returncode == 0, result.stderr
    commands = eval(result.stdout)
    assert {"inspect", "transplant", "diff", "map"} <= set(commands)
    for command in [None, *commands]:
        args = [command, "--help"] if command else ["--help"]
        code = block + f"from surgery.cli import cli\ncli({args!r}, prog_name='surgery')"
        result = _python(code)
        assert result.returncode == 0, (command, result.stderr)
        assert "Usage: surgery" in result.stdout, command


def test_safetensors_round_trip_needs_no_framework(tmp_path):
    from tests.conftest import TORCH

    block = f"import sys\nfor m in {FRAMEWORKS!r}: sys.modules[m] = None\n"
    out = tmp_path / "copy.safetensors"
    code = block + (f"import surgery\nr = surgery.transplant({str(TORCH / 'cnn_source.safetensors')!r}, "
                    f"{str(TORCH / 'cnn_source.safetensors')!r})\nsurgery.save(r, {str(out)!r})\nprint('ok')")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[8:] and out.stat().st_size > 40_000
