"""Which layer each ONNX initializer belongs to: the consuming node names the layer and its kind.

``Conv`` -> conv, ``Gemm``/``MatMul`` -> dense, ``LSTM``/``GRU`` -> rnn with PyTorch
gate orders, normalizations, ``Gather`` -> embedding. Each initializer becomes a
``Slot`` (``slots.py``) of the layer that reads it; what no node explains is noted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ... import dtypes
from ...errors import SurgeryError, fail
from ...graph import Param
from ...kinds import infer_kind, split_key
from .external import Source, surgery_dtype
from .scopes import module_path, name_scopes
from .slots import Slot, channel_slot, dense_slot, plain_slot, rnn_slot

# torch.onnx.export keeps state_dict names (``features.0.weight``) for initializers.
_STATE_NAME = re.compile(r"^\w+(\.\w+)+$")  # a top-level nn.Sequential's keys start with a digit
# Elementwise arithmetic: an anonymous scalar feeding only these is a folded constant, not a layer.
_ARITHMETIC = frozenset({"Mul", "Div", "Add", "Sub", "Pow", "Sqrt", "Max", "Min", "Clip", "Where", "Equal", "Less",
                         "Greater", "LessOrEqual", "GreaterOrEqual", "Mod"})


@dataclass
class LayerSpec:
    """One layer found in the graph: where its tensors come from."""

    name: str
    kind: str
    order: int
    attrs: dict[str, Any] = field(default_factory=dict)
    roles: dict[str, tuple[Slot, int]] = field(default_factory=dict)  # role -> (slot, piece)


def load_model(path: str) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise fail(path, f"not a valid ONNX model ({type(exc).__name__}: {exc}); is the file truncated?") from None
    if not model.HasField("graph"):
        raise fail(path, "not a valid ONNX model: it has no graph; is the file truncated?")
    if not _all_text(model):
        raise fail(path, "not a valid ONNX model: a name in it is not UTF-8 text; is the file damaged?")
    return model


def _all_text(message: Any) -> bool:
    """Whether every string field, in every nested message, is UTF-8.

    ONNX is proto2: protobuf does not check a string's UTF-8 when it parses, and
    hands a bad one back as bytes or raises ``UnicodeDecodeError`` when it is read.
    """
    from google.protobuf.descriptor import FieldDescriptor

    try:
        for field, value in message.ListFields():
            values = value if _repeated(field) else [value]
            if field.type == FieldDescriptor.TYPE_STRING and not all(isinstance(v, str) for v in values):
                return False
            if field.type == FieldDescriptor.TYPE_MESSAGE and not all(_all_text(v) for v in values):
                return False
    except UnicodeDecodeError:
        return False
    return True


def _repeated(field: Any) -> bool:
    """``is_repeated`` (protobuf 6+), or the ``label`` it replaced."""
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, float):
            value = float(f"{value:.7g}")  # stored as float32: 1e-05, not 9.99999974e-06
        if isinstance(value, (int, float, str, list)):
            out[attr.name] = value
    return out


def _layer_name(node: Any, weight: str, index: int) -> str:
    """``features.0`` from a state_dict-named weight, else the node's module scope, else its name."""
    if _STATE_NAME.match(weight):
        return split_key(weight)[0]
    return module_path(node) or node.name or f"{node.op_type}_{index}"


def _role(slot: Slot, role: str, layer: str) -> str:
    """The role a state_dict-named tensor has in its own layer (``in_proj_bias``), else the node's (``bias``)."""
    if len(slot.pieces) == 1 and _STATE_NAME.match(slot.tensor.name):
        owner, own_role = split_key(slot.tensor.name)
        if owner == layer:
            return own_role
    return role


class _Scanner:
    """Walks the nodes in order and turns the initializers they consume into layer specs."""

    def __init__(self, path: str, model: Any) -> None:
        self.path = path
        self.source = Source(path)
        # Nodes of If/Loop/Scan bodies and of model-local functions are scanned like the main graph's,
        # after the node that holds them: some published models keep every weight there.
        self.nodes = list(all_nodes(model))
        # Weights in Constant nodes (some exporters and optimizers leave no initializer at all) are read
        # like initializers; writing replaces the node's tensor in place.
        self.constants = _constant_tensors(self.nodes)
        self.left_out: dict[str, str] = {}
        self.inits = {}
        for tensor in [*all_initializers(model), *self.constants.values()]:
            if tensor.name in self.inits or tensor.name in self.left_out:
                self.left_out[tensor.name] = ("two graphs of the model (a subgraph or a function, and another) hold "
                                              "a tensor of this name: which one a node reads is a matter of scope, "
                                              "so neither is read or written")
                self.inits.pop(tensor.name, None)
                continue
            self.inits[tensor.name] = tensor
        self.claimed: set[str] = set()
        self.uncarried: set[str] = set()
        self.owner: dict[str, str] = {}          # initializer -> the layer that claimed it first
        self.specs: list[LayerSpec] = []
        self.rnn_stacks: dict[tuple[str, str], tuple[LayerSpec, list[int]]] = {}
        self.notes: list[str] = []
        self.consumers: dict[str, list[int]] = {}
        # The legacy exporter stores equal tensors once and feeds the others through Identity nodes.
        self.alias = {n.output[0]: n.input[0] for n in self.nodes
                      if n.op_type == "Identity" and n.input and n.input[0] in self.inits}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.consumers.setdefault(self.alias.get(name, name), []).append(i)

    def scan(self) -> list[LayerSpec]:
        for tensor in self.inits.values():
            self.source.check(tensor)
            if surgery_dtype(tensor) is None:
                self.claimed.add(tensor.name)  # left in the file untouched
                self.uncarried.add(tensor.name)
                self.notes.append(f"initializer {tensor.name!r} of ONNX type {tensor.data_type} is not carried")
                self.left_out[tensor.name] = f"ONNX type {tensor.data_type}, which surgery does not carry"
        for i, node in enumerate(self.nodes):
            handler = _HANDLERS.get(node.op_type)
            if handler is not None:
                handler(self, i, node)
        self._leftovers()
        self.specs.sort(key=lambda s: s.order)
        return self.specs

    def init(self, node: Any, index: int) -> Any | None:
        """The initializer feeding input ``index`` of ``node`` (through an Identity), if any.

        One already claimed by another layer is returned too: exporters store
        equal tensors once (fresh LayerNorm weights, BatchNorm statistics), and
        each layer that reads it is still a layer. Its params share one ident.
        """
        if index >= len(node.input):
            return None
        name = self.alias.get(node.input[index], node.input[index])
        return None if name in self.uncarried else self.inits.get(name)

    def add(self, i: int, node: Any, kind: str, slots: list[Slot], attrs: dict[str, Any]) -> LayerSpec:
        hint = slots[0].tensor.name
        if hint in self.owner:  # a shared tensor is named for its first reader: name this one by its own input
            hint = next((n for n in node.input if _STATE_NAME.match(n) and n not in self.inits), "")
        name = self._unique(_layer_name(node, hint, i))
        spec = LayerSpec(name, kind, i, attrs)
        for slot in slots:
            first = self.owner.setdefault(slot.tensor.name, name)
            if first != name:
                self.notes.append(f"{name} reads the stored tensor {slot.tensor.name!r} of {first}: the exporter "
                                  "kept equal values once, so the two can only be written with equal values")
            self.claimed.add(slot.tensor.name)
            for k, piece in enumerate(slot.pieces):
                spec.roles[_role(slot, piece.role, name)] = (slot, k)
        if "in_proj_bias" in spec.roles and "weight" in spec.roles:  # the exporter renamed the fused weight
            spec.roles["in_proj_weight"] = spec.roles.pop("weight")
        if "in_proj_weight" in spec.roles:  # nn.MultiheadAttention's fused projection, used by a MatMul/Gemm
            spec.kind = "multi_head_attention"
        self.specs.append(spec)
        return spec

    def _unique(self, name: str) -> str:
        taken = {s.name for s in self.specs}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        return candidate

    def _not_a_weight(self, tensor: Any) -> str | None:
        """Why an unclaimed initializer is part of the exported computation rather than a weight, or None.

        An exporter names weights after the state_dict; what it makes up itself is
        integer shapes and indices, and float scalars it folded out of an operator
        (the ``1/sqrt(sqrt(d))`` of an attention) feeding plain arithmetic.
        """
        if tensor.name in self.constants:  # weights sit in initializers; a Constant no weight-reading op claimed
            users = sorted({self.nodes[i].op_type for i in self.consumers.get(tensor.name, [])})
            return f"a Constant node's tensor feeding {', '.join(users) or 'nothing'}, not a weight"
        if _STATE_NAME.match(tensor.name):
            return None
        if not dtypes.is_floating(surgery_dtype(tensor) or ""):
            return "an exporter's integer constant (a shape or an index), not a weight"
        users = {self.nodes[i].op_type for i in self.consumers.get(tensor.name, [])}
        if math.prod(tensor.dims) == 1 and users and users <= _ARITHMETIC:
            return f"an exporter's scalar constant feeding {', '.join(sorted(users))}, not a weight"
        return None

    def _leftovers(self) -> None:
        """Initializers no recognised node claimed: grouped by state_dict name, else one layer each."""
        by_name = {s.name: s for s in self.specs}
        for tensor in self.inits.values():
            if tensor.name in self.claimed:
                continue
            why = self._not_a_weight(tensor)
            if why:
                self.left_out[tensor.name] = why  # left in the file as it is
                continue
            order = min(self.consumers.get(tensor.name, [len(self.nodes)]))
            layer, role = split_key(tensor.name) if _STATE_NAME.match(tensor.name) else (tensor.name, "")
            spec = by_name.get(layer)
            if spec is None or role in spec.roles:
                spec = LayerSpec(self._unique(layer), "unknown", order)
                by_name[spec.name] = spec
                self.specs.append(spec)
            spec.order = min(spec.order, order)
            spec.roles[role] = (plain_slot(tensor, role), 0)
        for spec in by_name.values():
            if spec.kind == "unknown" and spec.roles:
                shapes = {r: Param(s.pieces[k].shape, "float32", lambda: None) for r, (s, k) in spec.roles.items()}
                spec.kind = infer_kind(spec.name, shapes)


def _conv(scan: _Scanner, i: int, node: Any) -> None:
    weight = scan.init(node, 1)
    if weight is None or len(weight.dims) not in (3, 4, 5):
        return
    slots = [plain_slot(weight, "weight")]
    bias = scan.init(node, 2)
    if bias is not None:
        slots.append(plain_slot(bias, "bias"))
    attrs = _attrs(node)
    attrs["groups"] = attrs.pop("group", 1)
    _mark_folded(node, weight, attrs)
    kind = "conv_transpose" if node.op_type == "ConvTranspose" else f"conv{len(weight.dims) - 2}d"
    scan.add(i, node, kind, slots, attrs)


def _mark_folded(node: Any, weight: Any, attrs: dict[str, Any]) -> None:
    """Say so when the exporter folded a BatchNorm into this layer's weights.

    Then the weights are not the layer's own: copying into or out of them would
    be silently wrong. The dynamo exporter records the BatchNorm's scope on the
    node; the legacy one leaves an anonymous ``onnx::Conv_N`` initializer.
    """
    scopes = name_scopes(node) or []
    if scopes and "batch_norm" in scopes[-1]:
        attrs["folded"] = f"the exporter folded BatchNorm {scopes[-2] if len(scopes) > 1 else '?'} into its weights"
    elif weight.name.startswith("onnx::"):
        attrs["folded"] = (f"its weights are an exporter-computed constant ({weight.name!r}), "
                           "typically a BatchNorm folded in")


def _gemm(scan: _Scanner, i: int, node: Any) -> None:
    weight = scan.init(node, 1)
    attrs = _attrs(node)
    if weight is None or len(weight.dims) != 2 or attrs.get("transA", 0) or scan.init(node, 0) is not None:
        return
    slots = [dense_slot(weight, transposed=not attrs.get("transB", 0))]
    bias = scan.init(node, 2)
    if bias is not None:
        slots.append(plain_slot(bias, "bias"))
    _mark_folded(node, weight, attrs)
    scan.add(i, node, "dense", slots, attrs)


def _matmul(scan: _Scanner, i: int, node: Any) -> None:
    """``X @ W`` with a constant ``W`` of shape (in, out), plus the bias of a following ``Add``."""
    weight = scan.init(node, 1)
    if weight is None or len(weight.dims) != 2 or scan.init(node, 0) is not None:
        return
    slots = [dense_slot(weight, transposed=True)]
    users = scan.consumers.get(node.output[0], [])
    if len(users) == 1 and scan.nodes[users[0]].op_type == "Add":
        add = scan.nodes[users[0]]
        other = [name for name in add.input if name != node.output[0]]
        bias = scan.inits.get(scan.alias.get(other[0], other[0])) if len(other) == 1 else None
        if bias is not None and list(bias.dims) == [weight.dims[1]]:
            slots.append(plain_slot(bias, "bias"))
    scan.add(i, node, "dense", slots, {})


def _normalization(roles: tuple[str, ...], kind: str):
    def handler(scan: _Scanner, i: int, node: Any) -> None:
        found = [(role, scan.init(node, k + 1)) for k, role in enumerate(roles)]
        slots = [plain_slot(t, role) for role, t in found if t is not None]
        if not slots:
            return
        attrs = _attrs(node)
        attrs["eps"] = attrs.pop("epsilon", 1e-5)
        scan.add(i, node, kind, slots, attrs)

    return handler


def _prelu(scan: _Scanner, i: int, node: Any) -> None:
    slope = scan.init(node, 1)
    if slope is None or not dtypes.is_floating(surgery_dtype(slope) or ""):
        return
    slot = channel_slot(slope, "weight")
    if slot is None:  # a slope per position: no nn.PReLU holds it; an unknown layer, kept as it is
        scan.add(i, node, "unknown", [plain_slot(slope, "weight")],
                 {"layout_known": False, "layout_note": f"PRelu slope {list(slope.dims)} varies by position"})
        return
    scan.add(i, node, "prelu", [slot], {})


def _rnn(scan: _Scanner, i: int, node: Any) -> None:
    kind = node.op_type.lower()
    attrs = _attrs(node)
    found = {which: scan.init(node, k) for k, which in ((1, "W"), (2, "R"), (3, "B"))}
    if found["W"] is None or found["R"] is None:
        return
    base = _layer_name(node, found["W"].name, i)
    stacked = scan.rnn_stacks.get((base, kind))  # a multi-layer nn.LSTM/GRU exports one node per layer
    depth = len(stacked[1]) if stacked else 0
    slots = [rnn_slot(t, kind, which, depth) for which, t in found.items() if t is not None]
    if kind == "gru" and not attrs.get("linear_before_reset", 0):
        # PyTorch's GRU applies the reset gate after the hidden projection, which is ONNX's 1.
        scan.notes.append(f"GRU {node.name!r}: linear_before_reset=0, which PyTorch's nn.GRU cannot compute")
    if stacked is None:
        spec = scan.add(i, node, kind, slots, attrs)
        scan.rnn_stacks[(base, kind)] = (spec, [i])
        return
    spec, nodes = stacked
    nodes.append(i)
    for slot in slots:
        scan.claimed.add(slot.tensor.name)
        for k, piece in enumerate(slot.pieces):
            spec.roles[piece.role] = (slot, k)
    spec.attrs["num_layers"] = len(nodes)


def _gather(scan: _Scanner, i: int, node: Any) -> None:
    table = scan.init(node, 0)
    if table is None or len(table.dims) != 2 or _attrs(node).get("axis", 0) != 0:
        return
    if not dtypes.is_floating(surgery_dtype(table) or ""):  # an integer lookup table is not an embedding
        return
    scan.add(i, node, "embedding", [plain_slot(table, "weight")], {})


_HANDLERS = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _normalization(("weight", "bias", "running_mean", "running_var"), "batch_norm"),
    "LayerNormalization": _normalization(("weight", "bias"), "layer_norm"),
    "InstanceNormalization": _normalization(("weight", "bias"), "instance_norm"),
    "PRelu": _prelu,
    "LSTM": _rnn,
    "GRU": _rnn,
    "Gather": _gather,
}


def _constant_tensors(nodes: list[Any]) -> dict[str, Any]:
    """``output name -> TensorProto`` of every ``Constant`` node holding a tensor (``value``)."""
    out = {}
    for node in nodes:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.HasField("t"):
                if not attr.t.name:
                    attr.t.name = node.output[0]  # named as the graph names it, so layers can say where it is
                out[attr.t.name] = attr.t
    return out


def _subgraphs(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        yield from ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)


def _graph_nodes(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        for sub in _subgraphs(node):
            yield from _graph_nodes(sub.node)


def all_nodes(model: Any) -> Iterator[Any]:
    """Every node: the main graph's, each followed by the nodes of its subgraphs; then the functions' nodes."""
    yield from _graph_nodes(model.graph.node)
    for function in model.functions:
        yield from _graph_nodes(function.node)


def all_initializers(model: Any) -> Iterator[Any]:
    """The initializers of the main graph and of every If/Loop/Scan subgraph, at any depth."""
    yield from model.graph.initializer
    for node in all_nodes(model):
        for sub in _subgraphs(node):
            yield from sub.initializer


def scan_model(path: str) -> tuple[Any, list[LayerSpec], Source, list[str], dict[str, str]]:
    """The model, its layers, its tensor source, notes, and the initializers that are not weights."""
    model = load_model(path)
    scanner = _Scanner(path, model)
    try:
        specs = scanner.scan()
    except SurgeryError as e:  # a layout rule's refusal knows the tensor, not the file: name it
        if path in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
    return model, specs, scanner.source, scanner.notes, scanner.left_out
