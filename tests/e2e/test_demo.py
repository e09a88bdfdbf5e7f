"""The demo's transplant end to end: the output loads into the new network with the right weights."""

import subprocess
import sys

import torch

import surgery
from fixtures.nets import IMAGE, TargetCNN
from tests.conftest import ROOT, TORCH

SRC, DST, MAP = TORCH / "cnn_source.pt", TORCH / "cnn_target.pt", TORCH / "demo_map.yaml"


def test_demo_transplant_copies_keeps_and_freezes(run, tmp_path):
    out = tmp_path / "model.pt"
    assert run("transplant", SRC, DST, "--map", MAP, "-o", out).exit_code == 0
    src, dst = torch.load(SRC, weights_only=True), torch.load(DST, weights_only=True)
    net = TargetCNN()
    net.load_state_dict(torch.load(out, weights_only=True))  # strict: every key present, every shape right
    state = net.state_dict()
    for key, value in src.items():
        if key.startswith("features."):
            new_key = "backbone." + key.removeprefix("features.")
            assert torch.equal(state[new_key], value), new_key
    assert torch.equal(state["head.fc1.weight"], src["classifier.1.weight"])
    assert torch.equal(state["head.fc1.bias"], src["classifier.1.bias"])
    for kept in ("neck.weight", "neck.bias", "head.out.weight", "head.out.bias"):
        assert torch.equal(state[kept], dst[kept]), kept


def test_load_into_freezes_the_backbone(tmp_path):
    net = TargetCNN()
    result = surgery.load_into(net, SRC, mapping=MAP)
    assert result.plan.frozen == [f"backbone.{i}" for i in (0, 1, 4, 5)]
    for name, p in net.named_parameters():
        assert p.requires_grad == (not name.startswith("backbone.")), name
    assert torch.equal(net.backbone[0].weight, torch.load(SRC, weights_only=True)["features.0.weight"])
    # A frozen BatchNorm keeps its statistics while the rest of the network trains.
    stats = net.backbone[1].running_mean.clone()
    net.train()
    net(torch.randn(4, *IMAGE))
    assert torch.equal(net.backbone[1].running_mean, stats)
    assert not net.backbone[1].training and net.head.fc1.training


def test_make_demo_script_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "fixtures" / "demo.py")], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "max abs difference of backbone outputs: 0" in result.stdout
    line = next(l for l in result.stdout.splitlines() if l.startswith("max abs difference, Keras vs PyTorch"))
    assert float(line.rsplit(" ", 1)[1]) <= 1e-5
