"""A conv bias the destination has no tensor for, folded into the BatchNorm after it (map ``fold``): exact, reported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import surgery


def _net(bias: bool) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=bias), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t))
    return net.eval()


def test_a_conv_bias_folds_into_the_next_batch_norm(tmp_path):
    torch.manual_seed(0)
    source, dest = _net(bias=True), _net(bias=False)
    torch.save(source.state_dict(), tmp_path / "src.pt")
    torch.save(dest.state_dict(), tmp_path / "dst.pt")
    with pytest.raises(surgery.StrictError, match="source tensors with no destination: 0.bias") as refused:
        surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.pt")  # a state_dict does not say a BN follows
    assert "no activation between): fold: [\"0.bias\"]" in refused.value.accept_lines  # proposed, not done
    result = surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.pt", {"fold": ["0.bias"]}, output=tmp_path / "out.pt")
    assert result.plan.strict_ok and not result.plan.dropped
    mean = result.plan.copies()["1.running_mean"]
    assert "0.bias" in mean.sources and "minus 0.bias (its bias folded in: exact)" in mean.transform
    dest.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(dest(x), source(x), atol=1e-5)


def test_no_fold_where_no_batch_norm_is_paired_after_it(tmp_path):
    torch.manual_seed(1)
    source = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.ReLU(), nn.Conv2d(4, 4, 1))
    dest = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 4, 1))
    torch.save(source.state_dict(), tmp_path / "src.pt")
    torch.save(dest.state_dict(), tmp_path / "dst.pt")
    with pytest.raises(surgery.StrictError, match="source tensors with no destination: 0.bias"):
        surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.pt")
    with pytest.raises(surgery.PlanError, match="fold '0.bias': the layers after 0 and 0 are not a paired BatchNorm"):
        surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.pt", {"fold": ["0.bias"]})
