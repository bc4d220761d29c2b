"""`make outcomes` (service/offline/outcomes.py) on a generated prediction log and label table, its
figures checked against a second path written here independently: pandas joins by brute force and
scikit-learn's metrics. Also maturity, immature weeks never judged, the page (and its screenshot),
and bad inputs."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import precision_score, recall_score

from service.offline import labels, outcomes
from service.predlog.record import arrow_schema
from stack.launcher import ROOT
from tests.helpers import screenshot

UTC = dt.UTC
START = dt.datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: ISO week 2026-W02
DAYS = 84
AS_OF = dt.datetime(2026, 6, 1, tzinfo=UTC)
THRESHOLD = 40
REVIEW_COST = 7.0


def generate(root: Path, rows: int = 6000, seed: int = 5) -> tuple[Path, Path]:
    """A log of `rows` scorings over DAYS days (two champion versions, a challenger on some rows,
    sampled rows with weights, retried transactions, rows without an id) in the log's layout, and a
    label table ingested over time (delays of 30 to 120 days, some labels superseded later, some
    ingested after AS_OF, some transactions never labelled)."""
    rng = np.random.default_rng(seed)
    log_dir, labels_dir = root / "log", root / "labels"
    # Two busy hours a day (10:00 to 12:00): few files, so that the brute-force path reads them quickly.
    day = np.sort(rng.integers(0, DAYS, rows)) * 86_400 * 10**6
    ts = START + pd.to_timedelta(day + rng.integers(10 * 3600 * 10**6, 12 * 3600 * 10**6, rows), unit="us")
    ts = ts.sort_values()
    fraud = rng.random(rows) < 0.08
    probability = np.clip(np.where(fraud, rng.beta(4, 3, rows), rng.beta(1, 6, rows)), 0, 1)
    score = np.round(100 * probability).astype(np.int16)
    is_fraud = score >= THRESHOLD
    version = np.where(ts < START + dt.timedelta(days=42), "rf-a", "rf-b")
    challenger = rng.random(rows) < 0.5
    challenger_probability = np.clip(probability + rng.normal(0, 0.08, rows), 0, 1)
    ids = np.array([f"tx-{i}" for i in range(rows)], dtype=object)
    retried = rng.choice(np.arange(1, rows), size=rows // 50, replace=False)
    ids[retried] = ids[retried - 1]  # the same transaction scored again, later
    ids[rng.choice(rows, size=rows // 100, replace=False)] = None
    sampled = ~is_fraud & (rng.random(rows) < 0.3)
    weight = np.where(sampled, 4.0, 1.0)
    schema = arrow_schema()
    columns = {f.name: pa.nulls(rows, f.type) for f in schema}
    ts_us = (ts.asi8 // 1000).astype(np.int64)
    columns.update(
        ts=pa.array(ts_us, pa.timestamp("us", tz="UTC")),
        ts_ns=pa.array(ts_us * 1000),
        transaction_id=pa.array(ids, pa.string()),
        model_version=pa.array(version),
        threshold=pa.array(np.full(rows, THRESHOLD, np.int16)),
        probability=pa.array(probability),
        fraud_score=pa.array(score),
        is_fraud=pa.array(is_fraud),
        challenger_version=pa.array(np.where(challenger, "rf-c", None), pa.string()),
        challenger_probability=pa.array(np.where(challenger, challenger_probability, np.nan), mask=~challenger),
        challenger_is_fraud=pa.array(np.round(100 * challenger_probability) >= 35, mask=~challenger),
        sample_weight=pa.array(weight),
        Amount=pa.array(np.round(rng.gamma(2, 40, rows), 2)),
    )
    table = pa.table(columns, schema=schema)
    hours = ts.floor("h")
    for hour in np.unique(hours):
        rows_in = np.flatnonzero(hours == hour)
        when = pd.Timestamp(hour)
        target = log_dir / f"date={when:%Y-%m-%d}" / f"hour={when:%H}" / "part-0.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(rows_in), target, compression="zstd")

    # Labels: 85 % of the transactions, known 30 to 120 days after scoring (frauds sooner), ingested
    # the next day; a tenth of the frauds first cleared by a review and later charged back.
    labelled = (rng.random(rows) < 0.85) & (ids != None)  # noqa: E711 (elementwise)
    delay = np.where(fraud, rng.uniform(30, 90, rows), rng.uniform(30, 120, rows))
    known = ts + pd.to_timedelta(np.round(delay * 86_400 * 10**6), unit="us")
    ingested = known.floor("D") + pd.Timedelta(hours=20)
    amount = np.where(rng.random(rows) < 0.3, np.round(rng.gamma(2, 50, rows), 2), np.nan)
    source = np.where(fraud, "chargeback", "review")
    flipped = labelled & fraud & (rng.random(rows) < 0.1)
    frame = pd.DataFrame(
        {
            "transaction_id": ids,
            "is_fraud": fraud,
            "known_at": known,
            "ingested_at": ingested,
            "source": source,
            "amount": amount,
        }
    )[labelled]
    early = frame[flipped[labelled]].copy()
    early["is_fraud"], early["source"], early["amount"] = False, "review", np.nan
    early["known_at"] = early["known_at"] - pd.Timedelta(days=20)
    early["ingested_at"] = early["ingested_at"] - pd.Timedelta(days=20)
    everything = pd.concat([frame, early]).drop_duplicates(["transaction_id", "ingested_at"], keep="first")
    for when, part in everything.groupby("ingested_at"):
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
        labels.append(table.cast(labels.LABEL_SCHEMA), labels_dir, when.to_pydatetime())
    return log_dir, labels_dir


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("outcomes"))


def brute_force(log_dir: Path, labels_dir: Path, first: str, last: str, as_of: dt.datetime) -> pd.DataFrame:
    """The join written the plain way: every file read whole, filters and the latest label in pandas."""
    log = pd.concat(
        pd.read_parquet(p).assign(date=p.parent.parent.name.split("=")[1]) for p in sorted(log_dir.rglob("*.parquet"))
    )
    log = log[(log["date"] >= first) & (log["date"] <= last)]
    log = log.sort_values(["ts", "ts_ns"])
    with_id = log[log["transaction_id"].notna()].drop_duplicates("transaction_id", keep="last")
    log = pd.concat([with_id, log[log["transaction_id"].isna()]])
    table = pd.concat(pd.read_parquet(p) for p in sorted(labels_dir.rglob("*.parquet")))
    table = table[table["ingested_at"] <= pd.Timestamp(as_of)]
    table = table.sort_values(["ingested_at", "known_at", "is_fraud"]).drop_duplicates("transaction_id", keep="last")
    joined = log.merge(table, how="left", on="transaction_id", suffixes=("", "_label"))
    joined["label"] = joined["is_fraud_label"]
    iso = joined["ts"].dt.isocalendar()
    joined["week"] = iso["year"].astype(str) + "-W" + iso["week"].astype(str).str.zfill(2)
    joined["cost_amount"] = joined["amount"].fillna(joined["Amount"])
    return joined


def expected_cost(y: np.ndarray, alert: np.ndarray, amount: np.ndarray, w: np.ndarray) -> float:
    return float(((w * amount)[y & ~alert].sum() + REVIEW_COST * w[alert].sum()) / w.sum() * 1000)


def independent_maturity(joined: pd.DataFrame, as_of: dt.datetime) -> pd.Series:
    window = outcomes.WINDOW_DAYS * 86_400
    seconds = (joined["ts"] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    age = np.minimum(as_of.timestamp() - seconds, window)
    delay = (joined["known_at"] - joined["ts"]).dt.total_seconds()
    labelled = joined["label"].notna() & (delay <= window)
    closed = labelled & (age >= window)
    chosen = np.sort(np.maximum(delay[closed if closed.any() else labelled].to_numpy(), 0))
    return pd.Series(np.searchsorted(chosen, age.to_numpy(), side="right") / len(chosen), index=joined.index)


@pytest.fixture(scope="module")
def figures(generated):
    log_dir, labels_dir = generated
    return outcomes.outcomes(
        log_dir, labels_dir, dt.date(2026, 1, 5), dt.date(2026, 3, 29), AS_OF, REVIEW_COST, n_boot=300
    )


def test_figures_agree_with_sklearn_on_a_brute_force_join(generated, figures):
    log_dir, labels_dir = generated
    joined = brute_force(log_dir, labels_dir, "2026-01-05", "2026-03-29", AS_OF)
    joined["maturity"] = independent_maturity(joined, AS_OF)
    assert figures["rows"] == len(joined)
    weeks = {(w["model_version"], w["week"]): w for w in figures["weeks"]}
    assert set(weeks) == set(joined.groupby(["model_version", "week"]).groups)
    for (version, week), rows in joined.groupby(["model_version", "week"]):
        got = weeks[(version, week)]
        w = rows["sample_weight"].to_numpy()
        assert got["rows"] == len(rows)
        assert got["rows_weighted"] == pytest.approx(w.sum())
        assert got["alert_rate_all_rows"] == pytest.approx(np.average(rows["is_fraud"], weights=w))
        assert got["maturity"] == pytest.approx(np.average(rows["maturity"], weights=w))
        lab = rows[rows["label"].notna()]
        assert got["labelled"] == len(lab)
        y, alert, lw = lab["label"].astype(bool).to_numpy(), lab["is_fraud"].to_numpy(), lab["sample_weight"].to_numpy()
        champion = got["champion"]
        assert champion["recall"] == pytest.approx(recall_score(y, alert, sample_weight=lw))
        assert champion["precision"] == pytest.approx(precision_score(y, alert, sample_weight=lw))
        assert champion["alert_rate"] == pytest.approx(np.average(alert, weights=lw))
        assert champion["cost_per_1000"] == pytest.approx(expected_cost(y, alert, lab["cost_amount"].to_numpy(), lw))
        for name in ("recall", "precision", "alert_rate", "cost_per_1000"):
            low, high = champion[f"{name}_ci"]
            assert low <= champion[name] <= high and low < high
        both = lab[lab["challenger_is_fraud"].notna()]
        (c,) = got["challengers"]
        assert c["version"] == "rf-c" and c["labelled"] == len(both)
        y2, w2, amount2 = both["label"].astype(bool).to_numpy(), both["sample_weight"].to_numpy(), both["cost_amount"]
        theirs, ours = both["challenger_is_fraud"].astype(bool).to_numpy(), both["is_fraud"].to_numpy()
        assert c["challenger"]["recall"] == pytest.approx(recall_score(y2, theirs, sample_weight=w2))
        assert c["challenger"]["precision"] == pytest.approx(precision_score(y2, theirs, sample_weight=w2))
        assert c["champion"]["recall"] == pytest.approx(recall_score(y2, ours, sample_weight=w2))
        difference = expected_cost(y2, theirs, amount2.to_numpy(), w2) - expected_cost(y2, ours, amount2.to_numpy(), w2)
        assert c["cost_difference_per_1000"] == pytest.approx(difference)
        assert c["cost_difference_ci"][0] <= difference <= c["cost_difference_ci"][1]

    for version, bands in figures["calibration"].items():
        lab = joined[(joined["model_version"] == version) & joined["label"].notna()]
        band = np.minimum(lab["fraud_score"] // 10, 9)
        for b in bands:
            rows = lab[band == int(b["band"].split("-")[0]) // 10]
            assert b["labelled"] == len(rows)
            assert b["predicted"] == pytest.approx(np.average(rows["probability"], weights=rows["sample_weight"]))
            assert b["observed"] == pytest.approx(
                np.average(rows["label"].astype(float), weights=rows["sample_weight"])
            )


def test_maturity_rises_with_time_and_immature_weeks_are_not_judged(generated, figures):
    log_dir, labels_dir = generated
    maturity = [w["maturity"] for w in figures["weeks"] if w["model_version"] == "rf-a"]
    assert maturity == sorted(maturity, reverse=True)  # older weeks are riper
    judged = [w for w in figures["weeks"] if w["maturity"] >= outcomes.MATURITY_BAR]
    immature = [w for w in figures["weeks"] if w["maturity"] < outcomes.MATURITY_BAR]
    assert judged and immature
    for w in immature:
        assert re.fullmatch(r"immature \(\d+ % of labels in\): not judged", w["verdict"]), w["verdict"]
    for w in judged:
        assert re.fullmatch(
            r"on the [\d,]+ labelled rows both scored, champion cost [\d.]+ per 1,000, challenger rf-c [\d.]+, "
            r"(difference inside the interval: keep watching|higher beyond the interval: keep the champion"
            r"|lower beyond the interval: the challenger is cheaper)",
            w["verdict"],
        ), w["verdict"]
    # Later, every week is riper; before any label was ingested, none is judged.
    later = outcomes.outcomes(
        log_dir, labels_dir, dt.date(2026, 1, 5), dt.date(2026, 3, 29), AS_OF + dt.timedelta(days=60), REVIEW_COST, 50
    )
    for before, after in zip(figures["weeks"], later["weeks"], strict=True):
        assert after["maturity"] >= before["maturity"] and after["labelled"] >= before["labelled"]
    early = outcomes.outcomes(log_dir, labels_dir, dt.date(2026, 1, 5), dt.date(2026, 3, 29), START, REVIEW_COST, 50)
    assert {w["verdict"] for w in early["weeks"]} == {"no labels yet: not judged"}


def test_point_in_time_the_labels_ingested_later_are_not_seen(generated, figures):
    log_dir, labels_dir = generated
    joined = brute_force(log_dir, labels_dir, "2026-01-05", "2026-03-29", AS_OF)
    everything = brute_force(log_dir, labels_dir, "2026-01-05", "2026-03-29", AS_OF + dt.timedelta(days=365))
    assert sum(w["labelled"] for w in figures["weeks"]) == joined["label"].notna().sum()
    assert joined["label"].notna().sum() < everything["label"].notna().sum()


def test_the_date_range_reads_only_its_partitions(generated):
    log_dir, labels_dir = generated
    one_week = outcomes.outcomes(log_dir, labels_dir, dt.date(2026, 1, 12), dt.date(2026, 1, 18), AS_OF, n_boot=20)
    assert {w["week"] for w in one_week["weeks"]} == {"2026-W03"}


def test_the_command_writes_the_page_and_the_json_and_prints_their_paths(generated, tmp_path):
    log_dir, labels_dir = generated
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.offline.outcomes",
            "--from=2026-01-05",
            "--to=2026-03-29",
            f"--as-of={AS_OF.isoformat()}",
            f"--review-cost={REVIEW_COST}",
            "--bootstrap=200",
            f"--out={out}",
            f"--log-dir={log_dir}",
            f"--labels-dir={labels_dir}",
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "ENV_FILE": str(tmp_path / "no.env")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = Path(re.search(r"^report: (.+)$", run.stdout, re.M).group(1))
    data = json.loads(Path(re.search(r"^figures: (.+)$", run.stdout, re.M).group(1)).read_text())
    assert report.parent == out.resolve()
    page = report.read_text()
    assert not re.search(r"(src|href)=\"https?:", page)  # opens offline: nothing fetched
    assert "<svg" in page and "<script" not in page
    for week in data["weeks"]:
        assert week["verdict"].replace("'", "&#x27;") in page
    shot = screenshot(report, "outcomes-report.png", tmp_path)
    assert shot.stat().st_size > 20_000


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from=2026-02-01", "--to=2026-01-01"], "is after"),
        (["--from=yesterday"], "is not a date"),
        (["--as-of=soon"], "is not an ISO date"),
        (["--review-cost=-1"], "--review-cost must be"),
    ],
)
def test_bad_arguments_are_one_line(generated, tmp_path, args, says):
    log_dir, labels_dir = generated
    run = subprocess.run(
        [sys.executable, "-m", "service.offline.outcomes", f"--log-dir={log_dir}", f"--labels-dir={labels_dir}", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "ENV_FILE": str(tmp_path / "no.env")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and says in run.stderr, run.stderr


def test_no_log_is_one_line_and_no_labels_is_no_labels_yet(tmp_path, generated):
    log_dir, _ = generated
    env = {"PATH": "/usr/bin:/bin", "ENV_FILE": str(tmp_path / "no.env")}
    command = [sys.executable, "-m", "service.offline.outcomes", f"--out={tmp_path / 'out'}"]
    run = subprocess.run(
        [*command, f"--log-dir={tmp_path / 'none'}", f"--labels-dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.startswith("no prediction log at ") and len(run.stderr.splitlines()) == 1
    figures = outcomes.outcomes(log_dir, tmp_path / "no-labels", dt.date(2026, 1, 5), dt.date(2026, 1, 11), AS_OF)
    assert [w["verdict"] for w in figures["weeks"]] == ["no labels yet: not judged"]
    assert figures["weeks"][0]["champion"]["recall"] is None and figures["calibration"] == {}


def test_the_bootstrap_drawn_by_kind_of_row_has_the_row_bootstraps_moments():
    """Rows alike are drawn as one Poisson(count): each resampled sum must still have the mean
    (sum of the rows' parts) and variance (sum of their squares) of Poisson(1) weights per row."""
    rng = np.random.default_rng(3)
    rows = np.vstack([np.tile([1.0, 0.0, 1.0], (700, 1)), np.tile([4.0, 0.0, 0.0], (250, 1)), rng.random((50, 3))])
    kinds, counts = np.unique(rows, axis=0, return_counts=True)
    sums = outcomes.resampled_sums(kinds, counts, 20_000, np.random.default_rng(9))
    assert sums.shape == (20_000, 3)
    np.testing.assert_allclose(sums.mean(axis=0), rows.sum(axis=0), rtol=0.01)
    np.testing.assert_allclose(sums.var(axis=0), (rows**2).sum(axis=0), rtol=0.05)
