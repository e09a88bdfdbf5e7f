"""Proof that a network computes what it should: ONNX Runtime vs native, MODEL vs REF.

``verify`` opens MODEL (and REF), makes inputs, exports MODEL to ONNX unless it
is ONNX, runs ONNX Runtime and compares with MODEL run natively; with
``against`` it also compares MODEL with REF run natively, adapting NHWC and
NCHW when the two sides use different data formats. With ``layers=True`` a
failing comparison names the first layer, in execution order, whose output
diverges, and says why. Frameworks are imported only when a side needs them.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import FormatError, SurgeryError, fail
from ..layouts import data_format_shape, to_data_format
from .runner import NativeRunner, Runner
from .report import Comparison, LayerDivergence, VerifyReport, compare_arrays

SEED = 0
Shape = Sequence[int]


def verify(
    model: Any,
    *,
    against: Any = None,
    factory: str | None = None,
    inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    input_shape: Shape | Sequence[Shape] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    layers: bool = False,
    pairs: str | os.PathLike | Mapping[str, str] | None = None,
) -> VerifyReport:
    """Run MODEL through ONNX Runtime and natively (and REF natively) and compare outputs.

    Args:
        model: an ``.onnx`` file, TorchScript archive, ``.pt2``, ``.keras``/``.h5``
            Keras model, a weights-only checkpoint with ``factory``, or a live
            ``torch.nn.Module`` / ``keras.Model``.
        against: REF, any of the same forms; compared with MODEL run natively.
        factory: ``"pkg.module:fn"`` returning the network a weights-only
            checkpoint is loaded into (MODEL, and REF when it holds weights only).
        inputs: an ``.npz`` file or a dict of arrays, by input name (or one array).
        input_shape: shape(s) of random normal inputs (seed 0) in MODEL's layout;
            default: MODEL's (or REF's) own input signature.
        rtol, atol: pass when ``|a - b| <= atol + rtol * |b|`` everywhere (b: reference).
        layers: on a mismatch, name the first diverging layer.
        pairs: ``{MODEL layer: REF layer}`` or a ``.surgery.json``; default: the
            ``MODEL.surgery.json`` (or ``REF.surgery.json``) beside the file, else equal names.

    Returns:
        A VerifyReport; ``bool(report)`` is the verdict.

    Raises:
        SurgeryError: a file cannot be read or run, inputs do not fit.

    Example:
        >>> report = verify("model.onnx", input_shape=(1, 3, 32, 32))
        >>> assert report.ok, report
    """
    side = open_side(model, factory, "MODEL")
    ref = open_side(against, factory, "REF") if against is not None else None
    feeds, described = make_inputs(side, ref, inputs, input_shape)
    report = VerifyReport(model=side.label, against=ref.label if ref else None, inputs=described,
                          rtol=rtol, atol=atol)
    report.comparisons.append(_onnx_comparison(side, feeds, rtol, atol, layers))
    if ref is not None:
        table = _pair_table(pairs, model, against) if layers else {}
        report.comparisons.append(_native_comparison(side, ref, feeds, rtol, atol, layers, table))
    return report


# ---- opening MODEL and REF -------------------------------------------------------------

def open_side(obj: Any, factory: str | None, role: str) -> NativeRunner | Runner:
    """A runner (torch, keras or onnx) for a path or a live network."""
    from . import keras as keras_run
    from . import torch as torch_run

    if torch_run.is_module(obj) or type(obj).__name__ == "ExportedProgram":
        return torch_run.TorchRunner(obj, f"torch {type(obj).__name__}")
    if keras_run.is_model(obj):
        return keras_run.KerasRunner(obj, f"keras {obj.name}")
    if not isinstance(obj, (str, os.PathLike)):
        raise SurgeryError(f"{role}: expected a path, a torch.nn.Module or a keras.Model, got {type(obj).__name__}")
    path = os.fspath(obj)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file or folder")
    return _open_path(path, factory, role)


def _open_path(path: str, factory: str | None, role: str) -> NativeRunner | Runner:
    from . import keras as keras_run
    from . import onnx as onnx_run
    from . import torch as torch_run

    name = os.path.basename(path)
    lowered = path.lower()
    if lowered.endswith(".onnx"):
        return onnx_run.OnnxRunner(path)
    kind = torch_run.sniff_archive(path)
    if kind:
        return torch_run.TorchRunner(torch_run.load_archive(path, kind), f"torch {kind} ({name})")
    if keras_run.is_whole_model(path):
        return keras_run.KerasRunner(keras_run.load_model(path), f"keras ({name})")
    if not factory:
        raise fail(path, f"{role} holds weights only: give --factory MOD:FN naming a callable that builds its network")
    net = build(factory)
    if torch_run.is_module(net):
        how = torch_run.load_weights(net, path)
        return torch_run.TorchRunner(net, f"torch {type(net).__name__} ({name}, {how})")
    if keras_run.is_model(net):
        how = keras_run.load_weights(net, path)
        return keras_run.KerasRunner(net, f"keras {net.name} ({name}, {how})")
    raise SurgeryError(f"factory {factory}: returned {type(net).__name__}, not a torch.nn.Module or keras.Model")


def build(factory: str) -> Any:
    """Call a ``"pkg.module:fn"`` factory; the current folder is importable, as for ``python -m``."""
    module_name, colon, fn_name = factory.partition(":")
    if not colon or not module_name or not fn_name:
        raise SurgeryError(f"factory {factory!r}: expected MODULE:FUNCTION, e.g. mypkg.nets:build")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise SurgeryError(f"factory {factory!r}: cannot import it ({exc})") from None
    try:
        return fn()
    except Exception as exc:
        raise SurgeryError(f"factory {factory!r} failed: {type(exc).__name__}: {exc}") from None


# ---- inputs ----------------------------------------------------------------------------

def make_inputs(side: Runner, ref: Runner, inputs: Any, input_shape: Any) -> tuple[dict[str, np.ndarray], list[dict]]:
    """MODEL's input arrays by name, and how each was made (for the report)."""
    specs = side.input_specs()
    names = [s[0] for s in specs]
    if inputs is not None:
        arrays, origin = _given_inputs(inputs)
        feeds = _match_names(arrays, names, origin)
    else:
        shapes, origin = _shapes(side, ref, specs, input_shape)
        rng = np.random.default_rng(SEED)
        dtypes = [s[2] for s in specs] if len(specs) == len(shapes) else [np.float32] * len(shapes)
        feeds = {}
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
            name = names[i] if i < len(names) else f"input_{i}"
            feeds[name] = _random(rng, shape, dtype)
    described = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype), "source": origin} for k, v in feeds.items()]
    return feeds, described


def _random(rng: np.random.Generator, shape: Shape, dtype: Any) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, size=shape).astype(dtype)  # 0/1 fit any embedding or mask
    if dtype is np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(np.float32 if not np.issubdtype(dtype, np.floating) else dtype)


def _given_inputs(inputs: Any) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(inputs, Mapping):
        return {str(k): np.asarray(v) for k, v in inputs.items()}, "given arrays"
    path = os.fspath(inputs)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}, f"from {os.path.basename(path)}"
    except (OSError, ValueError) as exc:
        raise fail(path, f"not a readable .npz of input arrays ({exc})") from None


def _match_names(arrays: dict[str, np.ndarray], names: list[str], origin: str) -> dict[str, np.ndarray]:
    if not arrays:
        raise SurgeryError(f"inputs {origin}: no arrays")
    if names and all(n in arrays for n in names):
        return {n: arrays[n] for n in names}
    if not names or len(arrays) == len(names) == 1:
        return arrays if not names else {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    raise SurgeryError(f"inputs {origin}: the model's inputs are {names}; missing {missing} "
                       f"(found {list(arrays)})")


def _shapes(side: Runner, ref: Runner, specs: list, input_shape: Any) -> tuple[list[tuple[int, ...]], str]:
    origin = f"random normal, seed {SEED}"
    if input_shape is not None:
        shapes = [input_shape] if all(isinstance(d, (int, np.integer)) for d in input_shape) else list(input_shape)
        return [tuple(int(d) for d in s) for s in shapes], origin
    declared = [s[1] for s in specs]
    if declared and all(s is not None for s in declared):
        return [_concrete(s, side.label) for s in declared], f"{origin}, shapes from MODEL's signature"
    ref_specs = ref.input_specs() if ref is not None else []
    if ref_specs and all(s[1] is not None for s in ref_specs):
        shapes = [_concrete(s[1], ref.label) for s in ref_specs]
        shapes = [data_format_shape(s, ref.data_format, side.data_format) for s in shapes]
        return shapes, f"{origin}, shapes from REF's signature"
    raise SurgeryError(f"{side.label}: cannot tell its input shape; give --input-shape (e.g. 1,3,224,224) or --inputs X.npz")


def _concrete(shape: Sequence[int | None], label: str) -> tuple[int, ...]:
    if any(d is None for d in shape[1:]):
        raise SurgeryError(f"{label}: input shape {list(shape)} has free dimensions; give --input-shape")
    return (1 if shape[0] is None else int(shape[0]), *(int(d) for d in shape[1:]))


def _fits(shape: Sequence[int], declared: Sequence[int | None] | None) -> bool:
    return declared is None or (len(shape) == len(declared) and all(d is None or d == s for s, d in zip(shape, declared)))


def feeds_for(runner: Runner, feeds: dict[str, np.ndarray], fmt: str | None) -> tuple[dict, tuple | None]:
    """``feeds`` (in format ``fmt``) renamed and transposed for ``runner``.

    Returns the feeds and the move made, ``(src, dst)`` formats, or None. The
    declared formats decide; where a side declares none (an ONNX graph) its
    declared input shapes do.
    """
    specs = runner.input_specs()
    out, move = {}, None
    for name, arr, declared in _matched_inputs(feeds, specs):
        target = (fmt, runner.data_format) if fmt and runner.data_format and fmt != runner.data_format else None
        if target is None and not _fits(arr.shape, declared) and arr.ndim in (3, 4, 5):
            flip = ("channels_first", "channels_last") if fmt != "channels_last" else ("channels_last", "channels_first")
            target = flip if _fits(to_data_format(arr, *flip).shape, declared) else None
        if target is not None:
            arr, move = to_data_format(arr, *target), target
        out[name] = arr
    return out, move


def _matched_inputs(feeds: dict[str, np.ndarray], specs: list) -> list[tuple[str, np.ndarray, Any]]:
    """``(input name, array, declared shape)``: by name where the names meet, else by position.

    An input the runner does not declare is dropped: an exporter leaves out an
    argument the forward never uses.
    """
    declared = {spec[0]: spec[1] for spec in specs}
    if any(name in declared for name in feeds):
        return [(name, arr, declared[name]) for name, arr in feeds.items() if name in declared]
    matched = [(specs[i][0] if i < len(specs) else name, arr, specs[i][1] if i < len(specs) else None)
               for i, (name, arr) in enumerate(feeds.items())]
    return matched[: len(specs)] if specs else matched


def adapt_output(arr: np.ndarray, move: tuple | None, like: np.ndarray) -> np.ndarray:
    """An output of the moved side brought back to the other side's format (when shapes agree)."""
    if move is None or arr.ndim not in (3, 4, 5):
        return arr
    back = to_data_format(arr, move[1], move[0])
    return back if back.shape == like.shape or arr.shape != like.shape else arr


# ---- comparisons -----------------------------------------------------------------------

def _onnx_comparison(side: Runner, feeds: dict, rtol: float, atol: float, layers: bool) -> Comparison:
    """ONNX Runtime vs MODEL run natively (or vs the ONNX reference evaluator for an ONNX MODEL)."""
    from . import onnx as onnx_run

    if side.framework == "onnx":
        comp = Comparison(f"{side.label} vs onnx reference evaluator", side.label, "onnx.reference")
        _compare_outputs(comp, side.run(feeds), side.run_reference(feeds), None, rtol, atol)
        return comp
    with tempfile.TemporaryDirectory(prefix="surgery-verify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            how = side.export_onnx(path, feeds)
        except SurgeryError as exc:
            comp = Comparison(f"onnxruntime vs {side.label}", "onnxruntime", side.label)
            comp.problem = str(exc)
            return comp
        runner = onnx_run.OnnxRunner(path, label=f"onnxruntime (exported by {how})")
        ort_feeds, _ = feeds_for(runner, feeds, side.data_format)
        comp = Comparison(f"{runner.label} vs {side.label}", runner.label, side.label)
        _compare_outputs(comp, runner.run(ort_feeds), side.run(feeds), None, rtol, atol)
        if layers and not comp.ok:
            comp.first_divergent_layer = _first_divergence(runner, side, ort_feeds, feeds, None, {}, rtol, atol)
    return comp


def _native_comparison(side: Runner, ref: Runner, feeds: dict, rtol: float, atol: float, layers: bool,
                       table: dict[str, str]) -> Comparison:
    """MODEL vs REF, each run natively (an ONNX side runs in ONNX Runtime)."""
    ref_feeds, move = feeds_for(ref, feeds, side.data_format)
    comp = Comparison(f"{side.label} vs {ref.label}", side.label, ref.label)
    if move:
        comp.layout = (f"inputs and outputs of rank 3-5 transposed {_short(move[0])} -> {_short(move[1])} "
                       f"for {ref.label}, and back")
    _compare_outputs(comp, side.run(feeds), ref.run(ref_feeds), move, rtol, atol)
    if layers and not comp.ok:
        comp.first_divergent_layer = _first_divergence(side, ref, feeds, ref_feeds, move, table, rtol, atol)
    return comp


def _short(fmt: str) -> str:
    return "NCHW" if fmt == "channels_first" else "NHWC"


def _compare_outputs(comp: Comparison, actual: list, reference: list, move: tuple | None,
                     rtol: float, atol: float) -> None:
    if len(actual) != len(reference):
        comp.problem = f"{len(actual)} outputs vs {len(reference)} outputs"
    for (name, a), (_, b) in zip(actual, reference):
        comp.outputs.append(compare_arrays(name, a, adapt_output(b, move, a), rtol, atol))


# ---- --layers --------------------------------------------------------------------------

def _pair_table(pairs: Any, model: Any, against: Any) -> dict[str, str]:
    """``{MODEL layer: REF layer}`` from ``pairs`` or a transplant's sidecar; {} means equal names."""
    if isinstance(pairs, Mapping):
        return {str(k): str(v) for k, v in pairs.items()}
    candidates = [(os.fspath(pairs), None)] if pairs is not None else []
    for obj, reverse in ((model, False), (against, True)):
        if isinstance(obj, (str, os.PathLike)):
            candidates.append((f"{os.fspath(obj)}.surgery.json", reverse))
    for path, reverse in candidates:
        if os.path.isfile(path):
            return _read_pairs(path, bool(reverse))
        if reverse is None:
            raise FormatError(f"{path}: no such file")
    return {}


def _read_pairs(path: str, reverse: bool) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f).get("pairs", [])
        table = {str(r["destination"]): str(r["source"]) for r in rows}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise fail(path, f"not a surgery sidecar with pairs ({type(exc).__name__}: {exc})") from None
    return {v: k for k, v in table.items()} if reverse else table


def _first_divergence(side: Runner, ref: Runner, feeds: dict, ref_feeds: dict, move: tuple | None,
                      table: dict[str, str], rtol: float, atol: float) -> LayerDivergence | None:
    """The first paired layer, in ``side``'s execution order, whose output diverges."""
    from .report import explain

    try:
        ours, theirs = side.trace(feeds), ref.trace(ref_feeds)
    except SurgeryError as exc:
        return LayerDivergence(layer=None, reason=f"per-layer comparison unavailable: {exc}")
    where = {name: i for i, (name, _, _) in enumerate(theirs)}
    paired = [(i, where[table.get(name, name)]) for i, (name, _, _) in enumerate(ours) if table.get(name, name) in where]
    ours_paired, theirs_paired = {i for i, _ in paired}, {j for _, j in paired}
    for compared, (i, j) in enumerate(paired, 1):
        (name, x, y), (other, rx, ry) = ours[i], theirs[j]
        diff = compare_arrays(name, y, adapt_output(ry, move, y), rtol, atol)
        if diff.passed or _fused_match(ours, i, ours_paired, theirs, j, theirs_paired, move, rtol, atol):
            continue
        rx = None if rx is None or x is None else adapt_output(rx, move, x)
        reason = explain(side, ref, name, other, x, rx, rtol, atol)
        return LayerDivergence(name, other, diff.max_abs, diff.min_atol, reason, compared)
    why = "no paired layer diverges" if paired else "no layers could be paired (give pairs or a .surgery.json)"
    return LayerDivergence(layer=None, reason=f"{why}; {len(paired)} layer(s) compared", compared=len(paired))


def _fused_match(ours: list, i: int, ours_paired: set, theirs: list, j: int, theirs_paired: set,
                 move: tuple | None, rtol: float, atol: float) -> bool:
    """Whether the outputs agree once layers one side fused away are accounted for.

    Exporters fold a layer into the one before it (Conv + BatchNorm): the fused
    node's output is the output of the last of the layers it absorbed, which
    the other side runs as separate, unpaired layers right after this one.
    """
    mine = [y for _, _, y in _run_of(ours, i, ours_paired)]
    other = [ry for _, _, ry in _run_of(theirs, j, theirs_paired)]
    if len(mine) == len(other) == 1:
        return False
    return any(compare_arrays("", y, adapt_output(ry, move, y), rtol, atol).passed for y in mine for ry in other)


def _run_of(trace: list, start: int, paired: set) -> list:
    """``trace[start]`` and the unpaired layers that follow it, up to the next paired one."""
    end = start + 1
    while end < len(trace) and end not in paired:
        end += 1
    return trace[start:end]
