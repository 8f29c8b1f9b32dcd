"""The import graph of ``convnn/`` has no cycle, and nothing imports inside a function to dodge
one (read from the sources with ``ast``: what each module imports at module level)."""

from __future__ import annotations

import ast
from pathlib import Path

import convnn

ROOT = Path(convnn.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The convnn modules ``path`` imports at module level (``from a import b`` counts ``a.b``
    when that is a module, else ``a``); importing a module also runs its packages' __init__."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    modules = set(MODULES)
    out = set()
    for name in found:
        if name in modules:
            out.add(name)
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i])
                   in modules)
    me = _module_name(path)
    return {m for m in out if m != me and not me.startswith(m + ".")}


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_lowering_package_imports_one_way():
    graph = {name: _imports(path) for name, path in MODULES.items()
             if name.startswith("convnn._lowering")}
    graph = {k: {m for m in v if m.startswith("convnn._lowering")} for k, v in graph.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_strategies_are_leaves():
    """A strategy imports only the spec, the configuration, other strategies' kernels and its
    own package: never the registry, a policy or detection."""
    upper = {"convnn._lowering._registry", "convnn._lowering._policy", "convnn._lowering._cpu",
             "convnn._lowering._cuda", "convnn._lowering._apple", "convnn._lowering._detect",
             "convnn._lowering._context", "convnn._lowering"}
    for name, path in MODULES.items():
        if name.startswith("convnn._lowering._pallas") or name in {
                "convnn._lowering._xla", "convnn._lowering._decomposed",
                "convnn._lowering._mixed", "convnn._lowering._float32"}:
            assert not (_imports(path) & upper), (name, _imports(path) & upper)


def test_no_function_imports_convnn_in_the_lowering():
    """No import of a convnn module inside a function of the lowering (the cycle dodge)."""
    for name, path in MODULES.items():
        if not name.startswith("convnn._lowering") and name not in ("convnn._backend",
                                                                    "convnn._explain"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                            "convnn"):
                        raise AssertionError(f"{name}.{node.name} imports {inner.module}")
