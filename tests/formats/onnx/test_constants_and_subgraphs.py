"""Weights that are not initializers: ``Constant`` nodes are read and written; subgraphs are named as left out."""

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


def test_weights_inside_an_if_subgraph_are_named_as_left_out(tmp_path):
    rng = np.random.default_rng(1)
    branch_w = numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "branch.w")

    def branch(name: str):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2, 3])
        return helper.make_graph([helper.make_node("MatMul", ["x", "branch.w"], [f"{name}_out"])], name, [], [out],
                                 initializer=[branch_w] if name == "then" else [])

    then, other = branch("then"), branch("else")
    other.node[0].input[1] = "x"  # the else branch: x @ x.T would not type-check; use a plain Identity
    other.node[0].CopyFrom(helper.make_node("Identity", ["x"], ["else_out"]))
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="choose")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], initializer=[cond])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "if.onnx"))
    graph = surgery.load(tmp_path / "if.onnx")
    assert "branch.w" in graph.left_out and "subgraph" in graph.left_out["branch.w"]
    assert "cond" in graph.left_out  # a boolean: not a weight
    in_file = {"cond", "branch.w"}
    assert {p.key for _, p in graph.tensors()} | set(graph.left_out) == in_file
