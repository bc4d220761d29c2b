"""In-process micro-benchmarks: the forest engine against sklearn on the same model, validation
against the jsonschema reference, and where a request's CPU goes inside one worker."""

from __future__ import annotations

import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import falcon.testing
import joblib
import numpy as np
import orjson

from perf import stats
from service.api.app import create_app
from service.api.budget import RowBudget
from service.contract.schema import TransactionValidator, load_schema_document
from service.core.artifacts import ArtifactPaths, read_manifest, recorded_digest, verify
from service.core.features import FEATURES
from service.core.settings import Settings
from service.engine.forest import Forest
from service.engine.loader import load_model

BATCHES = (1_000, 10_000)


def per_call(fn: Callable[[], Any], repeat: int = 5, min_seconds: float = 0.05) -> float:
    """Median seconds per call over `repeat` timings, each long enough to dwarf the timer's cost."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()  # calls that take at least 0.2 s
    number = max(1, int(number * min_seconds / 0.2))
    return stats.median(t / number for t in timer.repeat(repeat, number))


def load_estimator(model_path: Path) -> Any:
    """The sklearn estimator the service was built from, verified like the service verifies it."""
    paths = ArtifactPaths.for_model(model_path)
    manifest = read_manifest(paths.manifest)
    verify(paths.estimator, recorded_digest(manifest, "estimator"), f"recorded in {paths.manifest.name}")
    return joblib.load(paths.estimator)


def load_forest(model_path: Path) -> Forest:
    paths = ArtifactPaths.for_model(model_path)
    verify(paths.forest, recorded_digest(read_manifest(paths.manifest), "forest"), f"recorded in {paths.manifest.name}")
    return Forest.load(paths.forest)


def engine(estimator: Any, forest: Forest, X: np.ndarray) -> dict[str, Any]:
    """The walker against predict_proba (n_jobs=1): one row, and batches; and whether they agree
    to the last bit."""
    estimator = estimator.set_params(n_jobs=1)
    column = list(estimator.classes_).index(1)
    row = X[0].tolist()  # the service passes a tuple of Python floats
    sklearn_row = per_call(lambda: estimator.predict_proba(X[:1]), repeat=7, min_seconds=0.2)
    forest_row = per_call(lambda: forest.predict_row(row))
    largest = X[: max(BATCHES)]
    expected = estimator.predict_proba(largest)[:, column]
    identical = bool(
        np.array_equal(forest.predict_rows(largest), expected)
        and all(forest.predict_row(r) == p for r, p in zip(largest[:500].tolist(), expected[:500], strict=True))
    )
    result: dict[str, Any] = {
        "n_trees": forest.n_trees,
        "n_nodes": forest.n_nodes,
        "single_row_us": {"sklearn": sklearn_row * 1e6, "forest": forest_row * 1e6},
        "single_row_speedup": sklearn_row / forest_row,
        "bit_identical": identical,
        "rows_compared": len(largest),
        "batch": {},
    }
    for n in BATCHES:
        rows = X[:n]
        sk = per_call(lambda rows=rows: estimator.predict_proba(rows), repeat=3, min_seconds=0.3)
        fast = per_call(lambda rows=rows: forest.predict_rows(rows), repeat=3, min_seconds=0.3)
        result["batch"][str(n)] = {"sklearn_rows_per_s": n / sk, "forest_rows_per_s": n / fast, "speedup": sk / fast}
    return result


def validation(bodies: list[bytes]) -> dict[str, Any]:
    """Cost per request of the compiled validator on the hot path and of the jsonschema reference."""
    import jsonschema

    validator = TransactionValidator(load_schema_document())
    reference = jsonschema.Draft202012Validator(validator.document)
    transactions = [orjson.loads(b) for b in bodies]
    if not all(validator.is_valid(t) and reference.is_valid(t) for t in transactions):
        raise AssertionError("a benchmark transaction is not valid")

    def each(check: Callable[[Any], bool]) -> Callable[[], None]:
        return lambda: [check(t) for t in transactions]

    compiled = per_call(each(validator.is_valid)) / len(transactions)
    jsonschema_cost = per_call(each(reference.is_valid), repeat=3) / len(transactions)
    return {
        "compiled_us": compiled * 1e6,
        "jsonschema_us": jsonschema_cost * 1e6,
        "speedup": jsonschema_cost / compiled,
    }


def serving(
    app: Callable[..., Any],
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    n: int,
    expect: str = "200",
) -> Callable[[], None]:
    """A callable that passes n copies of one request through a WSGI app in this process, and fails
    unless every answer's status starts with `expect`."""
    environs = [falcon.testing.create_environ(method=method, path=path, body=body, headers=headers) for _ in range(n)]
    statuses: list[str] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        statuses.append(status)

    def serve_all() -> None:
        statuses.clear()
        for environ in environs:
            environ["wsgi.input"].seek(0)
            for _ in app(environ, start_response):
                pass
        if any(not s.startswith(expect) for s in statuses):
            raise AssertionError(f"{method} {path}: expected {expect}, got {set(statuses)}")

    return serve_all


def lifted_settings(model_path: Path, key: str, **extra: Any) -> Settings:
    """An in-process app's settings: this key and model, and a rate limit no benchmark reaches (the
    budget is still spent on every score, as in the service); `extra` sets other fields."""
    return Settings(
        api_keys=(key.encode(),), model_path=model_path, rate_limit_per_key=10**9, rate_limit_burst=10**9, **extra
    )


def hot_path(model_path: Path, bodies: list[bytes]) -> dict[str, float]:
    """CPU per request (µs) inside one process: the whole Falcon app for /health and for a score,
    and the steps of a score."""
    key = "perf-micro-key-0123456789"
    settings = lifted_settings(model_path, key)
    model = load_model(settings)
    validator = TransactionValidator(load_schema_document())
    budget = RowBudget.for_settings(settings)
    app = create_app(settings, model, budget=budget)
    n = 2000

    def app_call(method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Callable[[], None]:
        return serving(app, method, path, body, headers, n)

    rid = {"X-Request-ID": "perf-micro"}
    health = per_call(app_call("GET", "/health", None, rid), repeat=5) / n
    score = (
        per_call(
            app_call(
                "POST", "/v1/fraud-score", bodies[0], {**rid, "Content-Type": "application/json", "X-API-Key": key}
            ),
            repeat=5,
        )
        / n
    )

    # a JSON batch of up to 1,000 rows through the whole app, per row (make perf's batch scenario,
    # without the sockets)
    rows = bodies[:1000]
    batch = per_call(
        serving(
            app,
            "POST",
            "/v1/fraud-score/batch",
            b'{"transactions":[' + b",".join(rows) + b"]}",
            {**rid, "Content-Type": "application/json", "X-API-Key": key},
            20,
        ),
        repeat=5,
    ) / (20 * len(rows))

    transaction = orjson.loads(bodies[0])
    row = tuple(transaction[f] for f in FEATURES)
    steps = {
        "decode_us": per_call(lambda: orjson.loads(bodies[0])),
        "validate_us": per_call(lambda: validator.is_valid(transaction)),
        "predict_row_us": per_call(lambda: model.predict_row(row)),
        "budget_spend_us": per_call(lambda: budget.spend(0, 1)),
        "encode_us": per_call(
            lambda: orjson.dumps({"fraud-score": 3, "is-fraud": False, "model-version": model.version})
        ),
    }
    return {
        "app_health_us": health * 1e6,
        "app_score_us": score * 1e6,
        "score_minus_health_us": (score - health) * 1e6,
        "app_batch_row_us": batch * 1e6,
        **{k: v * 1e6 for k, v in steps.items()},
    }
