"""The layer rules of service/ are import-linter contracts in pyproject.toml, checked by `make lint`.
These tests show that the contracts hold on this tree and that they fail for the imports they forbid
(an import against the layers, training code, the launcher), so the check cannot pass vacuously."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.timeout(120)


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    # --no-cache: a tree copied to a temporary folder must not read or write the checkout's cache.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=110, env={"PATH": ""}
    )


def copy_of_the_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("service", "model", "stack"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("*.so", "__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    return tree


def test_the_tree_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("service/core/features.py", "from service.engine import forest", "service layers"),
        ("service/engine/scoring.py", "from service.api import errors", "service layers"),
        ("service/offline/bulk.py", "from service.api import app", "service layers"),
        ("service/api/errors.py", "import service.runtime.wsgi", "service layers"),
        ("service/contract/schema.py", "from service.store import feature_record", "service layers"),
        ("service/engine/loader.py", "from model import synthetic", "service imports neither"),
        ("service/runtime/serve.py", "from stack import harness", "service imports neither"),
    ],
)
def test_the_contracts_catch_an_import_against_them(tmp_path, module, line, contract):
    tree = copy_of_the_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert "1 broken" in result.stdout
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert len(broken) == 1 and contract in broken[0], result.stdout
