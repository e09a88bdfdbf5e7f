"""ONNX exports that used to transplant silently wrong: each now works, or is refused with a reason."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import surgery
from surgery.errors import FormatError, PlanError


class AttentionBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _export(model: nn.Module, x: torch.Tensor, path, *, dynamo: bool = False, **kw) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"], **kw)


def _ort(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]


def _trained(model: nn.Module, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def test_a_stored_tensor_shared_by_two_layers_is_two_layers_and_refuses_different_values(tmp_path):
    net = nn.Sequential(nn.LayerNorm(6), nn.LayerNorm(6))  # fresh: equal weights, exported once
    _export(net, torch.randn(2, 6), tmp_path / "dst.onnx")
    graph = surgery.load(tmp_path / "dst.onnx")
    assert {"0", "1"} <= set(graph.layers)
    assert graph["0"].params["weight"].ident == graph["1"].params["weight"].ident
    trained = _trained(nn.Sequential(nn.LayerNorm(6), nn.LayerNorm(6)))
    torch.save(trained.state_dict(), tmp_path / "src.pt")
    with pytest.raises(FormatError, match="are one stored tensor"):
        surgery.save(surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.onnx"), tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
    surgery.save(surgery.transplant(tmp_path / "dst.onnx", tmp_path / "dst.onnx"), tmp_path / "same.onnx")  # equal: fine


def test_a_batchnorm_folded_by_the_exporter_is_refused(tmp_path):
    net = _trained(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    _export(net, torch.randn(1, 3, 8, 8), tmp_path / "folded.onnx", do_constant_folding=True)
    torch.save(net.state_dict(), tmp_path / "src.pt")
    layers = surgery.load(tmp_path / "folded.onnx")
    assert any(l.attrs.get("folded") for l in layers), [l.attrs for l in layers]
    with pytest.raises(PlanError, match="BatchNorm folded in, so its weights are not the layer's own"):
        surgery.plan(tmp_path / "src.pt", tmp_path / "folded.onnx", {"match": "shape"})


def test_multi_layer_rnn_and_top_level_sequential_names(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 3, num_layers=2, batch_first=True)
            self.head = nn.Sequential(nn.Linear(3, 2))

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    x = torch.randn(2, 5, 4)
    _export(Net(), x, tmp_path / "dst.onnx")
    trained = _trained(Net())
    torch.save(trained.state_dict(), tmp_path / "src.pt")
    result = surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.onnx", strict=True)
    surgery.save(result, tmp_path / "out.onnx")
    with torch.no_grad():
        expected = trained(x).numpy()
    assert np.abs(_ort(tmp_path / "out.onnx", x) - expected).max() < 1e-5


def test_a_guessed_conv_pairs_with_a_known_transposed_conv(tmp_path):
    net = _trained(nn.Sequential(nn.ConvTranspose2d(3, 2, 3, stride=2)))
    x = torch.randn(1, 3, 4, 4)
    _export(nn.Sequential(nn.ConvTranspose2d(3, 2, 3, stride=2)), x, tmp_path / "dst.onnx")
    torch.save(net.state_dict(), tmp_path / "src.pt")
    result = surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.onnx")
    assert any("guessed a plain conv" in w for w in result.plan.warnings)
    surgery.save(result, tmp_path / "out.onnx")
    with torch.no_grad():
        assert np.abs(_ort(tmp_path / "out.onnx", x) - net(x).numpy()).max() < 1e-5


def test_multihead_attention_into_torchscript_copies_its_output_projection(tmp_path):
    torch.jit.save(torch.jit.script(AttentionBlock()), str(tmp_path / "dst.ts"))
    trained = _trained(AttentionBlock())
    torch.save(trained.state_dict(), tmp_path / "src.pt")
    result = surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.ts", strict=True)
    assert "out_proj.weight" in surgery.load(tmp_path / "dst.ts")["attn"].params
    surgery.save(result, tmp_path / "out.ts")
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "out.ts"))(x), trained(x), atol=1e-6)


def test_a_state_dict_named_code_pt_is_not_torchscript(tmp_path):
    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "code.pt")
    assert surgery.load(tmp_path / "code.pt").format == "torch"


def test_check_ignores_the_batchnorm_step_counter_onnx_cannot_carry(tmp_path):
    net = _trained(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    torch.save(net.state_dict(), tmp_path / "base.pt")
    _export(net, torch.randn(2, 4), tmp_path / "model.onnx", do_constant_folding=False)
    report = surgery.check(tmp_path / "model.onnx", base=tmp_path / "base.pt")
    assert not any("num_batches_tracked" in p.tensor for p in report.problems), report


@pytest.mark.parametrize("dynamo", [False, True])
def test_multihead_attention_in_onnx_is_one_layer(tmp_path, dynamo):
    x = torch.randn(2, 5, 8)
    _export(AttentionBlock(), x, tmp_path / "dst.onnx", dynamo=dynamo)
    layer = surgery.load(tmp_path / "dst.onnx")["attn"]
    assert layer.kind == "multi_head_attention" and {"in_proj_weight", "out_proj.weight"} <= set(layer.params)
    trained = _trained(AttentionBlock())
    torch.save(trained.state_dict(), tmp_path / "src.pt")
    if "out_proj.bias" not in layer.params:  # the dynamo exporter drops a bias that is all zeros when exported
        with pytest.raises(surgery.StrictError, match="source tensors with no destination: attn.out_proj.bias"):
            surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.onnx", strict=True)
        with torch.no_grad():
            trained.attn.out_proj.bias.zero_()
        torch.save(trained.state_dict(), tmp_path / "src.pt")
    mapping = {} if "out_proj.bias" in layer.params else {"skip": ["attn.out_proj.bias"]}  # zero: nothing is lost
    surgery.save(surgery.transplant(tmp_path / "src.pt", tmp_path / "dst.onnx", mapping), tmp_path / "out.onnx")
    with torch.no_grad():
        assert np.abs(_ort(tmp_path / "out.onnx", x) - trained(x).numpy()).max() < 1e-5
