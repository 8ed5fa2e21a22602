"""The house's rules that review misses: tests stand alone, the benchmarks need no test, every package of alliter
says what it owns and names its modules."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module a file imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another_and_no_benchmark_imports_a_test():
    tests = {p.stem for p in (REPO / "tests").glob("*.py")}
    test_modules = {t for t in tests if t.startswith("test_")}
    for path in sorted((REPO / "tests").glob("*.py")):
        assert not imported_modules(path) & test_modules, f"{path.name} imports a test module"
    for path in sorted((REPO / "bench").glob("*.py")):
        assert not imported_modules(path) & (tests | {"tests"}), f"bench/{path.name} imports from tests/"


def test_every_package_of_alliter_has_a_docstring_that_says_what_it_owns():
    for init in sorted((REPO / "alliter").rglob("__init__.py")):
        if init.parent.name == "models":  # data: the bundled model's folder
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 5, f"{init.relative_to(REPO)} says nothing of what it owns"
        if init.parent.name != "alliter":  # a sub-package's docstring is its map: it names every module
            for module in sorted(init.parent.glob("*.py")):
                assert module.name == "__init__.py" or module.name in doc, f"{init.relative_to(REPO)} omits {module.name}"
