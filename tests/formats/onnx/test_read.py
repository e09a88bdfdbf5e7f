"""ONNX reader: oracle against onnx.numpy_helper, and layout rules against ORT + PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures import onnx_fixtures
from surgery.formats import detect
from surgery.formats.onnx import model as sonnx

from tests.conftest import load_canonical, run_ort

# The gate orders of the ONNX spec and of torch.nn, written out independently of the reader.
ONNX_GATES = {"lstm": "iofc", "gru": "zrh"}
TORCH_GATES = {"lstm": "ifco", "gru": "rzh"}  # i,f,g(=c),o and r,z,n(=h), in ONNX letters


def native_arrays(path) -> dict[str, np.ndarray]:
    """Every initializer as ``onnx`` itself loads it (external data included)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def to_torch_gates(block: np.ndarray, kind: str) -> np.ndarray:
    gates = dict(zip(ONNX_GATES[kind], np.split(block, len(ONNX_GATES[kind]))))
    return np.concatenate([gates[g] for g in TORCH_GATES[kind]])


def expected(native: np.ndarray, layer_kind: str, role: str, layout: str) -> np.ndarray:
    """What the canonical tensor must be, from the native initializer."""
    if layout == "":
        return native
    if layout == "IO->OI":
        return native.T
    direction = 1 if role.endswith("_reverse") else 0
    row = native[direction]
    if role.startswith("bias_"):
        half = row.shape[0] // 2
        row = row[:half] if "_ih_" in role else row[half:]
    return to_torch_gates(row, layer_kind)


@pytest.mark.parametrize("name", ["cnn.onnx", "cnn_ext.onnx", "dense.onnx", "rnn.onnx"])
def test_oracle_every_initializer(fx, name):
    path = fx / "onnx" / name
    natives = native_arrays(path)
    graph = sonnx.read(str(path))
    seen = set()
    for layer in graph:
        for role, param in layer.params.items():
            assert param.key in natives, f"{param.key}: not an initializer of {name}"
            got = param.read()
            want = expected(natives[param.key], layer.kind, role, param.layout)
            assert got.shape == param.shape, f"{param.key} ({layer.key(role)}): shape {got.shape} != header {param.shape}"
            np.testing.assert_array_equal(got, want, err_msg=f"initializer {param.key} as {layer.key(role)}")
            seen.add(param.key)
    assert seen == set(natives), f"initializers not read: {set(natives) - seen}"


def test_kinds_names_and_attrs(fx):
    cnn = sonnx.read(str(fx / "onnx" / "cnn.onnx"))
    assert [(l.name, l.kind) for l in cnn] == [("features.0", "conv2d"), ("features.1", "batch_norm"), ("fc", "dense")]
    assert cnn["features.1"].attrs["eps"] == 1e-5
    assert cnn["features.0"].attrs["groups"] == 1
    assert set(cnn["features.1"].params) == {"weight", "bias", "running_mean", "running_var"}
    dense = sonnx.read(str(fx / "onnx" / "dense.onnx"))
    assert [(l.name, l.params["weight"].layout) for l in dense] == [
        ("gemm_t0", "IO->OI"), ("gemm_t1", ""), ("matmul", "IO->OI")]
    assert dense["matmul"].params["bias"].key == "b2"  # the Add after the MatMul
    rnn = sonnx.read(str(fx / "onnx" / "rnn.onnx"))
    assert [(l.name, l.kind) for l in rnn] == [("lstm", "lstm"), ("gru", "gru")]
    assert "weight_hh_l0_reverse" in rnn["lstm"].params


def test_external_data_is_lazy_and_memory_mapped(fx):
    graph = sonnx.read(str(fx / "onnx" / "cnn_ext.onnx"))
    assert graph.meta["external_data"] == ["cnn_ext.onnx.data"]
    arr = graph["fc"].params["weight"].read()
    assert isinstance(arr.base if arr.base is not None else arr, np.memmap) or isinstance(arr, np.memmap)


def test_detect_by_suffix(fx):
    assert detect(fx / "onnx" / "dense.onnx") == "onnx"


def test_dense_layouts_match_torch(fx):
    """Gemm transB=0, transB=1 and MatMul+Add, run in ORT, equal nn.Linear with the canonical weights."""
    import torch
    from torch import nn

    path = fx / "onnx" / "dense.onnx"
    graph = sonnx.read(str(path))
    x = np.random.default_rng(3).standard_normal((1, 4)).astype(np.float32)
    layers = {"gemm_t0": nn.Linear(4, 3), "gemm_t1": nn.Linear(3, 5), "matmul": nn.Linear(5, 2)}
    for name, linear in layers.items():
        linear.load_state_dict({r: torch.from_numpy(np.array(p.read())) for r, p in graph[name].params.items()})
    net = nn.Sequential(layers["gemm_t0"], nn.ReLU(), layers["gemm_t1"], layers["matmul"])
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(path, {"x": x}), want, rtol=1e-5, atol=1e-5)


def test_rnn_gate_orders_match_torch(fx):
    """ONNX LSTM (iofc) / GRU (zrh) weights, reordered, make torch.nn.LSTM/GRU compute what ORT computes."""
    import torch

    path = fx / "onnx" / "rnn.onnx"
    graph = sonnx.read(str(path))
    torch.manual_seed(123)
    net = onnx_fixtures.rnn()
    for p in net.parameters():  # forget the exported values: only the graph's may count
        torch.nn.init.uniform_(p, -3, 3)
    load_canonical(net, graph)
    x = np.random.default_rng(4).standard_normal(onnx_fixtures.RNN_INPUT).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(path, {"x": x}), want, rtol=1e-4, atol=1e-5)


def test_cnn_matches_torch(fx):
    import torch

    path = fx / "onnx" / "cnn.onnx"
    net = onnx_fixtures.cnn()
    for p in net.parameters():
        torch.nn.init.uniform_(p, -1, 1)
    load_canonical(net, sonnx.read(str(path)))
    x = np.random.default_rng(5).standard_normal(onnx_fixtures.CNN_INPUT).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(path, {"x": x}), want, rtol=1e-4, atol=1e-5)


def small_model(nodes, inits, inputs=("x",)):
    from onnx import TensorProto, helper, numpy_helper

    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()]))


def test_unrecognised_consumers_group_by_state_dict_name(tmp_path):
    """State_dict-named weights that reach their op through other nodes still form a layer, kind from roles;
    integer constants that are not state_dict-named are not layers."""
    import onnx
    from onnx import helper

    inits = {"enc.weight_ih_l0": np.ones((8, 3), np.float32), "enc.weight_hh_l0": np.ones((8, 2), np.float32),
             "shape_const": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Identity", ["enc.weight_ih_l0"], ["a"]),
             helper.make_node("Identity", ["enc.weight_hh_l0"], ["b"]),
             helper.make_node("Reshape", ["x", "shape_const"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(small_model(nodes, inits), path)
    graph = sonnx.read(str(path))
    # An exporter's integer shape constant is not a weight: no layer, left in the file as it is.
    assert [(l.name, l.kind) for l in graph] == [("enc", "lstm")]
    assert graph["enc"].params["weight_ih_l0"].layout == ""
    sonnx.write(graph, str(tmp_path / "out.onnx"))
    out = {t.name: t for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(out["shape_const"]), [1, -1])


def test_gru_without_linear_before_reset_is_noted(tmp_path):
    import onnx
    from onnx import helper

    h = 2
    inits = {"W": np.zeros((1, 3 * h, 3), np.float32), "R": np.zeros((1, 3 * h, h), np.float32)}
    node = helper.make_node("GRU", ["x", "W", "R"], ["y"], name="g0", hidden_size=h)
    path = tmp_path / "g.onnx"
    onnx.save(small_model([node], inits), path)
    graph = sonnx.read(str(path))
    assert graph["g0"].kind == "gru"
    assert any("linear_before_reset=0" in note for note in graph.notes)
