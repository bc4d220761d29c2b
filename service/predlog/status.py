"""The prediction log's state, read from its directory: for GET /health/prediction-log and /metrics.
Any process can read it (a worker, a probe); nothing here writes."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from service.predlog.spool import OPEN, SEALED, spool_bytes, spool_dir, started_ns

STATE = "compactor.json"  # written by the compactor after every pass (service/predlog/compactor.py)
# Alarm levels, as docs/operations.md's rules: a spool this full, or sealed segments this many
# segment ages old, mean the compactor is not keeping up.
FULL_SHARE = 0.9
LAG_SEGMENTS = 5


def compactor_state(directory: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads((spool_dir(directory) / STATE).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def segments(directory: Path) -> tuple[int, int, int | None]:
    """(open segments, sealed segments, start in ns of the oldest sealed one)."""
    opened = sealed = 0
    oldest = None
    with contextlib.suppress(FileNotFoundError), os.scandir(spool_dir(directory)) as entries:
        for entry in entries:
            if entry.name.endswith(OPEN):
                opened += 1
            elif entry.name.endswith(SEALED):
                sealed += 1
                started = started_ns(Path(entry.name))
                oldest = started if oldest is None else min(oldest, started)
    return opened, sealed, oldest


def describe(directory: Path, max_bytes: int, segment_seconds: int, now: float) -> dict[str, Any]:
    spool = spool_dir(directory)
    used = spool_bytes(spool)
    opened, sealed, oldest = segments(directory)
    state = compactor_state(directory)
    # the compactor's lag: how long the oldest sealed segment has waited since it was opened
    lag = max(0.0, now - oldest / 1e9) if oldest is not None else 0.0
    writable = os.access(spool if spool.is_dir() else directory, os.W_OK)
    problems = []
    if not writable:
        problems.append(f"{spool} is not writable: every record is dropped")
    if used >= FULL_SHARE * max_bytes:
        problems.append(f"the spool holds {used} of its {max_bytes} bytes (PREDICTION_LOG_MAX_BYTES)")
    if lag > LAG_SEGMENTS * segment_seconds:
        problems.append(f"the oldest sealed segment has waited {lag:.0f} s: is the compactor running?")
    return {
        "enabled": True,
        "directory": str(directory),
        "writable": writable,
        "spool_bytes": used,
        "max_bytes": max_bytes,
        "open_segments": opened,
        "sealed_segments": sealed,
        "lag_seconds": round(lag, 3),
        "compactor": state,
        "problems": problems,
    }


class StatusCollector:
    """The log's gauges for /metrics, read from its directory at each scrape."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._directory = directory
        self._max_bytes = max_bytes

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        opened, sealed, oldest = segments(self._directory)
        state = compactor_state(self._directory) or {}
        yield GaugeMetricFamily(
            "fraud_prediction_log_spool_bytes",
            "Bytes in the prediction log's spool",
            spool_bytes(spool_dir(self._directory)),
        )
        yield GaugeMetricFamily(
            "fraud_prediction_log_spool_max_bytes", "The spool's byte limit (PREDICTION_LOG_MAX_BYTES)", self._max_bytes
        )
        yield GaugeMetricFamily(
            "fraud_prediction_log_sealed_segments", "Sealed segments waiting for the compactor", sealed
        )
        yield GaugeMetricFamily(
            "fraud_prediction_log_compactor_lag_seconds",
            "Age of the oldest sealed segment waiting for the compactor (0: none waits)",
            max(0.0, time.time() - oldest / 1e9) if oldest is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "fraud_prediction_log_compactor_last_success_timestamp_seconds",
            "When the compactor last finished a pass (0: never)",
            state.get("last_success", 0.0),
        )
