"""The decision threshold in force for a model: FRAUD_THRESHOLD if set, else the one its manifest
records (chosen at training time for least expected cost), else 50."""

from __future__ import annotations

from typing import Any

from service.core.artifacts import ArtifactError

DEFAULT = 50
# What one alert's review costs, in Amount's money, unless training (`make model REVIEW_COST=`) or a
# report is told otherwise: a missed fraud costs its amount.
REVIEW_COST = 5.0
SUMMARY = ("chosen_by", "costs", "max_alert_rate", "rows", "frauds", "at_threshold", "at_50")


def in_force(manifest: dict[str, Any], configured: int | None) -> dict[str, Any]:
    """{"value", "source": "environment" | "manifest" | "default", …}: what /v1/model-info shows."""
    recorded = manifest.get("threshold")
    if recorded is not None:
        value = recorded.get("value") if isinstance(recorded, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 101:
            raise ArtifactError(f"the manifest's threshold must be an integer fraud-score from 0 to 101, got {value!r}")
    if configured is not None:
        return {"value": configured, "source": "environment", "manifest_value": recorded and recorded["value"]}
    if recorded is None:
        return {"value": DEFAULT, "source": "default", "reason": "the model's manifest records no threshold"}
    return {"value": recorded["value"], "source": "manifest", **{k: recorded[k] for k in SUMMARY if k in recorded}}
