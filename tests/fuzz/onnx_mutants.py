"""ONNX mutants: an initializer's dims, data type, raw data and external data entries; the nodes that give a layer
its kind (op types, attributes, inputs); then the protobuf's bytes."""

from __future__ import annotations

from hypothesis import strategies as st

from .common import byte_edit, fixture_bytes, hostile_ints, hostile_text
from .harness import Mutant

FIXTURES = ("onnx/cnn.onnx", "onnx/rnn.onnx", "onnx/dense.onnx", "onnx/cnn_ext.onnx")
DATA = {"onnx/cnn_ext.onnx": "cnn_ext.onnx.data"}
_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "BatchNormalization", "LayerNormalization",
        "Gather", "PRelu", "Identity", "Constant", "Add", "Attention", "Nope")
_int64 = hostile_ints.filter(lambda n: -(2**63) <= n < 2**63)


@st.composite
def tensor_edit(draw, tensor) -> str:
    """One field of an initializer (or a Constant node's tensor) changed."""
    kind = draw(st.sampled_from(["dims", "dim", "data_type", "raw_data", "float_data", "external", "location"]))
    if kind == "dims":
        del tensor.dims[:]
        tensor.dims.extend(draw(st.lists(st.one_of(_int64, st.integers(0, 8)), max_size=5)))
    elif kind == "dim" and tensor.dims:
        i = draw(st.integers(0, len(tensor.dims) - 1))
        tensor.dims[i] = draw(st.one_of(_int64, st.sampled_from([tensor.dims[i] + 1, tensor.dims[i] * 2])))
    elif kind == "data_type":
        tensor.data_type = draw(st.one_of(st.integers(0, 26), st.sampled_from([-1, 99, 2**31 - 1])))
    elif kind == "raw_data":
        raw = tensor.raw_data
        tensor.raw_data = draw(st.sampled_from([raw[: len(raw) // 2], raw + b"\0" * 4, b"", raw[:-1]]))
    elif kind == "float_data":
        tensor.ClearField("raw_data")
        tensor.float_data.extend(draw(st.lists(st.floats(width=32), max_size=3)))
    elif kind == "external":
        del tensor.external_data[:]
        for key in draw(st.lists(st.sampled_from(["location", "offset", "length", "checksum", "other"]), max_size=4)):
            entry = tensor.external_data.add()
            entry.key = key
            entry.value = draw(st.one_of(hostile_text, _int64.map(str)))
        tensor.data_location = draw(st.sampled_from([1, 1, 0]))
    else:
        for entry in tensor.external_data:
            if entry.key in ("offset", "length") or draw(st.booleans()):
                entry.value = draw(st.one_of(_int64.map(str), hostile_text))
        tensor.data_location = draw(st.sampled_from([tensor.data_location, 1 - tensor.data_location]))
    dims = list(tensor.dims)
    return f"{tensor.name!r}: {kind} (dims {dims[:6]}, type {tensor.data_type}, {len(tensor.raw_data)} raw bytes, " \
           f"external {[(e.key, e.value[:20]) for e in tensor.external_data]})"


@st.composite
def node_edit(draw, graph) -> str:
    """A node's op type, an attribute, or an input changed: the layer kind and its slots follow from these."""
    node = draw(st.sampled_from(list(graph.node)))
    kind = draw(st.sampled_from(["op_type", "attribute", "input", "drop_input"]))
    if kind == "op_type":
        node.op_type = draw(st.sampled_from(_OPS))
        return f"node {node.name!r} op -> {node.op_type}"
    if kind == "attribute" and node.attribute:
        attr = draw(st.sampled_from(list(node.attribute)))
        if attr.ints:
            attr.ints[draw(st.integers(0, len(attr.ints) - 1))] = draw(_int64)
        else:
            attr.i = draw(_int64)
        return f"node {node.name!r} attribute {attr.name} -> {list(attr.ints) or attr.i}"
    names = [t.name for t in graph.initializer] + list(node.input) + [""]
    if kind == "input" and node.input:
        i = draw(st.integers(0, len(node.input) - 1))
        node.input[i] = draw(st.sampled_from(names))
        return f"node {node.name!r} input {i} -> {node.input[i]!r}"
    if node.input:
        del node.input[draw(st.integers(0, len(node.input) - 1))]
    return f"node {node.name!r} lost an input"


def _tensors(graph) -> list:
    """The initializers and the tensors of Constant nodes: every tensor the reader takes."""
    constants = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t")]
    return [*graph.initializer, *constants]


@st.composite
def onnx_mutants(draw) -> Mutant:
    """A model with 0-3 edits of its tensors and nodes, then maybe its bytes (or its external data) edited."""
    import onnx

    fixture = draw(st.sampled_from(FIXTURES))
    model = onnx.ModelProto.FromString(fixture_bytes(fixture))
    edits = []
    for _ in range(draw(st.integers(0, 3))):
        tensors = _tensors(model.graph)
        if tensors and draw(st.integers(0, 2)):
            edits.append(draw(tensor_edit(draw(st.sampled_from(tensors)))))
        elif len(model.graph.node):
            edits.append(draw(node_edit(model.graph)))
    data = model.SerializeToString()
    files = {}
    if fixture in DATA:
        extra = fixture_bytes(f"onnx/{DATA[fixture]}")
        if draw(st.integers(0, 3)) == 0:
            extra, edit = draw(byte_edit(extra))
            edits.append(f"external data: {edit}")
        files[DATA[fixture]] = extra
    if not edits or draw(st.integers(0, 3)) == 0:
        data, edit = draw(byte_edit(data))
        edits.append(edit)
    return Mutant(fixture, tuple(edits), {"fuzzed.onnx": data, **files}, "fuzzed.onnx")
