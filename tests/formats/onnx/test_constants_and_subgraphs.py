"""Weights that are not main-graph initializers: ``Constant`` nodes, ``If``/``Loop``/``Scan`` bodies and functions."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import surgery
from tests.conftest import run_ort


def _constant(name: str, arr: np.ndarray):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, ""))


def _dense_in_constants(path, w: np.ndarray, b: np.ndarray) -> None:
    """A Gemm whose weight and bias are Constant nodes: no initializer at all."""
    nodes = [_constant("/fc/Constant_output_0", w), _constant("/fc/Constant_1_output_0", b),
             helper.make_node("Gemm", ["x", "/fc/Constant_output_0", "/fc/Constant_1_output_0"], ["y"], name="/fc/Gemm",
                              transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_constant_node_weights_are_read_and_written_back(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    _dense_in_constants(tmp_path / "m.onnx", w, b)
    graph = surgery.load(tmp_path / "m.onnx")
    assert graph["fc"].kind == "dense"
    np.testing.assert_array_equal(graph["fc"].params["weight"].read(), w)
    np.testing.assert_array_equal(graph["fc"].params["bias"].read(), b)

    w2, b2 = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    _dense_in_constants(tmp_path / "src.onnx", w2, b2)
    surgery.transplant(tmp_path / "src.onnx", tmp_path / "m.onnx", output=tmp_path / "out.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ort(tmp_path / "out.onnx", {"x": x}), x @ w2.T + b2, atol=1e-6)


def _branchy(path, then_w: np.ndarray, else_w: np.ndarray, proj_w: np.ndarray) -> None:
    """``If`` whose branches each hold a weight (an initializer, a Constant), then a model-local function
    ``custom.Proj`` whose body keeps its weight in a Constant: no weight in the main graph at all."""
    def branch(name: str, weight: np.ndarray, as_constant: bool):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2, 3])
        w = f"/{name}/fc/weight"
        nodes = [_constant(w, weight)] if as_constant else []
        nodes.append(helper.make_node("MatMul", ["x", w], [f"{name}_out"], name=f"/{name}/fc/MatMul"))
        inits = [] if as_constant else [numpy_helper.from_array(weight, w)]
        return helper.make_graph(nodes, name, [], [out], initializer=inits)

    body = [_constant("/proj/weight", proj_w), helper.make_node("MatMul", ["h", "/proj/weight"], ["o"], name="/proj/MatMul")]
    function = helper.make_function("custom", "Proj", ["h"], ["o"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("If", ["cond"], ["h"], then_branch=branch("then", then_w, False),
                              else_branch=branch("else", else_w, True), name="choose"),
             helper.make_node("Proj", ["h"], ["y"], domain="custom", name="proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
                              functions=[function])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_weights_inside_subgraphs_and_functions_are_read_and_written_back(tmp_path):
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal((3, 3)).astype(np.float32) for _ in range(3)]
    _branchy(tmp_path / "m.onnx", *weights)
    graph = surgery.load(tmp_path / "m.onnx")
    read = {name: layer.params["weight"].read() for name, layer in graph.layers.items()}
    assert set(read) == {"then.fc", "else.fc", "proj"} and not graph.left_out
    for name, w in zip(("then.fc", "else.fc", "proj"), weights):
        np.testing.assert_array_equal(read[name], w.T, err_msg=name)  # MatMul (in, out) -> canonical (out, in)

    new = [rng.standard_normal((3, 3)).astype(np.float32) for _ in range(3)]
    _branchy(tmp_path / "src.onnx", *new)
    surgery.transplant(tmp_path / "src.onnx", tmp_path / "m.onnx", output=tmp_path / "out.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for cond, branch_w in ((True, new[0]), (False, new[1])):
        got = run_ort(tmp_path / "out.onnx", {"cond": np.array(cond), "x": x})
        np.testing.assert_allclose(got, x @ branch_w @ new[2], atol=1e-5, err_msg=f"cond={cond}")


def test_a_name_two_graphs_hold_is_named_as_left_out(tmp_path):
    """A subgraph's tensor with the name of one in the main graph: scope decides which a node reads; neither is read."""
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])], initializer=[w])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], "g",
                              [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    graph = surgery.load(tmp_path / "m.onnx")
    assert "scope" in graph.left_out["w"] and not list(graph.tensors())
