"""The fast scorer: a random forest as flat arrays, walked by a small C extension.

The arrays are written once (uncompressed joblib) and loaded with ``mmap_mode="r"``, so every
gunicorn worker reads the same read-only page-cache pages instead of a private copy. Nodes are
packed 16 bytes each (float32 threshold rounded down, feature, left, right: all one step of a
walk reads); each node's class-1 fraction is a float64 array beside them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from service.core.artifacts import ArtifactError, write_atomically
from service.engine._walker import NODE_SIZE, Walker

TREE_ESTIMATORS = ("RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier")
FORMAT = 2  # 1: separate left/right/feature/float64-threshold arrays (before packed nodes)
NODE = np.dtype([("threshold", "<f4"), ("feature", "<i4"), ("left", "<i4"), ("right", "<i4")])
assert NODE.itemsize == NODE_SIZE
# The Walker's batch routes (its `lanes`), fastest first: 64-row bytes (AVX-512BW), 32-row bytes
# (AVX2), 16-row words (AVX-512), 8-row words (AVX2), the walk. By default the first this CPU runs.
ROUTES = (64, 32, 16, 8, 0)


class UnsupportedEstimator(ValueError):
    """The estimator is not a binary single-output tree ensemble the walker can serve."""


class OutdatedArtifact(ArtifactError):
    """A serving artifact written in an older format: convert the estimator again."""


def threshold_down(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold. For a float32 x, x <= t32 exactly when
    x <= t64, so the walker compares in float32 and still takes sklearn's branch every time."""
    with np.errstate(over="ignore"):  # beyond float32's range it becomes ±inf, as sklearn's cast of x does
        t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def positive_class_index(classes: np.ndarray) -> int:
    """Column of predict_proba that holds P(fraud): the class labelled 1 (or True)."""
    matches = np.flatnonzero(np.asarray(classes) == 1)
    if len(classes) != 2 or len(matches) != 1:
        raise UnsupportedEstimator(f"expected the binary classes [0, 1], got {list(classes)}")
    return int(matches[0])


def flatten(estimator: Any) -> dict[str, Any]:
    """Flat node arrays of a fitted tree classifier, children as global node indices.

    ``value`` is each node's class-1 fraction exactly as ``tree_.predict`` reports it, for every
    node (not only leaves), so the same arrays also serve the path decomposition."""
    kind = type(estimator).__name__
    if kind not in TREE_ESTIMATORS:
        raise UnsupportedEstimator(f"{kind} is not one of {', '.join(TREE_ESTIMATORS)}")
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise UnsupportedEstimator("multi-output models are not supported")
    k = positive_class_index(estimator.classes_)
    trees = [t.tree_ for t in getattr(estimator, "estimators_", [estimator])]
    offsets = np.cumsum([0] + [t.node_count for t in trees])
    if offsets[-1] >= np.iinfo(np.int32).max:
        raise UnsupportedEstimator("the forest has too many nodes for 32-bit indices")

    def children(t, side, offset):
        ids = getattr(t, side).astype(np.int64)
        return np.where(ids >= 0, ids + offset, -1).astype(np.int32)

    left = np.concatenate([children(t, "children_left", o) for t, o in zip(trees, offsets[:-1], strict=True)])
    nodes = np.zeros(len(left), dtype=NODE)
    nodes["left"] = left
    nodes["right"] = np.concatenate(
        [children(t, "children_right", o) for t, o in zip(trees, offsets[:-1], strict=True)]
    )
    leaf = left < 0
    nodes["feature"] = np.where(leaf, -1, np.concatenate([t.feature for t in trees]))
    nodes["threshold"] = np.where(leaf, np.float32(0), threshold_down(np.concatenate([t.threshold for t in trees])))
    return {
        "format": FORMAT,
        "nodes": nodes,
        "value": np.concatenate([t.value[:, 0, k] for t in trees]).astype(np.float64),
        "roots": offsets[:-1].astype(np.int32),
        "n_features": int(estimator.n_features_in_),
        "max_depth": int(max(t.max_depth for t in trees)),
        "estimator": kind,
    }


def save(arrays: dict[str, Any], path: Path) -> None:
    """Writes the arrays uncompressed, so that they can be memory-mapped."""
    c_arrays = {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    write_atomically(path, lambda tmp: joblib.dump(c_arrays, tmp, compress=0))


class Forest:
    """P(fraud) for one row or many, bit-identical to the estimator's ``predict_proba``."""

    def __init__(self, arrays: dict[str, Any]) -> None:
        if arrays.get("format") != FORMAT or arrays.get("nodes") is None or arrays["nodes"].dtype != NODE:
            raise OutdatedArtifact(
                f"the serving artifact is in format {arrays.get('format', 1)}, this service reads format {FORMAT}"
            )
        self.arrays = arrays
        self.n_features: int = int(arrays["n_features"])
        self.max_depth: int = int(arrays["max_depth"])
        self.estimator: str = str(arrays["estimator"])
        self._walker = Walker(
            nodes=arrays["nodes"], value=arrays["value"], roots=arrays["roots"], n_features=self.n_features
        )
        self.n_trees: int = self._walker.n_trees
        self.n_nodes: int = self._walker.n_nodes
        # The hot path: a bound C method, no Python frame of ours in between.
        self.predict_row = self._walker.predict_row

    @classmethod
    def load(cls, path: Path) -> Forest:
        """Loads the arrays memory-mapped read-only. The caller verifies the file's digest first:
        a joblib file is a pickle."""
        return cls(joblib.load(path, mmap_mode="r"))

    def predict_rows(self, X: np.ndarray) -> np.ndarray:
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        if X32.ndim != 2 or X32.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {X32.shape}")
        out = np.empty(X32.shape[0], dtype=np.float64)
        self._walker.predict_rows(X32, out)
        return out

    def explain_row(self, row: Sequence[float]) -> tuple[float, float, np.ndarray]:
        """(probability, bias, per-feature contributions) with bias + Σ contributions = probability."""
        contributions = np.empty(self.n_features, dtype=np.float64)
        proba, bias = self._walker.explain_row(row, contributions)
        return proba, bias, contributions
