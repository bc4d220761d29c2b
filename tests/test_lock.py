"""The lock files (requirements/*.txt, written by `make lock`) and pyproject.toml say the same: every
requirement of the environment a lock is for is pinned there at a version it allows, with hashes, and a
package has one version in every lock. Every install in the Makefile takes a lock's hashes or no
dependencies at all."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stack.launcher import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", re.M)


def extras_of(lock: str) -> set[str]:
    """The extras each lock holds, as the Makefile's lock target compiles them."""
    every = set(PYPROJECT["project"]["optional-dependencies"])
    dev = set(re.search(r"^DEV_EXTRAS := (.+)$", MAKEFILE, re.M).group(1).split())
    return {"production": set(), "dev": dev, "spark": every}[lock]


def requirements(project: dict, extras: set[str]) -> list[Requirement]:
    """The build system's and the project's requirements with these extras, the project's references
    to its own extras followed."""
    name = canonicalize_name(project["project"]["name"])
    found = [Requirement(r) for r in project["build-system"]["requires"]]
    pending, seen = [*project["project"]["dependencies"]], set()
    for extra in sorted(extras):
        pending += project["project"]["optional-dependencies"][extra]
    while pending:
        requirement = Requirement(pending.pop())
        if canonicalize_name(requirement.name) != name:
            found.append(requirement)
            continue
        for extra in requirement.extras - seen:
            seen.add(extra)
            pending += project["project"]["optional-dependencies"][extra]
    return found


def pins(text: str) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version, _hashes in PIN.findall(text)}


def unmet(required: list[Requirement], pinned: dict[str, str]) -> list[str]:
    """What the pins do not satisfy: a requirement unpinned, or pinned outside its bounds."""
    missing = []
    for requirement in required:
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement} (locked: {version})")
    return missing


def test_every_lock_satisfies_pyproject_and_pins_with_hashes():
    for lock in ("production", "dev", "spark"):
        text = (ROOT / "requirements" / f"{lock}.txt").read_text()
        pinned = pins(text)
        assert len(pinned) == len(re.findall(r"^\S+==", text, re.M)), f"{lock}: a pin without a hash"
        assert unmet(requirements(PYPROJECT, extras_of(lock)), pinned) == [], f"{lock}: run `make lock`"


def test_a_package_has_one_version_in_every_lock():
    locks = [pins((ROOT / "requirements" / f"{lock}.txt").read_text()) for lock in ("production", "dev", "spark")]
    for name in set().union(*locks):
        assert len({lock[name] for lock in locks if name in lock}) == 1, name


def test_a_requirement_the_lock_does_not_meet_is_found():
    """The check above can fail: a raised bound, a new dependency, a new extra's dependency."""
    pinned = pins((ROOT / "requirements" / "dev.txt").read_text())
    drifted = PYPROJECT | {"project": dict(PYPROJECT["project"])}
    drifted["project"]["dependencies"] = [*PYPROJECT["project"]["dependencies"], "numpy>=999", "not-in-the-lock"]
    drifted["project"]["optional-dependencies"] = PYPROJECT["project"]["optional-dependencies"] | {
        "dev": [*PYPROJECT["project"]["optional-dependencies"]["dev"], "pytest<1"]
    }
    assert len(unmet(requirements(drifted, extras_of("dev")), pinned)) == 3
    assert unmet(requirements(PYPROJECT, extras_of("dev")), pinned) == []


def test_every_install_in_the_makefile_checks_hashes_or_takes_no_dependencies():
    installs = [line for line in MAKEFILE.splitlines() if "pip install" in line]
    assert installs
    for line in installs:
        assert "--require-hashes -r requirements/" in line or "--no-deps" in line, line
