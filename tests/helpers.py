"""Small helpers shared by the tests: free ports, a raw HTTP client, tiny models."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from model import synthetic
from model.export import export, feature_stats
from service.artifacts import ArtifactPaths
from service.features import FEATURES
from service.schema import sample_transaction  # noqa: F401  (the data set's first row, for the tests)

TEST_KEY = "test-key-0123456789abcdef"
OTHER_KEY = "rotated-key-abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class Client:
    """Speaks raw HTTP/1.1 to one base address, so tests control every byte and header."""

    def __init__(self, host: str, port: int, key: str | None = TEST_KEY) -> None:
        self.host, self.port, self.key = host, port, key

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        headers: dict[str, str | bytes] | None = None,
        key: str | None = "default",
    ) -> Reply:
        all_headers = {}
        if isinstance(body, dict):
            body = json.dumps(body)
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        if key == "default":
            key = self.key
        if key is not None:
            all_headers["X-API-Key"] = key
        all_headers.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=all_headers)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def score(self, transaction: dict, **kwargs: Any) -> Reply:
        return self.request("POST", "/v1/fraud-score", transaction, **kwargs)


def as_transaction(row: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(FEATURES, row, strict=True)}


def train_small_model(path: Path, n_rows: int = 6000, trees: int = 25, seed: int = 3) -> RandomForestClassifier:
    """A real forest in about a second; frauds are oversampled so that scores vary."""
    X, y = synthetic.generate(n_rows, seed=seed)
    Xf, yf = synthetic.generate(40 * n_rows, seed=seed + 1)
    X = np.vstack([X, Xf[yf == 1]])
    y = np.concatenate([y, yf[yf == 1]])
    model = RandomForestClassifier(n_estimators=trees, random_state=seed).fit(X, y)
    export(
        model,
        path,
        data_source=f"test synthetic rows={len(y)}",
        metrics={"roc_auc": 1.0},
        stats=feature_stats(X),
        version=f"test-{seed}",
    )
    return model


def install_model(source: Path, target: Path) -> None:
    """As an operator (or `make model`) does: each file renamed into place, never overwritten."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(
        ArtifactPaths.for_model(source).__dict__.values(),
        ArtifactPaths.for_model(target).__dict__.values(),
        strict=True,
    ):
        tmp = dst.with_name(f".{dst.name}.new")
        shutil.copy(src, tmp)
        os.replace(tmp, dst)
