"""``import surgery`` and every ``--help`` work with no framework importable."""

import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "h5py", "safetensors")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


# Not frameworks, but each costs start-up time that `surgery --help` must not pay.
HEAVY = ("ml_dtypes", "numpy", "yaml", "tqdm")


def _loaded(code: str) -> list[str]:
    result = _python(code + f"\nimport sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS + HEAVY)!r}))")
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_import_surgery_loads_no_framework():
    assert _loaded("import surgery") == []


def test_help_loads_no_framework_and_nothing_heavy():
    assert _loaded("from surgery.cli import cli\ntry: cli(['--help'], prog_name='surgery')\nexcept SystemExit: pass") == []
    assert _loaded("from surgery.cli import cli\ntry: cli(['transplant', '--help'], prog_name='surgery')\n"
                   "except SystemExit: pass") == []


def test_a_bfloat16_tensor_brings_ml_dtypes_and_nothing_else():
    loaded = _loaded("import surgery.dtypes as d\nassert d.get('bfloat16').numpy.itemsize == 2")
    assert "ml_dtypes" in loaded and not set(loaded) & set(FRAMEWORKS)
    assert "ml_dtypes" not in _loaded("import surgery.dtypes as d\nassert d.get('float32').numpy.itemsize == 4")


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
    from safetensors.numpy import load_file  # here, outside the blocked process, the reference reader

    expected, copied = load_file(str(TORCH / "cnn_source.safetensors")), load_file(str(out))
    assert copied.keys() == expected.keys()
    for key, value in expected.items():
        assert (copied[key] == value).all() and copied[key].dtype == value.dtype, key
