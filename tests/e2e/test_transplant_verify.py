"""`transplant --verify`: a Keras network into its PyTorch port, proven or caught."""

import json

import pytest

from tests.conftest import FIXTURES, TORCH

pytestmark = pytest.mark.zoo  # a zoo row: make zoo runs every test so marked

KERAS = FIXTURES / "keras" / "vgg.h5"
PORT = TORCH / "vgg_port10.pt"
FACTORY = "fixtures.nets:build_vgg_port10"


@pytest.fixture
def chdir_root(monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)  # the factory module lives in the repository


def test_verify_passes_and_is_recorded(run, tmp_path, chdir_root):
    out = tmp_path / "port.pt"
    result = run("transplant", KERAS, PORT, "--map", TORCH / "keras_full_map.yaml", "-o", out,
                 "--verify", "--factory", FACTORY, "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "against keras (vgg.h5): PASS" in result.stdout
    record = json.loads((tmp_path / "port.pt.surgery.json").read_text())
    assert record["verify"]["ok"] is True


def test_verify_catches_a_wrong_flatten_and_names_the_layer(run, tmp_path, chdir_root):
    wrong = tmp_path / "map.yaml"
    wrong.write_text((TORCH / "keras_full_map.yaml").read_text().replace("dest_order: CHW", "dest_order: HWC"))
    out = tmp_path / "port.pt"
    result = run("transplant", KERAS, PORT, "--map", wrong, "-o", out, "--verify", "--factory", FACTORY, "--quiet")
    assert result.exit_code == 1
    assert out.exists(), "the output is written even when the proof fails"
    record = json.loads((tmp_path / "port.pt.surgery.json").read_text())
    assert record["verify"]["ok"] is False
    assert "first divergent layer: classifier.1 (reference layer fc1)" in result.stdout


def test_a_proposed_shape_map_transplants_and_verifies(run, tmp_path, chdir_root):
    proposed = tmp_path / "map.yaml"
    result = run("map", KERAS, PORT, "--match", "shape", "-o", proposed)
    assert result.exit_code == 0, result.stderr
    text = proposed.read_text()
    assert "block1_bn: features.2  # shape batch_norm" in text and "could not pair" not in text
    out = tmp_path / "port.pt"
    result = run("transplant", KERAS, PORT, "--map", proposed, "-o", out, "--verify", "--factory", FACTORY, "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr


REVERSE = """\
version: 1
layers:
  features.0: block1_conv1
  features.2: block1_bn
  features.4: block2_conv1
  features.6: block2_bn
  classifier.1: fc1
  classifier.3: predictions
freeze: ["block1_*"]
flatten:
  classifier.1: {shape: [16, 4, 4], source_order: CHW, dest_order: HWC}
"""


def test_keras_to_pytorch_and_back_is_bit_exact(run, tmp_path):
    port = tmp_path / "port.pt"
    assert run("transplant", KERAS, PORT, "--map", TORCH / "keras_full_map.yaml", "-o", port, "-q").exit_code == 0
    reverse = tmp_path / "reverse.yaml"
    reverse.write_text(REVERSE)
    back = tmp_path / "back.keras"
    result = run("transplant", port, FIXTURES / "keras" / "vgg.keras", "--map", reverse, "-o", back, "-q")
    assert result.exit_code == 0, result.stderr
    assert "flatten rows CHW->HWC" in result.stdout
    same = run("diff", FIXTURES / "keras" / "vgg.keras", back)
    assert same.exit_code == 0, same.stdout
    frozen = {l["name"]: l["frozen"] for l in json.loads(run("inspect", back, "--json").stdout)["layers"]}
    assert frozen["block1_conv1"] and frozen["block1_bn"] and not frozen["fc1"]
