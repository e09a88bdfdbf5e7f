"""Which PyTorch module an ONNX node came from, as the exporters record it.

The dynamo exporter stores the module path in the node's metadata
(``pkg.torch.onnx.name_scopes`` = ``['', 'features', 'features.0', 'conv2d']``);
the TorchScript exporter names nodes after it (``/features/features.0/Conv``).
Both the reader (to name layers) and verify (to name diverging layers) ask here.
"""

from __future__ import annotations

import ast
from typing import Any

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def name_scopes(node: Any) -> list[str] | None:
    """The dynamo exporter's recorded scopes of a node, outermost first; None when it recorded none."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [str(s) for s in scopes] if isinstance(scopes, list) else None
    return None


def module_path(node: Any) -> str | None:
    """The module a node belongs to (``features.0``), "" for the root module, None when no exporter said."""
    scopes = name_scopes(node)
    if scopes is not None:
        return scopes[-2] if len(scopes) >= 3 else ""
    if node.name.startswith("/"):
        return _joined(node.name.split("/")[1:-1])
    return None


def _joined(parts: list[str]) -> str:
    """The TorchScript exporter's scope parts as one module path.

    Each part is the attribute name under the part before it (``bert``, ``encoder``,
    ``layer.0``, ``attention``), except that the children of a module that was called
    (a Sequential) repeat its name (``features``, ``features.0``): such a part replaces it.
    """
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)
