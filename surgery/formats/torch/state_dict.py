"""PyTorch ``state_dict`` files (``.pt``, ``.pth``, ``.bin``; zip or legacy).

Loaded with ``torch.load(weights_only=True)`` and memory-mapped where the file
is a zip, so no code from the file runs and no tensor data is read until it is
needed. Checkpoints that wrap the weights (``{"state_dict": ...}``,
``{"model": ...}``) and the ``module.`` / ``_orig_mod.`` prefixes of DDP and
``torch.compile`` are recognised, stripped, reported in ``graph.notes`` and put
back on write, so a replaced checkpoint still loads where the old one did.
"""

from __future__ import annotations

import collections
import importlib
import io
import os
import pickle
import pickletools
import zipfile
from typing import Any, Iterable, Iterator, Mapping


from ... import dtypes
from ...errors import UnsafePickleError, fail
from .. import zip_names
from ...graph import LayerGraph, Param, Span, tied_notes
from ...io import span_loader
from ...kinds import graph_of_params
from .common import dtype_name, is_code_member, storage_ident, to_numpy

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_ema", "ema")
PREFIXES = ("module.", "_orig_mod.")
# Classes admitted by the command line's --allow-global for this process (the API passes allow_globals).
ALLOWED_GLOBALS: set[str] = set()
# torch's own rebuild functions and storages are admitted by weights_only already: never worth naming.
_TORCH_OWN = ("torch.", "collections.OrderedDict", "_codecs.encode")
# The first bytes of a legacy (pre-1.6) torch.save: protocol 2, then the magic number as a long.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def sniff(path: str) -> bool:
    if os.path.isdir(path):
        return False
    names = zip_names(path)
    if names is not None:
        has_pickle = any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)
        is_other = any(is_code_member(n) or n == "config.json" for n in names)
        return has_pickle and not is_other
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    return head == _LEGACY_MAGIC or path.lower().endswith(SUFFIXES)


def read(path: str, *, unsafe_pickle: bool = False, allow_globals: Iterable[str] = (), **_: Any) -> LayerGraph:
    """Read a state_dict lazily (``mmap``) without running pickled code unless ``unsafe_pickle``.

    ``allow_globals`` names classes (``"argparse.Namespace"``) the pickle may build, as
    ``torch.serialization.add_safe_globals`` does; nothing else in the file runs.
    """
    obj = load_pickle(path, unsafe_pickle, tuple(allow_globals))
    state, wrapper = _find_state(path, obj)
    notes = []
    if wrapper:
        notes.append(f"weights found under checkpoint[{wrapper!r}]; other entries are kept on write")
    left_out = _outside(obj, state, wrapper)
    state, prefix, skipped = _clean(state)
    if prefix:
        notes.append(f"stripped the {prefix!r} prefix from every key (DDP / torch.compile); it is put back on write")
    if skipped:
        notes.append(f"{len(skipped)} non-tensor entries ignored: {', '.join(skipped[:5])}")
    spans = _file_spans(path, state) if zipfile.is_zipfile(path) else {}
    params = {key: _param(key, tensor, path, spans.get(key)) for key, tensor in state.items()}
    graph = graph_of_params(params, path=path, format="torch")
    graph.meta.update(wrapper=wrapper, prefix=prefix)
    graph.left_out.update(left_out)
    graph.notes.extend(notes + tied_notes(params.items()))
    return graph


def load_pickle(path: str, unsafe_pickle: bool, allowed: tuple[str, ...] = (),
                stand_ins: Iterable[tuple[Any, str]] = ()) -> Any:
    """``torch.load`` with ``weights_only`` (unless ``unsafe_pickle``), memory-mapped where it can be.

    ``allowed``: classes the user admits by name (``--allow-global``, imported from the user's own
    environment). ``stand_ins``: ``(class, "module.Name")`` pairs a reader admits in place of a
    library's own class (DeepSpeed's, without DeepSpeed). Any other global is refused, naming it.
    """
    import torch

    allowed = allowed + tuple(ALLOWED_GLOBALS)
    stand_ins = list(stand_ins)
    mmap = zipfile.is_zipfile(path)
    admitted = [_resolve(path, name) for name in allowed] + stand_ins
    allowed = allowed + tuple(name for _, name in stand_ins)
    try:
        with torch.serialization.safe_globals(admitted):
            return torch.load(path, map_location="cpu", weights_only=not unsafe_pickle, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            asked = [g for g in pickle_globals(path) if g not in allowed and not g.startswith(_TORCH_OWN)]
            named = ", ".join(asked[:8]) or "Python objects"
            raise UnsafePickleError(
                f"{path}: refused to unpickle: it asks for {named}, and building them could run code from the file; "
                "admit a harmless class with --allow-global NAME, or if you trust the file, "
                "rerun with --unsafe-pickle (dangerous)") from None
        raise fail(path, f"not a readable PyTorch checkpoint ({e})") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError... for damaged files
        if isinstance(e, EOFError) or "ran out of input" in str(e).lower():
            raise fail(path, "not a readable PyTorch checkpoint: the file ends early (truncated?)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise fail(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from None


def _resolve(path: str, name: str) -> Any:
    """The class named ``module.Name`` by the user (never by the file) for ``safe_globals``."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise fail(path, f"--allow-global {name}: no such class (give it as module.Name)") from None


def pickle_globals(path: str) -> list[str]:
    """The ``module.name`` globals a pickle asks for, found by reading its opcodes; nothing is run."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(member) if member else b""
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)  # legacy: the pickles come first; tensor bytes follow
    except Exception:  # noqa: BLE001 - zipfile raises anything from BadZipFile to UnicodeDecodeError
        return []    # on a damaged archive; the refusal stands, naming no globals
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # a legacy file is several pickles in a row
        try:
            _scan(stream, found)
        except Exception:  # noqa: BLE001 - damaged or trailing tensor bytes: report what was found so far
            break
    return list(dict.fromkeys(found))


def _scan(stream: io.BytesIO, found: list[str]) -> None:
    """Add the globals of one pickle in ``stream`` to ``found``, by following its opcodes.

    ``STACK_GLOBAL`` takes the module and name from the two values pushed last: strings, or strings
    fetched back from the memo (a ``MEMOIZE``/``PUT`` keeps what the op before it pushed).
    """
    pushed: collections.deque = collections.deque(maxlen=2)   # the last two values pushed: a string, or None
    memo: dict[int, str | None] = {}
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name == "GLOBAL":
            found.append(arg.replace(" ", ".", 1))
            pushed.append(None)
        elif isinstance(arg, str) and "UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            pushed.append(str(arg))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif name == "STACK_GLOBAL":
            if len(pushed) == 2 and all(isinstance(v, str) for v in pushed):
                found.append(f"{pushed[0]}.{pushed[1]}")
            pushed.append(None)
        else:
            pushed.append(None)


def _is_tensor_map(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state(path: str, obj: Any) -> tuple[Mapping, str | None]:
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), None
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if _is_tensor_map(inner):
                return inner, key
        if _is_tensor_map(obj):
            return obj, None
    raise fail(path, f"no state_dict found: the file holds a {type(obj).__name__}"
                     + (f" with keys {list(obj)[:8]}" if isinstance(obj, Mapping) else ""))


def _tensors_in(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every tensor inside nested dicts, lists and tuples, with its dotted path."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors_in(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors_in(value, f"{path}.{i}" if path else str(i))


def _outside(obj: Any, state: Mapping, wrapper: str | None) -> dict[str, str]:
    """The file's tensors that are not weights of the state_dict, with why (kept on write)."""
    import torch

    out = {}
    if wrapper is not None:
        for key, value in obj.items():
            if key != wrapper:
                out.update({name: f"not under checkpoint[{wrapper!r}] (optimizer state, counters...); kept on write"
                            for name, _ in _tensors_in(value, str(key))})
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            out.update({name: "nested inside a non-tensor entry of the state_dict"
                        for name, _ in _tensors_in(value, str(key))})
    return out


def _clean(state: Mapping) -> tuple[dict, str, list[str]]:
    """Drop non-tensors; strip a prefix that every key carries."""
    import torch

    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    skipped = [str(k) for k in state if k not in tensors]
    stripped = ""
    for prefix in PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
            stripped += prefix
    return tensors, stripped, skipped


def _param(key: str, tensor: Any, path: str, offset: int | None) -> Param:
    dtype = dtype_name(tensor.dtype)
    row = dtypes.get(dtype)
    ident = storage_ident(tensor)
    if offset is None:
        return Param(tensor.shape, dtype, lambda: to_numpy(tensor), key=key, ident=ident)
    nbytes = tensor.numel() * row.itemsize
    load = span_loader(path, offset, nbytes, row, tuple(tensor.shape))
    return Param(tensor.shape, dtype, load, key=key, ident=ident, span=Span(path, offset, nbytes))


def _file_spans(path: str, tensors: Mapping[str, Any]) -> dict[str, int]:
    """Where each contiguous tensor's bytes start in a zip checkpoint, so they are read without the mmap.

    ``torch.load(mmap=True)`` maps the whole file once; each storage is a slice of
    that mapping at its record's offset. Reading through the mapping would leave
    every page resident; a positioned read per tensor keeps memory at one tensor.
    Where the mapping cannot be matched to the records, tensors are read through it.
    """
    from .zip_writer import data_records

    offsets = {offset for offset, _, _ in data_records(path)}
    ptrs = {k: t.untyped_storage().data_ptr() for k, t in tensors.items() if t.untyped_storage().nbytes()}
    if not ptrs or not offsets:
        return {}
    bases = {next(iter(ptrs.values())) - offset for offset in offsets}
    bases = {b for b in bases if all(p - b in offsets for p in ptrs.values())}
    if len(bases) != 1:
        return {}
    base = bases.pop()
    return {k: ptrs[k] - base + t.storage_offset() * t.element_size()
            for k, t in tensors.items() if k in ptrs and t.is_contiguous()}


def write(graph: LayerGraph, path: str, **_: Any) -> None:
    """Write the graph as ``torch.save`` would, one tensor in memory at a time; tied tensors as one storage.

    A graph read from a wrapped checkpoint or with a stripped prefix is written
    back the same way: the other entries (optimizer, epoch...) of the original
    file are kept, and the prefix restored.
    """
    import torch

    from . import zip_writer

    state: dict[str, Any] = {}
    made: dict = {}
    fill: dict[int, Param] = {}
    prefix = graph.meta.get("prefix", "") if graph.format == "torch" else ""
    for key, param in graph.tensors():
        if param.ident is not None and param.ident in made:
            state[prefix + key] = made[param.ident]
            continue
        placeholder = torch.empty(param.shape, dtype=getattr(torch, param.dtype))  # pages never touched
        fill[placeholder.untyped_storage()._cdata] = param
        if param.ident is not None:
            made[param.ident] = placeholder
        state[prefix + key] = placeholder
    wrapper = graph.meta.get("wrapper") if graph.format == "torch" else None
    obj: Any = state
    if wrapper and graph.path:
        obj = torch.load(graph.path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(graph.path))
        obj[wrapper] = state
    zip_writer.save(obj, path, fill)
