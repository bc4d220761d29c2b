"""The whole loop, as a user runs it: the real stack (nginx, gunicorn's workers, the compactor) scores
generated transactions with their ids and logs them; chargebacks come in 30 to 120 days later and
are ingested by `make labels`'s command in runs, as a bank's files would be; `make outcomes` shows
how the champion did (and, after the roll-out, the challenger beside it); `make training-set`
builds the table as of a cut-off (and a label ingested after it changes nothing); `make model`
trains a challenger on it; the stack serves it beside the champion; `make evaluate` compares the
two on what was scored after, labelled as of a later cut-off.

The log's timestamps are the wall clock, so time is moved on the labels' side: their known_at and
ingested_at are written relative to the log's first row, and the cut-offs lie in the future. For
the same reason the later window is a second log directory (the log after the roll-out): two
scoring dates months apart cannot both be today."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from model import synthetic
from service.core.artifacts import ArtifactPaths, read_manifest
from service.core.features import FEATURES
from stack.harness import EXTERNAL_SKIP_REASON
from stack.launcher import ROOT
from tests.helpers import (
    EXTERNAL,
    LONGEST_BUDGET,
    UNLIMITED,
    Client,
    as_transaction,
    past_the_queue,
    start_stack,
    train_small_model,
)

pytestmark = [pytest.mark.skipif(bool(EXTERNAL), reason=EXTERNAL_SKIP_REASON), pytest.mark.timeout(1200)]
DAY = dt.timedelta(days=1)
INGESTION_EVERY = 15  # days between two runs of the label ingestion
BATCH = 500
BATCH_PATH = "/v1/fraud-score/batch"


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def traffic(seed: int, n_rows: int, n_frauds: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated transactions with more frauds than the published share, so that a small run has
    enough of them to train and judge on."""
    X, y = synthetic.generate(n_rows, seed=seed)
    Xf, yf = synthetic.generate(200 * n_frauds, seed=seed + 1)
    X = np.vstack([X, Xf[yf == 1][:n_frauds]])
    y = np.concatenate([y, np.ones(min(n_frauds, int(yf.sum())), dtype=np.int64)])
    order = np.random.default_rng(seed).permutation(len(y))
    return X[order], y[order]


def serve_and_log(model: Path, logs: Path, log_dir: Path, ids: list[str | None], X: np.ndarray, retried, **extra):
    """Scores every row through the stack in batches (a row whose id is None is sent without one),
    then the rows of `retried` once more (a client's retry), and stops the stack (its compactor's
    last pass) and compacts what is left."""
    stack = start_stack(model, logs, PREDICTION_LOG_DIR=str(log_dir), **UNLIMITED, **extra)
    try:
        client = Client(stack.host, stack.port)
        for rows in [range(i, min(i + BATCH, len(X))) for i in range(0, len(X), BATCH)] + [retried]:
            if not rows:
                continue
            items = [
                {**as_transaction(X[i]), **({"transaction_id": ids[i]} if ids[i] is not None else {})} for i in rows
            ]
            # the longest budget a client may ask for, and a retry of a refusal past it (by design)
            reply = past_the_queue(client, "POST", BATCH_PATH, {"transactions": items}, LONGEST_BUDGET)
            assert reply.status == 200, reply.raw[:300]
    finally:
        stack.stop()
    run("service.predlog.compactor", "--once", "--dir", str(log_dir))


def first_scored(log_dir: Path) -> tuple[dt.datetime, str, str]:
    """(the log's first ts, its first and last date partitions)."""
    table = pq.ParquetDataset(str(log_dir)).read(columns=["ts"])
    first, last = pc.min(table.column("ts")).as_py(), pc.max(table.column("ts")).as_py()
    return first, first.date().isoformat(), last.date().isoformat()


def ingest(tmp: Path, labels_dir: Path, log_dir: Path, start: dt.datetime, events: list[tuple[str, str, float, str]]):
    """events: (transaction id, label, days after `start` it became known, source), ingested in
    runs every INGESTION_EVERY days (each run takes what became known since the last one)."""
    runs: dict[int, list] = {}
    for event in events:
        runs.setdefault(int(np.ceil(event[2] / INGESTION_EVERY)), []).append(event)
    for k, batch in sorted(runs.items()):
        ingested_at = start + k * INGESTION_EVERY * DAY
        write_labels_file(tmp / f"labels-{start:%H%M%S%f}-{k}.csv", start, batch)
        out = run(
            "service.offline.labels",
            str(tmp / f"labels-{start:%H%M%S%f}-{k}.csv"),
            "--dir",
            str(labels_dir),
            "--log-dir",
            str(log_dir),
            "--ingested-at",
            ingested_at.isoformat(),
        )
        assert f"appended {len(batch)}, rejected 0" in out, out


def write_labels_file(path: Path, start: dt.datetime, events) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["transaction_id", "label", "known_at", "source"])
        for tid, label, days, source in events:
            writer.writerow([tid, label, (start + days * DAY).isoformat(), source])


def outcomes_of(out: Path, log_dir: Path, labels_dir: Path, first: str, last: str, as_of: dt.datetime) -> dict:
    """`make outcomes`' figures (its JSON file)."""
    printed = run(
        "service.offline.outcomes",
        *("--log-dir", str(log_dir), "--labels-dir", str(labels_dir), "--from", first, "--to", last),
        *("--as-of", as_of.isoformat(), "--bootstrap", "50", "--out", str(out)),
    )
    figures = printed.split("figures: ")[-1].strip()
    return json.loads(Path(figures).read_text())


def chargebacks(ids: list[str | None], y: np.ndarray, rng: np.random.Generator) -> list[tuple[str, str, float, str]]:
    """A chargeback for every fraud with an id, 30 to 120 days after it; a cleared review
    (legitimate) for some others, 5 to 60 days after."""
    events = [(ids[i], "fraud", float(rng.uniform(30, 120)), "chargeback") for i in np.flatnonzero(y) if ids[i]]
    legitimate = [i for i in np.flatnonzero(y == 0) if ids[i]]
    for i in rng.choice(legitimate, size=50, replace=False):
        events.append((ids[i], "legitimate", float(rng.uniform(5, 60)), "review"))
    return events


def test_scored_traffic_labelled_later_trains_a_challenger_judged_on_a_later_window(tmp_path):
    rng = np.random.default_rng(7)
    champion = tmp_path / "champion" / "fraud-model.joblib"
    train_small_model(champion)
    labels_dir = tmp_path / "labels"

    # 1. What production scored: ids for most rows, some without one, some retried.
    X, y = traffic(seed=71, n_rows=2400, n_frauds=160)
    ids: list[str | None] = [f"p1-{i}" for i in range(len(y))]
    for i in rng.choice(np.flatnonzero(y == 0), size=40, replace=False):
        ids[i] = None
    retried = [int(i) for i in rng.choice([i for i in range(len(y)) if ids[i]], size=60, replace=False)]
    log1 = tmp_path / "log"
    serve_and_log(champion, tmp_path / "stack-1", log1, ids, X, retried)
    start, first_date, last_date = first_scored(log1)

    # 2. The labels, in runs as they come in; the earliest chargeback is reversed in a later run.
    events = chargebacks(ids, y, rng)
    reversed_id, _, known, _ = min((e for e in events if e[1] == "fraud"), key=lambda event: event[2])
    events.append((reversed_id, "legitimate", known + INGESTION_EVERY + 1, "case"))
    ingest(tmp_path, labels_dir, log1, start, events)

    # How the champion really did, as of the same cut-off (make outcomes).
    as_of = start + 125 * DAY
    outcomes = outcomes_of(tmp_path / "outcomes-1", log1, labels_dir, first_date, last_date, as_of)
    assert [week["model_version"] for week in outcomes["weeks"]] == ["test-3"] * len(outcomes["weeks"])
    labelled_frauds = sum(week["frauds_weighted"] for week in outcomes["weeks"])
    assert labelled_frauds == int(sum(1 for tid, label in zip(ids, y, strict=True) if tid and label)) - 1
    assert all(week["maturity"] == 1.0 for week in outcomes["weeks"])

    # 3. The training set as of a cut-off when every window has closed; then a late run ingested
    # after the cut-off (a fraud on a legitimate row, another reversal) must change nothing.
    frame = ["--dir", str(log1), "--labels-dir", str(labels_dir), "--from", first_date, "--to", last_date]
    built = tmp_path / "training.parquet"
    out = run("service.offline.training_set", *frame, "--as-of", as_of.isoformat(), "--output", str(built))
    assert f"training set: {built}" in out
    before = pq.read_table(built)
    legitimate_id = next(tid for tid, label in zip(ids, y, strict=True) if tid and not label)
    fraud_id = next(tid for tid, label, _, _ in events if label == "fraud" and tid != reversed_id)
    late = [(legitimate_id, "fraud", 126, "chargeback"), (fraud_id, "legitimate", 126, "case")]
    write_labels_file(tmp_path / "late.csv", start, late)
    run(
        "service.offline.labels",
        str(tmp_path / "late.csv"),
        "--dir",
        str(labels_dir),
        "--ingested-at",
        (as_of + DAY).isoformat(),
    )
    out = run("service.offline.training_set", *frame, "--as-of", as_of.isoformat(), "--output", str(built))
    assert pq.read_table(built).equals(before)
    meta = json.loads(built.with_suffix(".json").read_text())

    # The table is what was scored, one row per transaction, labelled as the bank said by then.
    truth = {tid: int(label) for tid, label in zip(ids, y, strict=True) if tid}
    truth[reversed_id] = 0
    rows = before.to_pylist()
    by_id = {r["transaction_id"]: r for r in rows if r["transaction_id"]}
    assert len(by_id) == len(truth) and len(rows) == len(truth) + ids.count(None)
    assert {tid: r["Class"] for tid, r in by_id.items()} == truth
    i = retried[0]
    assert [by_id[ids[i]][name] for name in FEATURES] == X[i].tolist()  # the features exactly as scored
    counts = meta["counts"]
    assert counts["retries_dropped"] == len(retried) and counts["without_transaction_id"] == ids.count(None)
    assert (counts["immature_dropped"], counts["frauds"], counts["rows"]) == (0, sum(truth.values()), len(rows))
    assert counts["scored"] == len(y) + len(retried)

    # As of 60 days, no window has closed: every row is immature.
    early = tmp_path / "early.parquet"
    run("service.offline.training_set", *frame, "--as-of", (start + 60 * DAY).isoformat(), "--output", str(early))
    early_counts = json.loads(early.with_suffix(".json").read_text())["counts"]
    assert (early_counts["rows"], early_counts["immature_dropped"]) == (0, len(rows))

    # 4. A challenger trained on it, its threshold chosen from cost, the manifest naming its data.
    challenger = tmp_path / "challenger" / "fraud-model.joblib"
    run("model.train", "--from-log", str(built), "--output", str(challenger), "--trees", "30", "--version", "from-log")
    manifest = read_manifest(ArtifactPaths.for_model(challenger).manifest)
    assert manifest["training_set"]["as_of"] == as_of.isoformat()
    assert manifest["training_set"]["counts"] == counts
    assert manifest["training_set"]["from"] == first_date and manifest["training_set"]["to"] == last_date
    assert manifest["threshold"]["chosen_by"] == "least expected cost on the held-out split"
    assert manifest["data_source"].startswith(f"prediction log {log1}")

    # 5. Served beside the champion; what it scores after is labelled in its turn.
    X2, y2 = traffic(seed=81, n_rows=2400, n_frauds=160)
    ids2: list[str | None] = [f"p2-{i}" for i in range(len(y2))]
    log2 = tmp_path / "log-after"
    serve_and_log(champion, tmp_path / "stack-2", log2, ids2, X2, [], CHALLENGER_MODEL_PATH=str(challenger))
    start2, first2, last2 = first_scored(log2)
    ingest(tmp_path, labels_dir, log2, start2, chargebacks(ids2, y2, rng))
    logged = pq.ParquetDataset(str(log2)).read(columns=["challenger_version"]).column(0).to_pylist()
    assert set(logged) == {"from-log"}
    outcomes = outcomes_of(tmp_path / "outcomes-2", log2, labels_dir, first2, last2, start2 + 125 * DAY)
    assert {c["version"] for week in outcomes["weeks"] for c in week["challengers"]} == {"from-log"}

    # 6. The evaluation on that later window, both models, the same labelled rows.
    report = tmp_path / "evaluation" / "report.html"
    run(
        "model.evaluate",
        "--champion",
        str(champion),
        "--challenger",
        str(challenger),
        "--from-log",
        str(log2),
        "--labels-dir",
        str(labels_dir),
        "--from",
        first2,
        "--to",
        last2,
        "--as-of",
        (start2 + 125 * DAY).isoformat(),
        "--bootstrap",
        "50",
        "--output",
        str(report),
    )
    figures = json.loads(report.with_suffix(".json").read_text())
    assert (figures["rows"], figures["frauds"]) == (len(y2), int(y2.sum()))
    assert figures["models"]["challenger"]["version"] == "from-log"
    assert figures["models"]["champion"]["version"] == "test-3"
    assert figures["verdict"] and "prediction log" in figures["source"]
