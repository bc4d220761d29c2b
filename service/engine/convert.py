"""Converts a fitted estimator into the serving artifact (the flat arrays the walker memory-maps)
and records both files in the manifest.

Training (model/export.py) writes a new model's files through it; the loader converts an estimator
dropped in without a serving artifact; and an operator whose model directory will be mounted
read-only writes the artifact ahead, so that no start has to convert again:

    python -m service.engine.convert MODEL_PATH [--output-dir DIR] [--sha256 HEX]    # or: make convert

The estimator is unpickled only after its SHA-256 matches --sha256, MODEL_SHA256, or the manifest
beside it. Without --output-dir the artifact and manifest are written beside the estimator; with
it, DIR receives a copy of the (verified) estimator as well, a complete model directory to mount."""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import joblib

from service.core.artifacts import (
    ArtifactError,
    ArtifactPaths,
    read_manifest,
    read_verified,
    recorded_digest,
    sha256_file,
    write_atomically,
    write_json_atomically,
)
from service.core.features import FEATURES
from service.engine import forest


def unpickle(data: bytes, path: Path) -> Any:
    """The estimator in `data`, bytes the caller has already verified against a trusted digest."""
    try:
        return joblib.load(io.BytesIO(data))
    except Exception as e:  # a verified file that still fails to load is corrupt or from another library version
        raise ArtifactError(f"cannot load {path}: {type(e).__name__}: {e}") from e


def load_estimator(path: Path, expected: str) -> Any:
    """Hashes and unpickles the same bytes, so the file cannot change in between."""
    return unpickle(read_verified(path, expected), path)


def feature_importances(estimator: Any) -> dict[str, float] | None:
    importances = getattr(estimator, "feature_importances_", None)
    if importances is None or len(importances) != len(FEATURES):
        return None
    return {name: round(float(v), 6) for name, v in zip(FEATURES, importances, strict=True)}


def save_forest(arrays: dict[str, Any], paths: ArtifactPaths) -> dict[str, Any]:
    """Writes the flat arrays and returns the manifest's `files.forest` entry for them."""
    forest.save(arrays, paths.forest)
    return {
        "path": paths.forest.name,
        "sha256": sha256_file(paths.forest),
        "n_trees": int(arrays["roots"].shape[0]),
        "n_nodes": int(arrays["nodes"].shape[0]),
        "max_depth": arrays["max_depth"],
    }


def recorded(
    manifest: dict[str, Any], estimator: Any, paths: ArtifactPaths, estimator_digest: str, forest_entry: Any = None
) -> dict[str, Any]:
    """The manifest with the estimator's (and the serving artifact's) entries; what it already says
    about version, estimator and importances wins."""
    files = {**manifest.get("files", {}), "estimator": {"path": paths.estimator.name, "sha256": estimator_digest}}
    if forest_entry is None:
        files.pop("forest", None)
    else:
        files["forest"] = forest_entry
    manifest = {**manifest, "files": files}
    manifest.setdefault("version", f"imported-{estimator_digest[:8]}")
    manifest.setdefault("estimator", type(estimator).__name__)
    manifest.setdefault("feature_importances", feature_importances(estimator))
    return manifest


def write(
    paths: ArtifactPaths,
    manifest: dict[str, Any],
    estimator: Any,
    estimator_digest: str,
    arrays: dict[str, Any] | None,
) -> dict[str, Any]:
    """Writes the serving artifact (unless `arrays` is None: an estimator served through sklearn)
    and then the manifest that records it; returns the manifest. Raises OSError when the directory
    cannot be written."""
    if arrays is None:
        paths.forest.unlink(missing_ok=True)
        entry = None
    else:
        entry = save_forest(arrays, paths)
    manifest = recorded(manifest, estimator, paths, estimator_digest, entry)
    write_json_atomically(paths.manifest, manifest)
    return manifest


def command(model_path: Path | str, output_dir: Path | str, sha256: str) -> str:
    """The command line that writes the serving artifact ahead, quoted for a shell."""
    quoted = " ".join(shlex.quote(str(part)) for part in (model_path, "--sha256", sha256, "--output-dir", output_dir))
    return f"python -m service.engine.convert {quoted}"


def convert_file(model_path: Path, output_dir: Path | None, pinned: str | None) -> ArtifactPaths:
    """Verifies, unpickles and converts the estimator at `model_path`; returns where it wrote."""
    source = ArtifactPaths.for_model(model_path)
    manifest = read_manifest(source.manifest) or {}
    expected = (pinned or recorded_digest(manifest, "estimator") or "").lower()
    if not expected:
        raise ArtifactError(
            f"refusing to load {model_path}: no manifest records its SHA-256; pass --sha256 "
            f"(or set MODEL_SHA256) to the file's sha256sum to trust it"
        )
    if recorded_digest(manifest, "estimator") != expected:
        manifest = {}  # the manifest describes another file
    data = read_verified(model_path, expected)
    estimator = unpickle(data, model_path)
    try:
        arrays = forest.flatten(estimator)
    except forest.UnsupportedEstimator as e:
        raise ArtifactError(f"{model_path} cannot be converted ({e}); it is served through sklearn as it is") from e
    except Exception as e:  # a pickle of the wrong thing, or an unfitted estimator
        raise ArtifactError(f"{model_path} is not a fitted tree classifier: {type(e).__name__}: {e}") from e
    target = ArtifactPaths.for_model(output_dir / model_path.name) if output_dir else source
    if output_dir:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(target.estimator, lambda tmp: tmp.write_bytes(data))
    write(target, manifest, estimator, expected, arrays)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.engine.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_path", type=Path, help="the estimator (joblib), as MODEL_PATH names it")
    parser.add_argument("--output-dir", type=Path, help="write a complete model directory here instead")
    parser.add_argument("--sha256", help="the estimator's trusted SHA-256 (default: MODEL_SHA256, then the manifest)")
    args = parser.parse_args(argv)
    try:
        target = convert_file(args.model_path, args.output_dir, args.sha256 or os.environ.get("MODEL_SHA256"))
    except (ArtifactError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {target.forest} and {target.manifest}; serve it with MODEL_PATH={target.estimator}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
