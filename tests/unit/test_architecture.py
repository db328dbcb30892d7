"""The import graph of bridge/ and sidecar/, read from the source: no module imports another
module's private names, and no import cycles between modules (import-linter checks the layers
between packages in `make lint`; this checks every module, inside packages too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bridge", "sidecar")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            found[module_name(path)] = ast.parse(path.read_text(), str(path))
    return found


def imports(name: str, tree: ast.Module, known: set[str]) -> list[tuple[str, list[str], bool]]:
    """(imported module, names taken from it, at module level?) for each import of ours."""
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # `from bridge.model import trust` imports a module
                    out.append((sub, [], id(node) in top))
                else:
                    out.append((base, [alias.name], id(node) in top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    out.append((alias.name, [], id(node) in top))
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    mods = modules()
    found = [f"{name} imports {names[0]} from {target}"
             for name, tree in mods.items()
             for target, names, _ in imports(name, tree, set(mods))
             if target != name and names and names[0].startswith("_")
             and not names[0].startswith("__")]
    assert found == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


def test_no_import_cycles_between_modules() -> None:
    """Module-level imports only: a function-level import is how a cycle is broken on purpose
    (and how the CLI stays quick to start)."""
    mods = modules()
    graph = {name: {t for t, _, top in imports(name, tree, set(mods)) if top and t in mods
                    and t != name and not name.startswith(t + ".")}
             for name, tree in mods.items()}
    assert find_cycles(graph) == []


def test_the_checks_see_a_private_import_and_a_cycle() -> None:
    """The two checks above are not vacuous: they find what they look for."""
    a = ast.parse("from bridge.b import _secret\n")
    assert imports("bridge.a", a, {"bridge.a", "bridge.b"}) == [("bridge.b", ["_secret"], True)]
    b = ast.parse("from bridge import a\n")
    assert imports("bridge.b", b, {"bridge.a", "bridge.b"}) == [("bridge.a", [], True)]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) == []
