"""Imports run one way: training (`model/`) uses the service's code, the service never imports
training code or reads files from the `model` package."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"


def imports_of_model(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "model" or a.name.startswith("model.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "model" or node.module.startswith("model."):
                found.append(node.module)
        elif isinstance(node, ast.Call) and node.args:  # import_module("model…"), resources.files("model")
            first = node.args[0]
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if (
                name in ("import_module", "__import__", "files")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and (first.value == "model" or first.value.startswith("model."))
            ):
                found.append(first.value)
    return found


def test_the_service_never_imports_training_code():
    sources = sorted(SERVICE.rglob("*.py"))
    assert len(sources) > 10
    offenders = {
        str(path.relative_to(SERVICE.parent)): found
        for path in sources
        if (found := imports_of_model(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}


def test_the_check_sees_every_form_of_import():
    code = (
        "import model\nimport model.train as t\nfrom model.export import export\n"
        "def f():\n    from model import synthetic\n"
        "importlib.import_module('model.export')\nresources.files('model')\n"
        "import modeling\nfrom service import model\nfrom .model import x\n"
    )
    assert sorted(imports_of_model(ast.parse(code))) == sorted(
        ["model", "model.train", "model.export", "model", "model.export", "model"]
    )
