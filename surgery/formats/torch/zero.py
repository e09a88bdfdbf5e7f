"""DeepSpeed ZeRO checkpoints (stages 1, 2 and 3), read without DeepSpeed and without running pickled code.

A DeepSpeed folder (``global_stepN/``, or its parent with a ``latest`` file naming it) holds the
model states (``mp_rank_00_model_states.pt``; in stage 3 one ``zero_pp_rank_R_mp_rank_00_model_states.pt``
per rank) and one ``zero_pp_rank_R_mp_rank_00_optim_states.pt`` per data-parallel rank. The weights
read are the fp32 master weights of the optimizer, as DeepSpeed's own ``zero_to_fp32.py`` reads them
(the module's weights in the model states are in the training dtype, often bf16 or fp16, and in stage
3 empty): each rank holds a flat partition of each parameter group, and ``param_shapes`` in the
model states gives the parameters' names, shapes and order.

- Stages 1 and 2: a group's partitions, end to end, are its parameters one after another (with the
  alignment paddings DeepSpeed records, when it does), padded at the end.
- Stage 3: every parameter is cut into ``ceil(numel / ranks)`` values per rank; each rank's flat
  groups hold its piece of every parameter in turn.
- Frozen parameters come from the model states (``frozen_param_fragments``; in stage 3 one piece per
  rank), buffers from the module's entries ``buffer_names`` lists, and tied parameters
  (``shared_params``) are one storage, as they were in the model.

The pickles name three DeepSpeed objects beside torch's own (``LossScaler``, ``ZeroStageEnum``,
``fragment_address``): they are built as inert stand-ins defined here (plain attributes, no code of
DeepSpeed's), under ``torch.load(weights_only=True)``; any other global is refused by name. Every
file is memory-mapped, so a parameter is read from its partitions when it is asked for: memory stays
near the tensor being read.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from ...errors import fail
from ...graph import LayerGraph, Param, tied_notes
from ...kinds import graph_of_params
from .common import to_numpy

SUFFIXES: tuple[str, ...] = ()   # a folder
_OPTIM = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_MODEL = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")


class _Inert:
    """A DeepSpeed object rebuilt as plain attributes: what the pickle says it held, and no behaviour."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


class _LossScaler(_Inert):
    pass


class _FragmentAddress(_Inert):
    pass


class _ZeroStage(int):
    """``ZeroStageEnum(2)`` read back as the stage number."""


STAND_INS = [
    (_LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (_LossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (_ZeroStage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (_FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
]


def folder_of(path: str) -> str | None:
    """The ``global_stepN`` folder of a DeepSpeed checkpoint: ``path`` itself, or the one its ``latest`` names."""
    if not os.path.isdir(path):
        return None
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest) and os.path.getsize(latest) < 4096:
        with open(latest, encoding="utf-8", errors="replace") as f:
            tag = f.read().strip()
        inner = os.path.join(path, tag)
        if tag and os.sep not in tag and "/" not in tag and os.path.isdir(inner):
            path = inner
    names = os.listdir(path)
    if any(_OPTIM.match(n) for n in names) and any(_MODEL.match(n) for n in names):
        return path
    return None


def sniff(path: str) -> bool:
    try:
        return folder_of(path) is not None
    except OSError:
        return False


def read(path: str, *, unsafe_pickle: bool = False, allow_globals: Any = (), **_: Any) -> LayerGraph:
    """The fp32 weights of a ZeRO checkpoint as a lazy LayerGraph, from its files' structure alone."""
    from .state_dict import load_pickle

    folder = folder_of(path)
    if folder is None:
        raise fail(path, "not a DeepSpeed checkpoint folder (no *_model_states.pt beside *_optim_states.pt)")
    names = sorted(os.listdir(folder))
    optim = {int(m.group(1)): (n, m.group(2)) for n in names if (m := _OPTIM.match(n))}
    models = {(m.group(1), m.group(2)): n for n in names if (m := _MODEL.match(n))}
    if {mp for _, mp in optim.values()} != {"00"} or {mp for _, mp in models} != {"00"}:
        raise fail(folder, "a tensor-parallel DeepSpeed checkpoint (mp_rank_01 and up): its slices are not merged "
                           "by surgery; merge them with the training code's own tools first")
    load = lambda name: load_pickle(os.path.join(folder, name), unsafe_pickle, tuple(allow_globals),  # noqa: E731
                                    stand_ins=STAND_INS)
    ranks = sorted(optim)
    if ranks != list(range(len(ranks))):
        raise fail(folder, f"optimizer states of ranks {ranks}: a rank's file is missing")
    states = [load(optim[r][0]) for r in ranks]
    zero = [_dict(s.get("optimizer_state_dict"), folder, optim[r][0], "optimizer_state_dict") for r, s in zip(ranks, states)]
    stage = int(zero[0].get("zero_stage", -1))
    world = zero[0].get("partition_count")
    world = max(world) if isinstance(world, (list, tuple)) else world
    if world != len(ranks):
        raise fail(folder, f"the checkpoint was saved by {world} ranks, but {len(ranks)} optimizer files are here "
                           "(one missing, or left from another run)")
    if stage in (1, 2):
        model_files = [models.get((None, "00"))]
        groups_key = "single_partition_of_fp32_groups"
    elif stage == 3:
        model_files = [models.get((str(r), "00")) for r in ranks]
        groups_key = "fp32_flat_groups"
    else:
        raise fail(folder, f"ZeRO stage {stage!r}: surgery reads stages 1, 2 and 3")
    if None in model_files:
        raise fail(folder, f"the model states of a ZeRO stage {stage} checkpoint are missing")
    model_states = [load(n) for n in model_files]
    flat = [_tensors(z.get(groups_key), folder, optim[r][0], groups_key) for r, z in zip(ranks, zero)]
    shapes = model_states[0].get("param_shapes")
    if not isinstance(shapes, list) or not all(isinstance(g, dict) for g in shapes):
        raise fail(folder, f"{model_files[0]}: param_shapes is not a list of groups")
    params: dict[str, Param] = {}
    _buffers(model_states[0], params, folder)
    _frozen(model_states, params, folder, stage)
    if stage == 3:
        _stage3(shapes, flat, params, folder)
    else:
        _stage12(shapes, flat, params, folder, zero[0].get("param_alignment_paddings"))
    _shared(model_states[0], params)
    graph = graph_of_params(params, path=path, format="zero")
    graph.notes.append(f"DeepSpeed ZeRO stage {stage}, {len(ranks)} ranks: the optimizer's fp32 master weights "
                       f"(as zero_to_fp32.py reads them)")
    graph.notes.extend(tied_notes(params.items()))
    graph.left_out.update({f"optimizer state of rank {r}": "Adam moments and step (not weights)" for r in ranks})
    return graph


def _dict(obj: Any, folder: str, name: str, what: str) -> dict:
    if not isinstance(obj, dict):
        raise fail(folder, f"{name}: no {what} (not a ZeRO optimizer state)")
    return obj


def _tensors(obj: Any, folder: str, name: str, what: str) -> list[Any]:
    import torch

    if not isinstance(obj, (list, tuple)) or not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in obj):
        raise fail(folder, f"{name}: {what} is not a list of flat tensors")
    return list(obj)


def _numel(shape: Any) -> int:
    return int(math.prod(int(d) for d in shape))


def _piece_reader(pieces: list[tuple[Any, int, int]], shape: tuple[int, ...]):
    """A loader concatenating ``(flat tensor, start, count)`` pieces into a tensor of ``shape``."""
    def load() -> np.ndarray:
        parts = [to_numpy(flat[start:start + count]) for flat, start, count in pieces]
        return np.concatenate(parts).reshape(shape) if len(parts) != 1 else parts[0].reshape(shape).copy()
    return load


def _stage12(shapes: list[dict], flat: list[list[Any]], params: dict[str, Param], folder: str,
             paddings: Any) -> None:
    """Each group's partitions, end to end, hold its parameters in order."""
    world = len(flat)
    for g, group in enumerate(shapes):
        if any(len(ranks) <= g for ranks in flat):
            raise fail(folder, f"parameter group {g}: a rank holds no partition of it")
        parts = [ranks[g] for ranks in flat]
        bounds = np.cumsum([0] + [p.numel() for p in parts])
        pads = paddings[g] if paddings is not None else None
        if pads is not None and len(pads) != len(group):
            raise fail(folder, f"parameter group {g}: {len(pads)} alignment paddings for {len(group)} parameters")
        offset = 0
        for k, (name, shape) in enumerate(group.items()):
            shape, n = tuple(int(d) for d in shape), _numel(shape)
            if offset + n > bounds[-1]:
                raise fail(folder, f"{name}: parameter group {g}'s partitions hold {int(bounds[-1])} values, "
                                   f"too few for its parameters (a partition cut short?)")
            params[name] = _param(name, shape, _span(parts, bounds, offset, n))
            offset += n + (int(pads[k]) if pads is not None else 0)
        align = 2 * world   # DeepSpeed pads each group to a multiple of 2 x ranks
        if math.ceil(offset / align) != math.ceil(int(bounds[-1]) / align):
            raise fail(folder, f"parameter group {g}: its parameters need {offset} values, its partitions hold "
                               f"{int(bounds[-1])} (the checkpoint's shapes and partitions disagree)")


def _span(parts: list[Any], bounds: np.ndarray, offset: int, n: int) -> list[tuple[Any, int, int]]:
    """The pieces of the partitions that hold values ``offset .. offset + n`` of their concatenation."""
    pieces = []
    for part, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
        start, end = max(offset, int(lo)), min(offset + n, int(hi))
        if start < end:
            pieces.append((part, start - int(lo), end - start))
    return pieces


def _stage3(shapes: list[dict], flat: list[list[Any]], params: dict[str, Param], folder: str) -> None:
    """Every parameter cut into ``ceil(numel / ranks)`` values per rank, in order through each rank's groups."""
    world = len(flat)
    merged = {name: shape for group in shapes for name, shape in group.items()}
    sizes = [sum(int(t.numel()) for t in ranks) for ranks in flat]
    if len(set(sizes)) != 1:
        raise fail(folder, f"the ranks' flat groups differ in size ({sizes}): a partition cut short?")
    bounds = [np.cumsum([0] + [int(t.numel()) for t in ranks]) for ranks in flat]
    offset = 0
    for name, shape in merged.items():
        shape, n = tuple(int(d) for d in shape), _numel(shape)
        per_rank = math.ceil(n / world)
        if offset + per_rank > sizes[0]:
            raise fail(folder, f"{name}: the ranks' flat groups hold {sizes[0]} values each, too few for its "
                               f"parameters (a partition cut short?)")
        pieces = []
        for ranks, b in zip(flat, bounds):
            pieces.extend(_span(ranks, b, offset, per_rank))
        pieces = _first(pieces, n)
        params[name] = _param(name, shape, pieces)
        offset += per_rank
    if offset != sizes[0]:
        raise fail(folder, f"the parameters need {offset} values per rank, the flat groups hold {sizes[0]} "
                           "(the checkpoint's shapes and partitions disagree)")


def _first(pieces: list[tuple[Any, int, int]], n: int) -> list[tuple[Any, int, int]]:
    """The pieces cut to their first ``n`` values (the rest is padding)."""
    out, left = [], n
    for flat, start, count in pieces:
        if left <= 0:
            break
        out.append((flat, start, min(count, left)))
        left -= count
    return out


def _param(name: str, shape: tuple[int, ...], pieces: list[tuple[Any, int, int]]) -> Param:
    from .common import dtype_name

    return Param(shape, dtype_name(pieces[0][0].dtype), _piece_reader(pieces, shape), key=name)


def _buffers(state: dict, params: dict[str, Param], folder: str) -> None:
    module = state.get("module") or {}
    for name in state.get("buffer_names") or []:
        tensor = module.get(name)
        if tensor is not None:
            params[name] = _tensor_param(name, tensor)


def _frozen(states: list[dict], params: dict[str, Param], folder: str, stage: int) -> None:
    shapes = states[0].get("frozen_param_shapes") or {}
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        fragments = [(s.get("frozen_param_fragments") or {}).get(name) for s in states]
        if any(f is None for f in fragments):
            raise fail(folder, f"{name}: a frozen parameter with no stored values")
        if stage != 3:
            params[name] = _tensor_param(name, fragments[0], shape)
        else:
            pieces = _first([(f.reshape(-1), 0, int(f.numel())) for f in fragments], _numel(shape))
            params[name] = _param(name, shape, pieces)


def _tensor_param(name: str, tensor: Any, shape: tuple[int, ...] | None = None) -> Param:
    from .common import dtype_name

    shape = shape or tuple(tensor.shape)
    if _numel(shape) != tensor.numel():
        raise fail(name, f"holds {tensor.numel()} values for the shape {list(shape)}")
    return Param(shape, dtype_name(tensor.dtype), lambda: to_numpy(tensor).reshape(shape), key=name)


def _shared(state: dict, params: dict[str, Param]) -> None:
    """``shared_params``: alias -> the parameter it is tied to, one storage."""
    for alias, kept in (state.get("shared_params") or {}).items():
        if kept in params and alias not in params:
            p = params[kept]
            params[kept] = p = Param(p.shape, p.dtype, p.read, key=kept, ident=("zero", kept))
            params[alias] = Param(p.shape, p.dtype, p.read, key=alias, ident=("zero", kept))
