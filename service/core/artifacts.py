"""Where a model's files live, what the manifest records about them, and digest checks.

joblib files are pickles: loading one runs whatever code it holds. Nothing is unpickled before
its SHA-256 matches a digest from a trusted record (the manifest written at training time, or
one pinned by the operator)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.features import FEATURES


class ArtifactError(Exception):
    """A model file is missing, unreadable or does not match its recorded digest."""


@dataclass(frozen=True)
class ArtifactPaths:
    estimator: Path  # the sklearn estimator, as the reference's users have it
    forest: Path  # the serving artifact: flat arrays, uncompressed, memory-mappable
    manifest: Path

    @classmethod
    def for_model(cls, model_path: Path) -> ArtifactPaths:
        stem = model_path.name.removesuffix(".joblib")
        return cls(
            estimator=model_path,
            forest=model_path.with_name(f"{stem}.forest.joblib"),
            manifest=model_path.with_name(f"{stem}.manifest.json"),
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from e
    return digest.hexdigest()


def verify(path: Path, expected: str | None, source: str) -> str:
    """Returns the file's digest if it equals `expected`; raises before anything is unpickled."""
    if not expected:
        raise ArtifactError(f"refusing to load {path}: no trusted SHA-256 for it ({source})")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ArtifactError(f"refusing to load {path}: SHA-256 {actual} does not match {expected} ({source})")
    return actual


def read_verified(path: Path, expected: str) -> bytes:
    """The file's bytes, if their SHA-256 is `expected`."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ArtifactError(f"refusing to load {path}: SHA-256 {actual} does not match {expected}")
    return data


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from e
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    problem = _shape_problem(manifest)
    if problem:
        raise ArtifactError(f"{path} is not a manifest this service reads: {problem}")
    return manifest


def _shape_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the parts of a manifest the service reads, so that a hand-edited or
    foreign one is refused at load rather than failing while the application is built."""
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        return "`files` must map each file's role to an object"
    features = manifest.get("features")
    if features is not None and not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
        return "`features` must be a list of names"
    stats = manifest.get("feature_stats")
    if stats is not None and not (
        isinstance(stats, dict)
        and all(
            isinstance(s, dict) and all(type(s.get(k)) in (int, float) for k in ("mean", "std")) for s in stats.values()
        )
    ):
        return "`feature_stats` must map each feature to numbers `mean` and `std`"
    if _ood_problem(manifest.get("ood")):
        return (
            "`ood` must hold numbers `target_rate`, `heldout_rate` and `tail`, and `bounds` mapping "
            "features to [low, high] (a feature without bounds is never flagged)"
        )
    if not isinstance(manifest.get("version", ""), str):
        return "`version` must be a string"
    return None


def _ood_problem(ood: Any) -> bool:
    if ood is None:
        return False
    if not isinstance(ood, dict) or not all(
        type(ood.get(k)) in (int, float) for k in ("target_rate", "heldout_rate", "tail")
    ):
        return True
    bounds = ood.get("bounds")
    return not (
        isinstance(bounds, dict)
        and set(bounds) <= set(FEATURES)
        and all(
            isinstance(b, list) and len(b) == 2 and all(type(v) in (int, float) for v in b) and b[0] <= b[1]
            for b in bounds.values()
        )
    )


def recorded_digest(manifest: dict[str, Any] | None, role: str) -> str | None:
    return ((manifest or {}).get("files", {}).get(role) or {}).get("sha256")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Writes a new file beside `path` and renames it into place. Readers never see a half-written
    file, and running workers that memory-mapped the old file keep its (unlinked) pages: overwriting
    it in place would change or truncate their model under them."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    def dump(tmp: Path) -> None:
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")

    write_atomically(path, dump)
