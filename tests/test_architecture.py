"""The package's shape: no import cycles, no private names borrowed across modules.

Imports inside functions count too: a lazy import is how a cycle hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import surgery

PACKAGE = Path(surgery.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: ``if TYPE_CHECKING:`` blocks are for type checkers and never import."""
    out = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(module: str) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or '', line)`` for every surgery import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "surgery"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            if target.split(".")[0] != "surgery":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in MODULES else (target, alias.name, node.lineno))
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            # importing a.b.c runs a/__init__ and a/b/__init__ too, but those are not cycles of
            # this module's making: count the module named.
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    edges = _edges()
    # The package itself re-exports lazily; its own imports are not cycles.
    edges["surgery"] = set()
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_is_imported_from_another_module() -> None:
    borrowed = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line}: {name} from {target}"
                for m in MODULES for target, name, line in _imports(m)
                if name.startswith("_") and not name.startswith("__") and target != m]
    assert not borrowed, "private names imported across modules:\n" + "\n".join(borrowed)


def test_every_public_name_resolves_lazily():
    assert set(surgery.__all__) - {"__version__"} == set(surgery._EXPORTS)
    for name in surgery.__all__:
        assert getattr(surgery, name) is not None, name
    assert callable(surgery.plan) and callable(surgery.diff)  # not the modules pairing/compare
