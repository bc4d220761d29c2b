"""A large prediction log and its labels, generated: what the outcomes commands are measured on
(`python -m perf.outcomes_scale`) and what the Spark and DuckDB outcomes are compared on in the tests.

    python -m perf.outcomes_log OUT_DIR [--rows 10000000] [--weeks 26] [--end 2026-12-07] [--seed 7]

writes, in bounded memory (one day of rows at a time, numpy and pyarrow, no loop over rows):
- OUT_DIR/prediction-log/date=YYYY-MM-DD/hour=HH/part-generated-<day>.parquet: the log's layout and
  schema (service/predlog/record.py), zstd, one file per hour;
- OUT_DIR/labels.parquet: the input of `make labels IN=…` (transaction_id, label, known_at, source,
  amount) with the labels known by the end of the window.

The traffic: `--weeks` weeks of days with quieter nights; features from model/synthetic.py at a
fraud rate of 0.5 %; a champion replaced halfway (the later model was the challenger on every row
for the four weeks before, and a third version is the challenger for the last six); two weeks logged
at PREDICTION_LOG_SAMPLE=0.25 (rows the log keeps always have weight 1, the others 4); 0.3 % of
transactions scored twice (a retry seconds later). The probabilities are drawn, not scored (a
logit-normal per class: `make verify-log` does not hold on this log), since only the decisions and
their outcomes matter here. Labels: frauds by chargeback (delay mostly 30 to 120 days, up to 150) or
case (0 to 14 days); most legitimate rows by a review (10 to 120 days); 1 % of frauds first cleared
by a review then charged back, 0.5 % of fraud labels reversed by a later case (superseded labels);
0.2 % of labels for transaction ids the log has never seen; labels not yet known at the end left out."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.synthetic import generate
from service.core.features import FEATURES
from service.predlog.record import SCHEMA_VERSION, arrow_schema

DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
SECOND_NS = 10**9
LABEL_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("label", pa.string()),
        ("known_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("amount", pa.float64()),
    ]
)
# Night hours (1 h to 7 h) see a third of the daytime traffic, as in model/synthetic.py.
HOUR_WEIGHTS = (
    np.where((np.arange(24) >= 1) & (np.arange(24) < 7), 0.3, 1.0)
    / np.where((np.arange(24) >= 1) & (np.arange(24) < 7), 0.3, 1.0).sum()
)


@dataclasses.dataclass(frozen=True)
class Model:
    version: str
    sha256: str
    threshold: int
    fraud_logit: float  # the mean logit of a fraud; a better model puts frauds higher


CHAMPION_BEFORE = Model("rf-2026-05-04", "a1" * 32, 50, 1.0)
CHAMPION_AFTER = Model("rf-2026-08-24", "b2" * 32, 45, 1.3)
LATE_CHALLENGER = Model("rf-2026-11-02", "c3" * 32, 45, 1.5)


@dataclasses.dataclass(frozen=True)
class Traffic:
    rows: int = 10_000_000
    weeks: int = 26
    end: datetime.date = datetime.date(2026, 12, 7)  # the first day after the window: "today"
    seed: int = 7
    fraud_rate: float = 0.005
    sample_rate: float = 0.25
    retry_share: float = 0.003
    sampled_days: tuple[int, int] = (21, 35)  # the days logged at sample_rate: [first, last)
    labels_until: datetime.date | None = None  # labels known before this day are written (default: end)

    @property
    def days(self) -> int:
        return 7 * self.weeks

    @property
    def start(self) -> datetime.date:
        return self.end - datetime.timedelta(days=self.days)

    def models(self, day: int) -> tuple[Model, Model | None]:
        """(champion, challenger) on day `day` of the window."""
        switch = self.days // 2
        champion = CHAMPION_BEFORE if day < switch else CHAMPION_AFTER
        if switch - 28 <= day < switch:
            return champion, CHAMPION_AFTER
        if day >= self.days - 42:
            return champion, LATE_CHALLENGER
        return champion, None

    def sampled(self, day: int) -> bool:
        return self.sampled_days[0] <= day < self.sampled_days[1]

    def rows_on(self, day: int) -> int:
        """Scored rows a day (before sampling): the total spread evenly, a sampled day's scaled up
        so that the logged total is about `rows`."""
        kept = self.sample_rate + (1 - self.sample_rate) * 0.01  # ~1 % of rows are always kept
        sampled_days = sum(self.sampled(d) for d in range(self.days))
        logged_days = self.days - sampled_days * (1 - kept)
        return int(np.ceil(self.rows / logged_days * (1 / kept if self.sampled(day) else 1)))


def _strings(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _logit_probability(rng: np.random.Generator, fraud: np.ndarray, model: Model, shared: np.ndarray) -> np.ndarray:
    """P(fraud) from a logit-normal per class; `shared` is noise common to every model's score of a row."""
    logit = (
        np.where(fraud, model.fraud_logit, -4.5) + np.where(fraud, 1.6, 1.2) * shared + rng.normal(0, 0.6, fraud.size)
    )
    return 1.0 / (1.0 + np.exp(-logit))


def _decisions(probability: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    score = np.floor(100.0 * probability + 0.5).astype(np.int16)
    return score, score >= threshold


def day_tables(traffic: Traffic, day: int) -> tuple[pa.Table, pa.Table]:
    """(the day's log rows sorted by ts, the labels of the day's transactions known by the end)."""
    rng = np.random.default_rng([traffic.seed, day])
    n = traffic.rows_on(day)
    X, y = generate(n, seed=traffic.seed * 100_003 + day, fraud_rate=traffic.fraud_rate)
    fraud = y == 1
    day_start = (
        np.datetime64(traffic.start, "ns").astype(np.int64) + day * DAY_NS
    )  # the epoch's nanoseconds at 00:00 UTC
    hours = np.repeat(np.arange(24), rng.multinomial(n, HOUR_WEIGHTS))
    ts_ns = day_start + hours * HOUR_NS + rng.integers(0, HOUR_NS, n)
    tx_numbers = np.int64(day) * 10_000_000 + np.arange(n)

    champion, challenger = traffic.models(day)
    shared = rng.normal(0, 1, n)
    probability = _logit_probability(rng, fraud, champion, shared)
    score, alert = _decisions(probability, champion.threshold)
    if challenger is not None:
        challenger_probability = _logit_probability(rng, fraud, challenger, shared)
        challenger_alert = _decisions(challenger_probability, challenger.threshold)[1]
    else:
        challenger_probability = np.full(n, np.nan)
        challenger_alert = np.zeros(n, dtype=bool)
    ood = rng.uniform(size=n) < 0.003

    keep = np.ones(n, dtype=bool)
    weight = np.ones(n)
    if traffic.sampled(day):  # the log's rule: flagged rows and disagreements are always kept
        always = alert | ood | ((challenger_alert != alert) & (challenger is not None))
        keep = always | (rng.uniform(size=n) < traffic.sample_rate)
        weight = np.where(always, 1.0, 1.0 / traffic.sample_rate)

    # Retries: the same transaction scored again seconds later (same features, same answer).
    retried = np.flatnonzero(keep & (rng.uniform(size=n) < traffic.retry_share))
    index = np.concatenate([np.flatnonzero(keep), retried])
    ts_all = np.concatenate(
        [
            ts_ns[keep],
            np.minimum(ts_ns[retried] + rng.integers(1, 30, retried.size) * SECOND_NS, day_start + DAY_NS - 1),
        ]
    )
    order = np.argsort(ts_all, kind="stable")
    index, ts_all = index[order], ts_all[order]
    m = index.size

    columns = {
        "schema_version": pa.array(np.full(m, SCHEMA_VERSION, dtype=np.int16)),
        "ts": pa.array(ts_all // 1000, pa.timestamp("us", tz="UTC")),
        "ts_ns": pa.array(ts_all),
        "request_id": _strings("req-", rng.integers(0, 2**62, m)),
        "row": pa.array(np.zeros(m, dtype=np.int32)),
        "route": pa.array(np.repeat("/v1/fraud-score", m)),
        "explained": pa.array(np.zeros(m, dtype=bool)),
        "transaction_id": _strings("tx-", tx_numbers[index]),
        "key_id": pa.array(np.repeat("5d41402abc4b", m)),
        "model_version": pa.array(np.repeat(champion.version, m)),
        "model_sha256": pa.array(np.repeat(champion.sha256, m)),
        "threshold": pa.array(np.full(m, champion.threshold, dtype=np.int16)),
        "probability": pa.array(probability[index]),
        "fraud_score": pa.array(score[index]),
        "is_fraud": pa.array(alert[index]),
        "ood_warning": pa.array(ood[index]),
        "ood_features": pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(ood[index])]).astype(np.int32)),
            pa.array(np.repeat("Amount", int(ood[index].sum())), pa.string()),
        ),
        "reasons": pa.nulls(m, arrow_schema().field("reasons").type),
        "challenger_version": pa.nulls(m, pa.string())
        if challenger is None
        else pa.array(np.repeat(challenger.version, m)),
        "challenger_probability": pa.array(challenger_probability[index], from_pandas=True),
        "challenger_is_fraud": pa.nulls(m, pa.bool_()) if challenger is None else pa.array(challenger_alert[index]),
        "sample_weight": pa.array(weight[index]),
        "deadline": pa.array(ts_all // 1000 + 200_000, pa.timestamp("us", tz="UTC")),
        "service_us": pa.array(rng.integers(120, 900, m)),
        "client_address": pa.nulls(m, pa.string()),
        **{name: pa.array(X[index, i]) for i, name in enumerate(FEATURES)},
    }
    schema = arrow_schema()
    for field in schema:  # what these requests did not carry (e.g. no trace context): null
        columns.setdefault(field.name, pa.nulls(m, field.type))
    log = pa.Table.from_pydict(columns, schema=schema)
    return log, _labels(traffic, rng, tx_numbers[keep], ts_ns[keep], fraud[keep], X[keep, FEATURES.index("Amount")])


def _labels(
    traffic: Traffic, rng: np.random.Generator, tx: np.ndarray, ts_ns: np.ndarray, fraud: np.ndarray, amount: np.ndarray
) -> pa.Table:
    """The labels of the day's logged transactions (one per transaction, plus the superseded ones),
    as they arrive: a fraud by chargeback or case, most legitimate rows by a review."""
    n = tx.size
    days = np.where(
        rng.uniform(size=n) < 0.25, rng.uniform(0, 14, n), np.clip(rng.gamma(6.0, 10.0, n), 1, 150)
    )  # frauds: a quarter by case, the rest by chargeback
    days = np.where(fraud, days, rng.uniform(10, 120, n))
    source = np.where(fraud, np.where(days < 14, "case", "chargeback"), "review")
    labelled = fraud | (rng.uniform(size=n) < 0.9)
    parts = [(labelled, days, fraud, source, np.where(fraud, amount, np.nan))]
    early = fraud & (rng.uniform(size=n) < 0.01)  # cleared by a review, charged back later
    parts.append((early, days * rng.uniform(0, 1, n), np.zeros(n, bool), np.repeat("review", n), np.full(n, np.nan)))
    reversed_ = fraud & (rng.uniform(size=n) < 0.005)  # charged back, then found legitimate
    parts.append((reversed_, days + rng.uniform(5, 30, n), np.zeros(n, bool), np.repeat("case", n), np.full(n, np.nan)))

    end_ns = np.datetime64(traffic.labels_until or traffic.end, "ns").astype(np.int64)
    tables = []
    for rows, delay_days, label, src, amt in parts:
        known = ts_ns + (delay_days * DAY_NS).astype(np.int64)
        rows = rows & (known < end_ns)
        tables.append(_label_table(_strings("tx-", tx[rows]), label[rows], known[rows], src[rows], amt[rows]))
    unknown = rng.uniform(size=n) < 0.002  # ids the log has never seen
    tables.append(
        _label_table(
            _strings("tx-unseen-", tx[unknown]),
            rng.uniform(size=int(unknown.sum())) < 0.5,
            np.minimum(ts_ns[unknown] + 30 * DAY_NS, end_ns - 1),
            np.repeat("chargeback", int(unknown.sum())),
            np.full(int(unknown.sum()), np.nan),
        )
    )
    return pa.concat_tables(tables)


def _label_table(
    tx: pa.Array, fraud: np.ndarray, known_ns: np.ndarray, source: np.ndarray, amount: np.ndarray
) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "transaction_id": tx,
            "label": pa.array(np.where(fraud, "fraud", "legitimate")),
            "known_at": pa.array(known_ns // 1000, pa.timestamp("us", tz="UTC")),
            "source": pa.array(source.astype(str)),
            "amount": pa.array(amount, from_pandas=True),
        },
        schema=LABEL_SCHEMA,
    )


def write(traffic: Traffic, out: Path, log_dir: Path | None = None, labels_path: Path | None = None) -> dict[str, int]:
    """Writes the log and the label file; returns the counts. One day's rows in memory at a time."""
    log_dir = log_dir or out / "prediction-log"
    labels_path = labels_path or out / "labels.parquet"
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"log_rows": 0, "log_files": 0, "label_rows": 0}
    with pq.ParquetWriter(labels_path, LABEL_SCHEMA, compression="zstd") as labels_out:
        for day in range(traffic.days):
            log, labels = day_tables(traffic, day)
            date = traffic.start + datetime.timedelta(days=day)
            hour = pc.hour(log["ts"]).to_numpy()
            bounds = np.searchsorted(hour, np.arange(25))  # ts is sorted: each hour is a slice
            for h in range(24):
                part = log.slice(bounds[h], bounds[h + 1] - bounds[h])
                if part.num_rows == 0:
                    continue
                directory = log_dir / f"date={date.isoformat()}" / f"hour={h:02d}"
                directory.mkdir(parents=True, exist_ok=True)
                pq.write_table(part, directory / f"part-generated-{day:04d}.parquet", compression="zstd")
                counts["log_files"] += 1
            counts["log_rows"] += log.num_rows
            labels_out.write_table(labels)
            counts["label_rows"] += labels.num_rows
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.outcomes_log", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for prediction-log/ and labels.parquet")
    parser.add_argument("--rows", type=int, default=Traffic.rows, help="logged rows, about (default 10,000,000)")
    parser.add_argument("--weeks", type=int, default=Traffic.weeks)
    parser.add_argument("--end", type=datetime.date.fromisoformat, default=Traffic.end, help="the day after the window")
    parser.add_argument("--seed", type=int, default=Traffic.seed)
    args = parser.parse_args(argv)
    traffic = Traffic(rows=args.rows, weeks=args.weeks, end=args.end, seed=args.seed)
    counts = write(traffic, args.out)
    print(
        f"{counts['log_rows']:,} log rows in {counts['log_files']:,} files, {traffic.start} to {traffic.end} "
        f"(exclusive) -> {args.out / 'prediction-log'}; {counts['label_rows']:,} labels -> {args.out / 'labels.parquet'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
