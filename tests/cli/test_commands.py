import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TORCH

DEMO = ["transplant", TORCH / "cnn_source.pt", TORCH / "cnn_target.pt", "--map", TORCH / "demo_map.yaml"]


def test_inspect_table_and_json(run):
    result = run("inspect", TORCH / "cnn_source.pt")
    assert result.exit_code == 0, result.stderr
    assert "features.1" in result.stdout and "batch_norm" in result.stdout
    assert "parameters" in result.stdout.splitlines()[-1]
    data = json.loads(run("inspect", TORCH / "cnn_source.pt", "--json").stdout)
    kinds = {l["name"]: l["kind"] for l in data["layers"]}
    assert kinds["features.0"] == "conv2d" and kinds["classifier.1"] == "dense"
    assert data["total"]["parameters"] == sum(l["count"] for l in data["layers"])


def test_transplant_writes_output_sidecar_and_report(run, tmp_path):
    out, report = tmp_path / "out.pt", tmp_path / "report.json"
    result = run(*DEMO, "-o", out, "--report", report)
    assert result.exit_code == 0, result.stderr
    assert "name after rename `^features\\.`" in result.stdout
    assert out.exists() and (tmp_path / "out.pt.surgery.json").exists()
    data = json.loads(report.read_text())
    pair = next(p for p in data["pairs"] if p["source"] == "classifier.1")
    assert pair["destination"] == "head.fc1" and pair["rule"].startswith("explicit")
    assert all(len(t["sha256"]) == 64 for t in pair["tensors"])
    record = json.loads((tmp_path / "out.pt.surgery.json").read_text())
    assert record["source"]["sha256"] and "backbone.0" in record["frozen"]


def test_dry_run_writes_nothing(run, tmp_path):
    dst = tmp_path / "dst.pt"
    shutil.copy(TORCH / "cnn_target.pt", dst)
    before = dst.read_bytes()
    result = run("transplant", TORCH / "cnn_source.pt", dst, "--map", TORCH / "demo_map.yaml", "--dry-run", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["kept"] == ["neck", "head.out"]
    assert dst.read_bytes() == before and not (tmp_path / "dst.pt.surgery.json").exists()


def test_default_output_replaces_destination(run, tmp_path):
    dst = tmp_path / "dst.pt"
    shutil.copy(TORCH / "cnn_target.pt", dst)
    before = dst.read_bytes()
    assert run("transplant", TORCH / "cnn_source.pt", dst, "--map", TORCH / "demo_map.yaml").exit_code == 0
    assert dst.read_bytes() != before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_strict_exits_1_and_writes_nothing(run, tmp_path):
    out = tmp_path / "out.pt"
    result = run("transplant", TORCH / "cnn_source.pt", TORCH / "cnn_target.pt", "-o", out, "--strict")
    assert result.exit_code == 1
    assert "strict: destination layers left as initialised" in result.stderr and not out.exists()


def test_diff_exit_codes(run, tmp_path):
    same = run("diff", TORCH / "cnn_source.pt", TORCH / "cnn_source.safetensors")
    assert same.exit_code == 0, same.stdout
    out = tmp_path / "out.pt"
    assert run(*DEMO, "-o", out).exit_code == 0
    changed = run("diff", TORCH / "cnn_target.pt", out, "--json")
    assert changed.exit_code == 1
    entries = {t["name"]: t for t in json.loads(changed.stdout)["tensors"]}
    assert entries["backbone.0.weight"]["status"] == "changed" and entries["backbone.0.weight"]["max_abs"] > 0
    assert entries["neck.weight"]["status"] == "equal"
    apart = json.loads(run("diff", TORCH / "cnn_source.pt", TORCH / "cnn_target.pt", "--json").stdout)["counts"]
    assert apart["only_a"] > 0 and apart["only_b"] > 0


@pytest.mark.parametrize("args,problem", [
    (["inspect", "missing.pt"], "missing.pt: no such file or folder"),
    (["inspect", TORCH / "needs_unsafe.pickle.pt"], "--unsafe-pickle"),
    (["transplant", TORCH / "cnn_source.pt", TORCH / "cnn_target.pt", "-o", TORCH / "cnn_source.pt"], "output is the source file"),
    (["transplant", TORCH / "cnn_source.pt", TORCH / "cnn_target.pt", "--map", "MAP"], "map.yaml:1: unknown key 'colour'"),
    (["transplant", TORCH / "cnn_source.pt", TORCH / "cnn_target.pt", "--max-shard-size", "lots"], "size 'lots'"),
])
def test_bad_input_is_one_line_exit_2_no_output(run, tmp_path, args, problem):
    bad_map = tmp_path / "map.yaml"
    bad_map.write_text("colour: red\n")
    args = [bad_map if a == "MAP" else a for a in args]
    if args[0] == "transplant" and "-o" not in args:
        args += ["-o", tmp_path / "out.pt"]
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.pt").exists()


def test_corrupt_checkpoint_through_the_cli(run, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    result = run("transplant", bad, TORCH / "cnn_target.pt", "-o", tmp_path / "out.pt")
    assert result.exit_code == 2 and "bad.safetensors: header is not valid JSON" in result.stderr
    assert not (tmp_path / "out.pt").exists()


def test_console_script_in_a_subprocess(tmp_path):
    exe = ROOT / ".venv" / "bin" / "surgery"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "surgery.cli"]
    ok = subprocess.run([*cmd, "inspect", str(TORCH / "tied.safetensors")], capture_output=True, text=True)
    assert ok.returncode == 0 and "tied to embed.weight" in ok.stdout
    bad = subprocess.run([*cmd, "inspect", str(tmp_path / "nope.pt")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"surgery: error: {tmp_path / 'nope.pt'}: no such file or folder"


def test_convert_pt_to_sharded_safetensors(run, tmp_path):
    out = tmp_path / "model.safetensors"
    result = run("convert", TORCH / "cnn_source.pt", out, "--max-shard-size", "20kB")
    assert result.exit_code == 0, result.stderr
    assert "model.safetensors.index.json" in result.stdout
    assert run("diff", TORCH / "cnn_source.pt", tmp_path / "model.safetensors.index.json").exit_code == 0
    assert run("convert", TORCH / "cnn_source.pt", TORCH / "cnn_source.pt").exit_code == 2


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".onnx", ".pt2", ".ts"])
def test_convert_to_a_format_that_needs_a_template_names_the_output(run, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    result = run("convert", TORCH / "cnn_source.pt", out)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"surgery: error: {out}: writing ") and "pass template=" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_onnx_external_data_outside_its_folder_is_bad_input(run, tmp_path):
    from tests.conftest import FIXTURES

    result = run("inspect", FIXTURES / "onnx" / "evil" / "model.onnx")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "model.onnx" in result.stderr and "outside" in result.stderr, result.stderr


def test_a_proposed_map_with_nothing_paired_is_read_and_refused_not_accepted(run, tmp_path):
    proposed = tmp_path / "map.yaml"
    keras_vgg, port = ROOT / "fixtures" / "keras" / "vgg.h5", TORCH / "vgg_port.pt"
    assert run("map", keras_vgg, port, "--match", "name", "-o", proposed).exit_code == 0  # no name in common
    text = proposed.read_text()
    assert "layers: {}" in text and "\nskip:" not in text and "# skip:" in text  # proposals stay comments
    result = run("transplant", keras_vgg, port, "--map", proposed, "-o", tmp_path / "out.pt")
    assert result.exit_code == 1, result.stderr  # a decision, not a YAML error (2) and not an empty success (0)
    assert "source layers unused: block1_conv1" in result.stderr and not (tmp_path / "out.pt").exists()
