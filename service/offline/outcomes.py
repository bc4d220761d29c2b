"""How each model really did: the prediction log joined to the labels known at a cut-off, by model
version and ISO week of scoring (`make outcomes`).

    python -m service.offline.outcomes [--from 2026-01-01] [--to 2026-03-31] [--as-of 2026-06-01T00:00]
        [--review-cost 5] [--out .run/outcomes] [--log-dir DIR] [--labels-dir DIR]

The figures, each weighted by the log's sample_weight (a sampled row stands for 1/its chance):
rows scored; how many have a label known at AS_OF (`labels_as_of`); the week's maturity (the share
of the labels a WINDOW_DAYS window will eventually bring that are in by AS_OF, from the delays
between scoring and known_at seen so far); recall, precision, alert rate and cost per 1,000 rows
(a missed fraud costs its amount, each alert the review cost) of the decision that was made (the
logged is_fraud, at the threshold then in force), over the labelled rows, with bootstrap 95 %
intervals; the same for each challenger on the rows where it was logged, with the champion on those
same rows and the paired difference of their costs; calibration by score band; a verdict per week.

A row without a label is neither fraud nor legitimate: it is counted among the rows scored (and the
alert rate of all rows) and left out of every figure that needs the truth. A transaction scored
more than once in the range (a retried request) counts once, as its latest scoring.

The SQL (DuckDB) reads only the date partitions in range and does every join and sum; numpy draws
the bootstrap's Poisson weights, one per kind of row (`resampled_sums`), in bounded memory."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from service.core.settings import offline_or_exit
from service.core.threshold import REVIEW_COST
from service.offline import log_table
from service.offline.labels import UTC, connect, instant_argument, labels_as_of, sql_instant, sql_string
from service.predlog.record import arrow_schema

WINDOW_DAYS = 120
MEMORY_LIMIT = "1GB"  # DuckDB's working memory; beyond it, its temporary files
MATURITY_BAR = 0.9
BOOTSTRAP = 1000
SEED = 2027
BLOCK_ROWS = 4096  # kinds of row per block of Poisson weights: BOOTSTRAP x BLOCK_ROWS doubles at a time
BAND = 10  # calibration bands of fraud-score: 0-9, 10-19, ..., 90-100
# The sums every rate is a ratio of, over the rows in a set: weight, fraud weight, alerts, caught
# frauds, missed frauds' amount (`_quantities`). The bootstrap recomputes them with resampled weights.
SUMS = ("weight", "frauds", "alerts", "caught", "missed_amount")


def load_rows(
    con: duckdb.DuckDBPyConnection, log_dir: Path, labels_dir: Path, first: dt.date, last: dt.date, as_of: dt.datetime
) -> int:
    """Builds the temp table `outcome_rows`: one row per transaction scored from first to last
    (dates, inclusive), with its label known at as_of (or none) and its maturity. Returns its rows."""
    files = log_table.files(Path(log_dir), first, last)  # chosen by directory: no other file is opened
    if files:
        scan = f"""read_parquet([{", ".join(sql_string(f) for f in files)}], hive_partitioning = true,
                                union_by_name = true, hive_types = {{'date': DATE, 'hour': INTEGER}})"""
    else:  # no partition in range: no rows
        con.register("outcome_no_log", arrow_schema().empty_table())
        scan = "outcome_no_log"
    window = WINDOW_DAYS * 86_400
    labels_as_of(con, labels_dir, as_of).create_view("outcome_labels", replace=True)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE outcome_scored AS
        SELECT transaction_id, ts, model_version, probability, fraud_score, is_fraud,
               challenger_version, challenger_is_fraud, coalesce(sample_weight, 1.0) AS weight,
               "Amount" AS log_amount
        FROM {scan}
        QUALIFY transaction_id IS NULL
             OR row_number() OVER (PARTITION BY transaction_id ORDER BY ts DESC, ts_ns DESC) = 1
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE outcome_joined AS
        SELECT s.*, strftime(s.ts, '%G-W%V') AS week, CAST(date_trunc('week', s.ts) AS DATE) AS week_start,
               l.is_fraud AS label, coalesce(l.amount, s.log_amount, 0.0) AS amount,
               epoch(l.known_at) - epoch(s.ts) AS delay_s,
               least(epoch({sql_instant(as_of)}) - epoch(s.ts), {window}) AS age_s
        FROM outcome_scored s LEFT JOIN outcome_labels l USING (transaction_id)
    """)
    # The delays a window brings: those of rows whose window has closed by as_of when there are
    # any (recent rows have only had time for short delays), else every delay seen so far.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE outcome_delays AS
        WITH seen AS (
            SELECT greatest(delay_s, 0) AS delay, age_s >= {window} AS closed
            FROM outcome_joined WHERE label IS NOT NULL AND delay_s <= {window}),
        used AS (SELECT delay FROM seen WHERE closed OR NOT (SELECT bool_or(closed) FROM seen))
        SELECT delay, max(share) AS share
        FROM (SELECT delay, cume_dist() OVER (ORDER BY delay) AS share FROM used)
        GROUP BY delay
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE outcome_rows AS
        SELECT j.*, CASE WHEN (SELECT count(*) FROM outcome_delays) = 0 THEN NULL
                         ELSE coalesce(d.share, 0.0) END AS maturity
        FROM outcome_joined j ASOF LEFT JOIN outcome_delays d ON j.age_s >= d.delay
    """)
    con.execute("DROP TABLE outcome_joined; DROP TABLE outcome_scored")  # their memory back
    return con.execute("SELECT count(*) FROM outcome_rows").fetchall()[0][0]


def rates(sums: np.ndarray, review_cost: float) -> dict[str, np.ndarray]:
    """recall, precision, alert rate and cost per 1,000 rows from the SUMS (last axis, in order);
    nan where a rate has no rows to be a share of."""
    weight, frauds, alerts, caught, missed = np.moveaxis(np.asarray(sums, dtype=np.float64), -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "recall": np.where(frauds > 0, caught / frauds, np.nan),
            "precision": np.where(alerts > 0, caught / alerts, np.nan),
            "alert_rate": np.where(weight > 0, alerts / weight, np.nan),
            "cost_per_1000": np.where(weight > 0, (missed + review_cost * alerts) / weight * 1000.0, np.nan),
        }


def _number(value: Any) -> float | None:
    value = float(value)
    return None if not np.isfinite(value) else value


def interval(values: np.ndarray) -> list[float] | None:
    """The 95 % percentile interval of the resamples where the figure is defined."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def resampled_sums(quantities: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, columns): each column's sum over the rows under Poisson(1) weights, one set of
    weights per resample (the bootstrap of a large sample). quantities holds one line per kind of
    row, counts how many rows are of that kind: the sum of m Poisson(1) weights is one Poisson(m),
    exactly, so the draws grow with the kinds of row, not the rows, a block of kinds at a time."""
    total = np.zeros((n_boot, quantities.shape[1]))
    for start in range(0, len(counts), BLOCK_ROWS):
        block = slice(start, start + BLOCK_ROWS)
        total += rng.poisson(counts[block], size=(n_boot, len(counts[block]))).astype(np.float64) @ quantities[block]
    return total


def _with_intervals(point: np.ndarray, boot: np.ndarray, review_cost: float) -> dict[str, Any]:
    at_point, resampled = rates(point, review_cost), rates(boot, review_cost)
    out: dict[str, Any] = {}
    for name in at_point:
        out[name] = _number(at_point[name])
        out[f"{name}_ci"] = interval(resampled[name])
    return out


def _quantities(columns: dict[str, np.ndarray], alert: np.ndarray, within: np.ndarray) -> np.ndarray:
    """Per kind of labelled row, one row's part of each of the SUMS (zero outside `within`)."""
    w = columns["weight"] * within
    y = columns["label"].astype(bool)
    return np.column_stack([w, w * y, w * alert, w * (y & alert), w * (y & ~alert) * columns["amount"]])


def week_figures(
    con: duckdb.DuckDBPyConnection, review_cost: float, n_boot: int, seed: int, bar: float
) -> list[dict[str, Any]]:
    groups = con.execute("""
        SELECT model_version, week, min(week_start) AS week_start, count(*) AS rows, sum(weight) AS rows_weighted,
               sum(weight * is_fraud::INT) / sum(weight) AS alert_rate_all_rows,
               count(label) AS labelled, coalesce(sum(weight) FILTER (label IS NOT NULL), 0) AS labelled_weighted,
               sum(weight * maturity) / sum(weight) AS maturity,
               coalesce(sum(weight) FILTER (label), 0) AS frauds
        FROM outcome_rows GROUP BY ALL ORDER BY model_version, week
    """).fetchall()
    names = [d[0] for d in con.description]
    weeks = []
    for values in groups:
        group = dict(zip(names, values, strict=True))
        version, week = group["model_version"], group["week"]
        # The week's labelled rows by kind: rows alike in everything a figure reads (most legitimate
        # rows differ only by weight and decisions; an amount matters only for a fraud) are one line.
        columns = con.execute(
            """SELECT weight, label, is_fraud, CASE WHEN label THEN amount ELSE 0 END AS amount,
                      coalesce(challenger_is_fraud, false) AS challenger_is_fraud,
                      CASE WHEN challenger_is_fraud IS NOT NULL THEN coalesce(challenger_version, '') ELSE '' END
                          AS challenger, count(*) AS rows
               FROM outcome_rows WHERE label IS NOT NULL AND model_version IS NOT DISTINCT FROM ? AND week = ?
               GROUP BY ALL ORDER BY ALL""",
            [version, week],
        ).fetchnumpy()
        columns = {k: np.asarray(v) for k, v in columns.items()}
        alert = columns["is_fraud"].astype(bool)
        every = np.ones(len(alert), dtype=bool)
        challengers = sorted({c for c in columns["challenger"].tolist() if c})
        parts = [_quantities(columns, alert, every)]
        theirs = columns["challenger_is_fraud"].astype(bool)
        for name in challengers:
            logged = columns["challenger"] == name
            parts += [_quantities(columns, alert, logged), _quantities(columns, theirs, logged)]
        quantities = np.hstack(parts) if len(alert) else np.zeros((0, len(SUMS) * len(parts)))
        counts = columns["rows"].astype(np.int64)
        point = counts @ quantities
        boot = resampled_sums(quantities, counts, n_boot, np.random.default_rng(seed))
        k = len(SUMS)
        entry: dict[str, Any] = {
            "model_version": version,
            "week": week,
            "week_start": group["week_start"].isoformat(),
            "rows": int(group["rows"]),
            "rows_weighted": float(group["rows_weighted"]),
            "alert_rate_all_rows": _number(group["alert_rate_all_rows"]),
            "labelled": int(group["labelled"]),
            "labelled_weighted": float(group["labelled_weighted"]),
            "frauds_weighted": float(group["frauds"]),
            "maturity": None if group["maturity"] is None else float(group["maturity"]),
            "champion": _with_intervals(point[:k], boot[:, :k], review_cost),
            "challengers": [],
        }
        for i, name in enumerate(challengers):
            ours, theirs = slice(k * (1 + 2 * i), k * (2 + 2 * i)), slice(k * (2 + 2 * i), k * (3 + 2 * i))
            difference = (
                rates(boot[:, theirs], review_cost)["cost_per_1000"]
                - rates(boot[:, ours], review_cost)["cost_per_1000"]
            )
            champion = _with_intervals(point[ours], boot[:, ours], review_cost)
            challenger = _with_intervals(point[theirs], boot[:, theirs], review_cost)
            entry["challengers"].append(
                {
                    "version": name,
                    "labelled": int(counts[columns["challenger"] == name].sum()),
                    "champion": champion,
                    "challenger": challenger,
                    "cost_difference_per_1000": _number(
                        rates(point[theirs], review_cost)["cost_per_1000"]
                        - rates(point[ours], review_cost)["cost_per_1000"]
                    ),
                    "cost_difference_ci": interval(difference),
                }
            )
        entry["verdict"] = verdict(entry, bar)
        weeks.append(entry)
    return weeks


def verdict(week: dict[str, Any], bar: float) -> str:
    """One plain line: whether the week can be judged yet, and what it says."""
    maturity = week["maturity"]
    if week["labelled"] == 0 or maturity is None:
        return "no labels yet: not judged"
    if maturity < bar:
        return f"immature ({100 * maturity:.0f} % of labels in): not judged"
    cost = week["champion"]["cost_per_1000"]
    if not week["challengers"]:
        return f"champion cost {cost:.1f} per 1,000; no challenger logged"
    lines = []
    for c in week["challengers"]:
        ours, theirs, ci = c["champion"]["cost_per_1000"], c["challenger"]["cost_per_1000"], c["cost_difference_ci"]
        if ours is None or theirs is None or ci is None:
            lines.append(f"champion cost {cost:.1f} per 1,000; challenger {c['version']}: too few labelled rows")
            continue
        if ci[1] < 0:
            judgement = "lower beyond the interval: the challenger is cheaper"
        elif ci[0] > 0:
            judgement = "higher beyond the interval: keep the champion"
        else:
            judgement = "difference inside the interval: keep watching"
        lines.append(
            f"on the {c['labelled']:,} labelled rows both scored, champion cost {ours:.1f} per 1,000, "
            f"challenger {c['version']} {theirs:.1f}, {judgement}"
        )
    return "; ".join(lines)


def calibration(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict[str, Any]]]:
    """Per model version, over its labelled rows: the mean predicted P(fraud) and the observed fraud
    rate by band of fraud-score, both weighted."""
    rows = con.execute(f"""
        SELECT model_version, least(fraud_score // {BAND}, {100 // BAND - 1}) AS band, count(*) AS labelled,
               sum(weight * probability) / sum(weight) AS predicted, sum(weight * label::INT) / sum(weight) AS observed
        FROM outcome_rows WHERE label IS NOT NULL GROUP BY ALL ORDER BY model_version, band
    """).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for version, band, labelled, predicted, observed in rows:
        high = 100 if band == 100 // BAND - 1 else BAND * band + BAND - 1
        out.setdefault(version, []).append(
            {
                "band": f"{BAND * band}-{high}",
                "labelled": int(labelled),
                "predicted": float(predicted),
                "observed": float(observed),
            }
        )
    return out


def delays(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    ((n, median, p90),) = con.execute(
        "SELECT count(*), quantile_cont(delay, 0.5) / 86400, quantile_cont(delay, 0.9) / 86400 FROM outcome_delays"
    ).fetchall()
    return {"distinct_delays": int(n), "median_days": _number(median or np.nan), "p90_days": _number(p90 or np.nan)}


def outcomes(
    log_dir: Path,
    labels_dir: Path,
    first: dt.date,
    last: dt.date,
    as_of: dt.datetime,
    review_cost: float = REVIEW_COST,
    n_boot: int = BOOTSTRAP,
    seed: int = SEED,
    bar: float = MATURITY_BAR,
) -> dict[str, Any]:
    """Every figure of the report, as JSON-ready values."""
    with tempfile.TemporaryDirectory(prefix="outcomes-") as spill:
        con = connect()
        # DuckDB's default is 80 % of the machine's memory: the range's rows would all be held (a
        # 10-million-row log took 6.7 GB); within the limit it writes its temporary files instead.
        con.execute(f"SET memory_limit = {sql_string(MEMORY_LIMIT)}")
        con.execute(f"SET temp_directory = {sql_string(spill)}")
        try:
            return _figures(con, log_dir, labels_dir, first, last, as_of, review_cost, n_boot, seed, bar)
        finally:
            con.close()


def _figures(
    con: duckdb.DuckDBPyConnection,
    log_dir: Path,
    labels_dir: Path,
    first: dt.date,
    last: dt.date,
    as_of: dt.datetime,
    review_cost: float,
    n_boot: int,
    seed: int,
    bar: float,
) -> dict[str, Any]:
    rows = load_rows(con, log_dir, labels_dir, first, last, as_of)
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "as_of": as_of.astimezone(UTC).isoformat(),
        "review_cost": review_cost,
        "window_days": WINDOW_DAYS,
        "maturity_bar": bar,
        "bootstrap": n_boot,
        "seed": seed,
        "rows": rows,
        "delays": delays(con),
        "weeks": week_figures(con, review_cost, n_boot, seed, bar),
        "calibration": calibration(con),
    }


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def main(argv: list[str] | None = None) -> int:
    from service.offline.outcomes_report import render

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="first", type=_date, help="first scoring date (default: AS_OF's minus 180 days)")
    parser.add_argument("--to", dest="last", type=_date, help="last scoring date, inclusive (default: AS_OF's)")
    parser.add_argument("--as-of", type=instant_argument, help="the label cut-off (default: now)")
    parser.add_argument("--review-cost", type=float, default=REVIEW_COST, help=f"per alert (default {REVIEW_COST:g})")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help=f"resamples (default {BOOTSTRAP})")
    parser.add_argument("--out", type=Path, default=Path(".run/outcomes"), help="the output directory")
    parser.add_argument("--log-dir", type=Path, help="the prediction log (default: PREDICTION_LOG_DIR)")
    parser.add_argument("--default-log-dir", type=Path, help="the log when neither names one")
    parser.add_argument("--labels-dir", type=Path, help="the label table (default: LABELS_DIR)")
    parser.add_argument("--default-labels-dir", type=Path, help="the label table when neither names one")
    args = parser.parse_args(argv)
    settings = offline_or_exit()
    log_dir = args.log_dir or settings.prediction_log_dir or args.default_log_dir
    labels_dir = args.labels_dir or settings.labels_dir or args.default_labels_dir
    if (
        log_dir is None
        or not Path(log_dir).is_dir()
        or next(Path(log_dir).glob("date=*/hour=*/*.parquet"), None) is None
    ):
        print(f"no prediction log at {log_dir}: set PREDICTION_LOG_DIR or pass --log-dir", file=sys.stderr)
        return 2
    if labels_dir is None:
        print("no label table: set LABELS_DIR or pass --labels-dir", file=sys.stderr)
        return 2
    if not np.isfinite(args.review_cost) or args.review_cost < 0 or args.bootstrap < 1:
        print("--review-cost must be a number >= 0 and --bootstrap at least 1", file=sys.stderr)
        return 2
    as_of = args.as_of or dt.datetime.now(UTC)
    last = args.last or as_of.astimezone(UTC).date()
    first = args.first or last - dt.timedelta(days=180)
    if first > last:
        print(f"--from {first} is after --to {last}", file=sys.stderr)
        return 2
    figures = outcomes(Path(log_dir), Path(labels_dir), first, last, as_of, args.review_cost, args.bootstrap)
    figures["generated"] = dt.datetime.now(UTC).replace(microsecond=0).isoformat()
    figures["log_dir"], figures["labels_dir"] = str(log_dir), str(labels_dir)
    stem = f"outcomes-{first}-{last}-as-of-{as_of.astimezone(UTC):%Y%m%dT%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    report, data = args.out / f"{stem}.html", args.out / f"{stem}.json"
    data.write_text(json.dumps(figures, indent=2) + "\n")
    report.write_text(render(figures))
    for week in figures["weeks"]:
        print(f"{week['model_version']} {week['week']}: {week['verdict']}")
    print(f"report: {report.resolve()}")
    print(f"figures: {data.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
