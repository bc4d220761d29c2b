"""The suite's own layout: test files import helper modules (tests/helpers.py, and the few modules
beside it that are not test files: container_files.py, podman.py), never one another or conftest, so
that a fixture or helper lives in one place and a test file can be run, moved or deleted on its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ALLOWED = {"tests.helpers", "tests.container_files", "tests.podman"}


def imported_test_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # function-level imports too
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: `from . import x`, `from .conftest import y`
            names = [f"tests.{node.module or ''}".rstrip(".")] + [f"tests.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n == "tests" or n.startswith("tests.") or n.startswith(("test_", "conftest"))}
    return found


def offending_imports(files: list[Path]) -> dict[str, set[str]]:
    offences = {}
    for path in files:
        # `from tests import helpers` names tests.helpers; anything else under tests is another test file
        bad = {
            name
            for name in imported_test_modules(path)
            if name not in ALLOWED and name != "tests" and not name.startswith(tuple(f"{a}." for a in ALLOWED))
        }
        if bad:
            offences[path.name] = bad
    return offences


def test_test_files_import_only_helpers():
    files = sorted(TESTS.glob("*.py"))
    assert any(p.name == "conftest.py" for p in files) and any(p.name.startswith("test_") for p in files)
    assert offending_imports(files) == {}


def test_the_check_catches_imports_of_test_files_and_conftest(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text(
        "from tests.conftest import start_stack\n"
        "from tests.test_http import assert_error\n"
        "import tests.test_metrics\n"
        "def f():\n    from tests import conftest\n"
        "from tests.helpers import Client\n"
    )
    good = tmp_path / "test_good.py"
    good.write_text("from tests.helpers import Client\nfrom tests import helpers\n")
    assert offending_imports([bad, good]) == {
        "test_bad.py": {"tests.conftest", "tests.test_http", "tests.test_metrics"}
        | {"tests.conftest.start_stack", "tests.test_http.assert_error"}
    }


def test_every_test_file_is_described_in_docs_testing_md():
    """docs/testing.md says what each test file proves: a new file is listed there, a removed one leaves."""
    text = (TESTS.parent / "docs" / "testing.md").read_text()
    files = {f"tests/{path.name}" for path in TESTS.glob("test_*.py")}
    named = set(re.findall(r"tests/test_\w+\.py", text))
    assert (files - named, named - files) == (set(), set())
