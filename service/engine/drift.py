"""Drift: live traffic counted into the training distribution's bins, and its population stability index.

The manifest records, per feature and for the fraud-score, the training deciles' edges and the
share of training rows in each bin (`reference`, at training time). Every scored row is counted
into those bins by `_bins.Bins` (C: a binary search and an increment per column). Each worker
counts into its own file in the metrics directory (PROMETHEUS_MULTIPROC_DIR), which that worker
alone writes and the readers (/metrics, /v1/drift) add up: nothing to flush, nothing lost when a
worker dies. Counts belong to one model (its files are named by the model's forest digest): after
a rollout a new model starts from zero. A reset records the current totals as a baseline that
/v1/drift subtracts; the Prometheus counters keep counting, as counters must."""

from __future__ import annotations

import glob
import os
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from service.core.artifacts import write_atomically
from service.core.features import FEATURES
from service.engine._bins import Bins

SCORE = "fraud-score"
DECILES = np.linspace(0.1, 0.9, 9)
# Most fraud-scores are 0, so the score's deciles would collapse into one bin: fixed edges instead.
SCORE_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 65.0, 80.0, 95.0)
EPSILON = 1e-4  # a share of 0 (an empty bin) counts as this much, so that PSI stays finite
WATCH, ACT = 0.1, 0.25


def bins_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value: the number of edges <= it (as _bins.Bins counts)."""
    return np.searchsorted(edges, values, side="right")


def column_reference(values: np.ndarray, edges: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Edges (the deciles' unless given) and the share of `values` in each bin."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, DECILES)) if edges is None else np.asarray(edges, dtype=np.float64)
    shares = np.bincount(bins_of(values, edges), minlength=len(edges) + 1) / len(values)
    return {"edges": edges.tolist(), "shares": [round(float(s), 8) for s in shares]}


def reference(X: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """What the manifest records: features from the training rows, the fraud-score from the
    held-out rows (a forest's scores of its own training rows are too confident)."""
    return {
        "bins": "features: deciles; fraud-score: fixed edges; a value v is in bin k when exactly k edges are <= v",
        "features": {name: column_reference(X[:, i]) for i, name in enumerate(FEATURES)},
        "features_from_rows": int(len(X)),
        SCORE: column_reference(scores, SCORE_EDGES),
        "score_from_rows": int(len(scores)),
    }


def psi(expected: np.ndarray, observed: np.ndarray) -> float | None:
    """Population stability index of observed counts against expected shares; None without rows."""
    total = observed.sum()
    if total == 0:
        return None
    actual = np.maximum(observed / total, EPSILON)
    expected = np.maximum(expected, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save would add ".npy" to a path without it
        np.save(f, array)


_open_counters: weakref.WeakSet[DriftCounter] = weakref.WeakSet()


def _forget_parent_files() -> None:
    # A forked worker must not write into the file of the process it was forked from.
    for counter in _open_counters:
        counter.close()


os.register_at_fork(after_in_child=_forget_parent_files)


class DriftCounter:
    """Counts one model's scored rows into its training bins, in this process's own file."""

    def __init__(self, manifest_drift: dict[str, Any], model_key: str, directory: str | None) -> None:
        columns = [*(manifest_drift["features"][name] for name in FEATURES), manifest_drift[SCORE]]
        self.names = [*FEATURES, SCORE]
        self._edges = np.array([e for c in columns for e in c["edges"]], dtype=np.float64)
        self._starts = np.cumsum([0, *(len(c["edges"]) for c in columns)]).astype(np.int64)
        self.expected = [np.asarray(c["shares"], dtype=np.float64) for c in columns]
        self.edges = [np.asarray(c["edges"], dtype=np.float64) for c in columns]
        if any(len(s) != len(e) + 1 for s, e in zip(self.expected, self.edges, strict=True)):
            raise ValueError("the manifest's drift bins need one more share than edges per column")
        self._size = len(self._edges) + len(columns)
        self._directory = directory
        self._prefix = f"drift_{model_key}_"
        self._memory = np.zeros(self._size, dtype=np.int64) if directory is None else None
        self._memory_baseline = np.zeros(self._size, dtype=np.int64)
        self.close()

    def close(self) -> None:
        """Drops this process's counts file; the next count opens one named by the new pid."""
        self._mapped = None
        self.add = self._open_then_add
        self.add_rows = self._open_then_add_rows

    def _open(self) -> Bins:
        if self._memory is not None:
            counts = self._memory
        else:
            path = Path(self._directory) / f"{self._prefix}{os.getpid()}.counts"
            if not path.exists() or path.stat().st_size != self._size * 8:
                write_atomically(path, lambda tmp: np.zeros(self._size, dtype=np.int64).tofile(tmp))
            counts = np.memmap(path, dtype=np.int64, mode="r+", shape=(self._size,))
        self._mapped = counts
        bins = Bins(self._edges, self._starts, counts)
        # From now on a count is a call into C with no Python frame of ours in between.
        self.add, self.add_rows = bins.add, bins.add_rows
        _open_counters.add(self)
        return bins

    def _open_then_add(self, row: Sequence[float], score: float) -> None:
        self._open().add(row, score)

    def _open_then_add_rows(self, X: np.ndarray, scores: np.ndarray) -> None:
        self._open().add_rows(X, scores)

    def _files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self._directory, f"{self._prefix}[0-9]*.counts")))

    def totals(self) -> np.ndarray:
        """Counts summed over every process that counted for this model, live or dead."""
        if self._memory is not None:
            return self._memory.copy()
        total = np.zeros(self._size, dtype=np.int64)
        for path in self._files():
            counts = np.fromfile(path, dtype=np.int64)
            if counts.shape == total.shape:
                total += counts
        return total

    def _baseline_path(self) -> Path | None:
        return None if self._directory is None else Path(self._directory) / f"{self._prefix}baseline.npy"

    def since_reset(self) -> np.ndarray:
        totals = self.totals()
        path = self._baseline_path()
        if path is not None and path.exists():
            baseline = np.load(path)
            if baseline.shape == totals.shape:
                totals -= baseline
        elif path is None:
            totals -= self._memory_baseline
        return totals

    def reset(self) -> None:
        """/v1/drift counts from now on; the Prometheus counters go on counting."""
        totals = self.totals()
        path = self._baseline_path()
        if path is None:
            self._memory_baseline = totals
        else:
            write_atomically(path, lambda tmp: _save(tmp, totals))

    def split(self, counts: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """(column name, its edges, training shares, its counts) per column."""
        for c, name in enumerate(self.names):
            start = self._starts[c] + c
            yield name, self.edges[c], self.expected[c], counts[start : start + len(self.expected[c])]

    def report(self) -> dict[str, Any]:
        """What GET /v1/drift answers: PSI per feature and for the score since start or the last reset."""
        counts = self.since_reset()
        columns = {name: (edges, expected, observed) for name, edges, expected, observed in self.split(counts)}
        score = columns.pop(SCORE)
        return {
            "rows": int(score[2].sum()),
            "score": psi(score[1], score[2]),
            "features": {name: psi(expected, observed) for name, (_, expected, observed) in columns.items()},
            "thresholds": {"watch": WATCH, "act": ACT},
        }

    def collect(self) -> Iterator[Any]:
        """A Prometheus collector: live counts per bin, and the training share of each bin."""
        counts = self.totals()
        rows = CounterMetricFamily(
            "fraud_drift_rows", "Scored rows per training bin (deciles), by column", labels=["feature", "bin"]
        )
        shares = GaugeMetricFamily(
            "fraud_drift_training_share", "Share of training rows in each bin, by column", labels=["feature", "bin"]
        )
        for name, _edges, expected, observed in self.split(counts):
            for k, (share, n) in enumerate(zip(expected, observed, strict=True)):
                rows.add_metric([name, str(k)], float(n))
                shares.add_metric([name, str(k)], float(share))
        yield rows
        yield shares
