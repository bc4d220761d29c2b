"""A pytest plugin for `make test`'s second run (`-p tests.sanitized -m native`): the C extensions are
imported from SANITIZED_EXTENSIONS, a build of the same sources with AddressSanitizer and
UndefinedBehaviorSanitizer (the Makefile's test-sanitized), instead of the ones built in place. The
rest of the package is the checkout's own, so the tests run exactly as in the first run."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("SANITIZED_EXTENSIONS", ROOT / "build" / "sanitized")).resolve()
SOURCES = sorted(ROOT.glob("service/*/_*.c"))  # what setup.py builds


def module_name(source: Path) -> str:
    return ".".join(source.relative_to(ROOT).with_suffix("").parts)


NAMES = {module_name(source) for source in SOURCES}


class SanitizedExtensions(importlib.abc.MetaPathFinder):
    """Finds the extension modules (and only them) in the sanitized build, ahead of every other finder."""

    def find_spec(self, name, path=None, target=None):
        if name not in NAMES:
            return None
        package, _, module = name.rpartition(".")
        built = sorted(BUILD.joinpath(*package.split(".")).glob(f"{module}.*.so"))
        if not built:
            raise ImportError(f"{name} has no sanitized build in {BUILD} (make test-sanitized builds it)", name=name)
        return importlib.util.spec_from_file_location(name, built[0])


sys.meta_path.insert(0, SanitizedExtensions())


def pytest_sessionstart(session) -> None:
    """A run that is not against the sanitized modules would pass for the wrong reason."""
    for name in sorted(NAMES):
        loaded = Path(importlib.import_module(name).__file__)
        assert loaded.is_relative_to(BUILD), f"{name} was imported from {loaded}, not from {BUILD}"
