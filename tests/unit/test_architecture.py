"""The import graph of bridge/ and sidecar/, read from the source: no module imports another
module's private names, and no import cycles between modules (import-linter checks the layers
between packages in `make lint`; this checks every module, inside packages too). And the tests'
own layout: no file imports a test file (test_*.py, conftest.py), and the test equipment
(tests/equipment/) imports none of the suites."""

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


# -- the tests' own layout: a test file is never imported -------------------------------------


def is_test_file(module: str) -> bool:
    """A module pytest collects or configures from: `test_*.py` or `conftest.py`."""
    last = module.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def imported_modules(name: str, tree: ast.Module, is_package: bool = False) -> set[str]:
    """Every module `name` imports, absolute, relative imports resolved; `from X import a` is
    both X and X.a (a may be a module)."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def imports_of_test_files(sources: dict[str, tuple[Path, str]]) -> list[str]:
    found = []
    for name, (path, text) in sorted(sources.items()):
        tree = ast.parse(text, str(path))
        targets = imported_modules(name, tree, path.name == "__init__.py")
        hits = set()
        for target in targets:
            parts = target.split(".")
            test = next((i for i, part in enumerate(parts) if is_test_file(part)), None)
            if parts[0] == "tests" and test is not None:
                hits.add(".".join(parts[:test + 1]))
        found += [f"{path.relative_to(REPO)} imports {hit}" for hit in sorted(hits - {name})]
    return found


def python_sources() -> dict[str, tuple[Path, str]]:
    """Every Python file under tests/, and scripts/ (Python by its first line)."""
    found = {module_name(p): (p, p.read_text()) for p in sorted((REPO / "tests").rglob("*.py"))}
    for p in sorted((REPO / "scripts").iterdir()):
        if p.is_file() and p.read_text(errors="replace").startswith("#!/usr/bin/env python"):
            found[f"scripts.{p.name.replace('-', '_')}"] = (p, p.read_text())
    return found


def test_no_test_file_is_imported() -> None:
    """A test file (test_*.py, conftest.py) is a specification, read on its own: what another
    file needs from it (builders, fakes, servers, helpers) lives in a support module
    (tests/unit/support.py, a suite's support.py, tests/helpers.py) or in tests/equipment/.
    pytest finds fixtures in conftest.py by itself; nothing imports one."""
    assert imports_of_test_files(python_sources()) == []


def test_the_check_sees_a_test_file_imported_every_way() -> None:
    """Not vacuous: a conftest or test_*.py imported absolutely, relatively (one and two dots),
    as a name from its package or with `import` is found; a support module is not."""
    here = REPO / "tests" / "e2e" / "test_a.py"
    cases = {
        "from .conftest import free_port\n": "tests.e2e.conftest",
        "from ..sidecar.test_security import FORGED_KEY\n": "tests.sidecar.test_security",
        "from tests.conftest import KUBECTL\n": "tests.conftest",
        "from tests.e2e import test_heartbeat\n": "tests.e2e.test_heartbeat",
        "import tests.unit.test_cli as cli\n": "tests.unit.test_cli",
        "def f():\n    from tests.clusterchecks.test_services_e2e import service\n":
            "tests.clusterchecks.test_services_e2e",
    }
    for source, target in cases.items():
        assert imports_of_test_files({"tests.e2e.test_a": (here, source)}) == \
            [f"tests/e2e/test_a.py imports {target}"], source
    fine = ("from .support import free_port\nfrom tests.unit.support import Pki\n"
            "from tests.equipment.localcluster import fixture\nimport pytest\n")
    assert imports_of_test_files({"tests.e2e.test_a": (here, fine)}) == []


def equipment_importing_suites(sources: dict[str, tuple[Path, str]]) -> list[str]:
    """tests/equipment imports only itself and tests/helpers.py: what the suites run against
    does not depend on them."""
    found = []
    for name, (path, text) in sorted(sources.items()):
        if not name.startswith("tests.equipment"):
            continue
        tree = ast.parse(text, str(path))
        suites = {".".join(t.split(".")[:2])
                  for t in imported_modules(name, tree, path.name == "__init__.py")
                  if t.split(".")[0] == "tests" and t != "tests"}
        found += [f"{path.relative_to(REPO)} imports {suite}"
                  for suite in sorted(suites - {"tests.equipment", "tests.helpers"})]
    return found


def test_equipment_imports_no_suite() -> None:
    assert equipment_importing_suites(python_sources()) == []
    here = REPO / "tests" / "equipment" / "faults" / "suite.py"
    bad = "from tests.e2e.support import workload_manifest\nfrom ...unit import support\n"
    assert equipment_importing_suites({"tests.equipment.faults.suite": (here, bad)}) == [
        "tests/equipment/faults/suite.py imports tests.e2e",
        "tests/equipment/faults/suite.py imports tests.unit"]
    fine = ("from . import probe\nfrom tests.equipment.workload import x\n"
            "from tests import helpers\n")
    assert equipment_importing_suites({"tests.equipment.faults.suite": (here, fine)}) == []
