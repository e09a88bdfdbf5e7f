"""Live networks: a ``torch.nn.Module`` or ``keras.Model`` in memory, as a graph to copy into.

``load_into`` and ``freeze`` pick the framework from the model's own class, so
neither torch nor Keras is imported unless the model is one of theirs. The API
(``surgery.load_into``) and the verify backends (a ``--factory`` model loaded
with a checkpoint) both come here.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Iterable


def is_keras(model: Any) -> bool:
    """True for a Keras (or tf.keras) model, by its class's module: no import needed to tell."""
    return type(model).__module__.startswith(("keras", "tf_keras"))


def backend(model: Any) -> ModuleType:
    """``live.keras`` or ``live.torch``, for the model's framework."""
    if is_keras(model):
        from . import keras as live
    else:
        from . import torch as live
    return live


def load_into(model: Any, path: Any, mapping: Any = None, *, freeze: Iterable[str] = (), strict: bool = True,
              unsafe_pickle: bool = False) -> Any:
    """Copy a checkpoint's weights into a live model, set its layer settings, freeze layers.

    Returns the Transplant (its plan says what was copied and what was not).
    """
    from .. import formats
    from ..apply import transplant_graphs
    from ..graph import LayerGraph

    live = backend(model)
    src = path if isinstance(path, LayerGraph) else formats.read(path, **({"unsafe_pickle": True} if unsafe_pickle else {}))
    result = transplant_graphs(src, live.graph_of(model), mapping, freeze=freeze, strict=strict)
    values = {t.destination: t.param.read() for p in result.plan.pairs for t in p.tensors}
    live.assign(model, values)
    live.set_attrs(model, result.graph)
    if result.plan.frozen:
        live.freeze(model, result.plan.frozen)
    return result


def freeze(model: Any, globs: Iterable[str]) -> list[str]:
    """Freeze a live model's layers by glob (``requires_grad=False`` / ``trainable=False``)."""
    return backend(model).freeze(model, globs)
