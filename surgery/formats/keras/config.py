"""Walking a Keras model config (``config.json`` of a ``.keras``, ``model_config`` of a legacy ``.h5``).

The config tells what the weights alone cannot: each layer's class, its place in
nested models, ``trainable``, and which Dense follows a Flatten and in which
order that Flatten saw its input. Both the ``.keras`` and the ``.h5`` readers use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...graph import LayerGraph

_MODELS = ("Functional", "Sequential", "Model")
# Layers that neither mix positions nor change the order of a flattened feature map.
_TRANSPARENT = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "ActivityRegularization",
    "Identity", "Masking",
}


@dataclass
class Spec:
    """One leaf layer of a Keras model config."""

    name: str
    class_name: str
    config: dict            # the layer's own ``config``
    outer: dict             # the whole entry (``inbound_nodes``, ``build_config``)
    path: str               # its group in a Keras 3 ``.weights.h5``
    parents: tuple[str, ...]
    frozen: bool
    index: int              # position among its container's layers


def snake(name: str) -> str:
    """Keras' ``to_snake_case``: ``Conv2DTranspose`` -> ``conv2d_transpose``, ``PReLU`` -> ``p_re_lu``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_specs(model_config: dict) -> list[Spec]:
    """Every leaf layer of a model config, in the config's (execution) order, nested models flattened."""
    specs: list[Spec] = []
    _walk(model_config, "", (), False, specs)
    return specs


def _walk(model: dict, path: str, parents: tuple[str, ...], frozen: bool, out: list[Spec]) -> None:
    used: dict[str, int] = {}
    inner = model.get("config", {})
    frozen = frozen or inner.get("trainable") is False
    for index, entry in enumerate(inner.get("layers", [])):
        cls = entry.get("class_name", "")
        cfg = entry.get("config", {})
        base = snake(cls)
        used[base] = used.get(base, -1) + 1          # Keras' _get_unique_name: x, x_1, x_2...
        group = base if used[base] == 0 else f"{base}_{used[base]}"
        child = f"{path}/layers/{group}" if path else f"layers/{group}"
        name = cfg.get("name") or entry.get("name") or group
        if cls in _MODELS or "layers" in cfg:
            _walk(entry, child, (*parents, name), frozen, out)
            continue
        out.append(Spec(name, cls, cfg, entry, child, parents, frozen or cfg.get("trainable") is False, index))


def apply_config(graph: LayerGraph, model_config: dict) -> None:
    """Set frozen flags and the Flatten facts the config tells on a graph read with it."""
    specs = layer_specs(model_config)
    for spec in specs:
        if spec.name in graph:
            graph[spec.name].frozen = spec.frozen
    for dense, facts in flatten_facts(specs, graph.notes).items():
        if dense in graph:
            graph[dense].attrs["flatten"] = facts
    siblings = {(s.parents, s.name): s for s in specs}
    for spec in specs:
        source = _weighted_input(spec, siblings, specs, graph)
        if spec.name in graph and source is not None:
            graph[spec.name].attrs["after"] = source
            direct = _predecessor(spec, siblings, specs)
            graph[spec.name].attrs["after_direct"] = direct is not None and direct.name == source
    graph.meta["keras_config"] = model_config
    graph.meta["architecture"] = True  # the file records the network, not only its weights


def _input_shape(spec: Spec) -> list | None:
    build = spec.outer.get("build_config") or {}
    if build.get("input_shape"):
        return list(build["input_shape"])[1:]
    nodes = spec.outer.get("inbound_nodes") or []
    try:
        return list(nodes[0]["args"][0]["config"]["shape"])[1:]
    except (IndexError, KeyError, TypeError):
        return None


def _predecessor(spec: Spec, siblings: dict[tuple, Spec], ordered: list[Spec]) -> Spec | None:
    nodes = spec.outer.get("inbound_nodes")
    if nodes:
        node = nodes[0]
        try:
            name = node["args"][0]["config"]["keras_history"][0] if isinstance(node, dict) else node[0][0]
        except (IndexError, KeyError, TypeError):
            return None
        return siblings.get((spec.parents, name))
    if nodes is None:   # Sequential: the previous layer of the same container
        before = [s for s in ordered if s.parents == spec.parents and s.index < spec.index]
        return before[-1] if before else None
    return None


def _weighted_input(spec: Spec, siblings: dict, ordered: list[Spec], graph: LayerGraph) -> str | None:
    """The nearest layer with weights that feeds ``spec`` through its first input (``conv`` for its BatchNorm,
    across activations and pooling), when the config says; the structure shape matching pairs by."""
    node = _predecessor(spec, siblings, ordered)
    for _ in range(len(ordered)):
        if node is None or node.name in graph:
            break
        node = _predecessor(node, siblings, ordered)
    return node.name if node is not None and node.name in graph else None


def flatten_facts(specs: list[Spec], notes: list[str]) -> dict[str, dict]:
    """For each Dense fed by a Flatten of a feature map: the map's shape and the order it was flattened in.

    Returns ``{dense name: {"shape": [...], "order": "HWC", "via": [layer names]}}``,
    ``shape`` listing the sizes in ``order``. ``Reshape`` keeps memory order and is
    looked through; ``Permute`` changes the order.
    """
    siblings = {(s.parents, s.name): s for s in specs}
    facts: dict[str, dict] = {}
    for dense in (s for s in specs if s.class_name == "Dense"):
        flat = _skip_back(_predecessor(dense, siblings, specs), siblings, specs, _TRANSPARENT)
        if flat is None or flat.class_name != "Flatten":
            continue
        found = _flatten_order(flat, siblings, specs)
        if isinstance(found, str):
            notes.append(f"{dense.name}: follows Flatten {flat.name!r} but {found}; "
                         f"give `flatten: {{{dense.name}: {{shape: [...], source_order: HWC}}}}` in the map")
        elif found:
            facts[dense.name] = found
    return facts


def _skip_back(spec: Spec | None, siblings: dict, ordered: list[Spec], skip: set[str]) -> Spec | None:
    while spec is not None and spec.class_name in skip:
        spec = _predecessor(spec, siblings, ordered)
    return spec


def _flatten_order(flat: Spec, siblings: dict, ordered: list[Spec]) -> dict | str | None:
    chain: list[Spec] = []
    node = _predecessor(flat, siblings, ordered)
    while node is not None and (node.class_name in _TRANSPARENT or node.class_name in ("Reshape", "Permute")):
        chain.append(node)
        node = _predecessor(node, siblings, ordered)
    base = _input_shape(chain[-1] if chain else flat)
    if not base or any(d is None for d in base):
        return "its input shape is not in the config"
    if len(base) < 2 or (len(base) == 2 and not (node and re.search("Conv|Pool", node.class_name))):
        return None     # a vector or a sequence: flattened the same way in both frameworks
    spatial = "DHW"[-(len(base) - 1):]
    first = (node.config.get("data_format") if node else None) == "channels_first"
    letters = "C" + spatial if first else spatial + "C"
    sizes = dict(zip(letters, base))
    reshaped = False
    for step in reversed(chain):
        if step.class_name == "Permute" and reshaped:
            return "a Permute follows a Reshape, so the axes it moves have no names surgery can follow"
        if step.class_name == "Permute":
            letters = "".join(letters[d - 1] for d in step.config.get("dims", []))
        reshaped = reshaped or step.class_name == "Reshape"
    if flat.config.get("data_format") == "channels_first" and len(letters) > 2:
        if reshaped:
            return "a Reshape feeds a channels_first Flatten"
        letters = letters[1:] + letters[0]
    return {"shape": [int(sizes[a]) for a in letters], "order": letters,
            "via": [s.name for s in reversed(chain)] + [flat.name]}
