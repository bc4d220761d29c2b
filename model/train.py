"""`make model`: train the default fraud model and write its files.

python -m model.train                      # synthetic data (deterministic), ~100k rows
python -m model.train --rows 284807        # the full data set's size
python -m model.train --csv creditcard.csv # the real data set as published (or Parquet with its columns)
python -m model.train --from-log .run/training-sets/F.parquet   # what production scored (make training-set)
python -m model.train --from-log .run/prediction-log --from 2026-01-01 --to 2026-03-31 --as-of 2026-08-01

From the prediction log, each row is weighted by its sampling weight, in fitting, in the held-out
figures and in the threshold's costs; the manifest records the log range, the label cut-off and the
counts (`training_set`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

from model import ood_bounds, synthetic, threshold
from model.export import export, feature_stats
from service.core.artifacts import sha256_file
from service.engine import drift
from service.offline import training_set

DEFAULT_MODEL_PATH = Path("model/fraud-model.joblib")


def read_labelled(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A labelled file (creditcard.csv as published, or Parquet) through the service's one reader
    of transaction files; a file that cannot be used stops the command with one line."""
    # Imported here: Arrow is the `data` extra, and training on synthetic data (the container's
    # build) runs without it.
    from service.offline import labelled

    try:
        return labelled.read(path)
    except labelled.LabelledFileError as e:
        raise SystemExit(f"error: {e}") from None


def read_training_set(source: Path, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(X, y, sample weights, metadata) of a `make training-set` table, or of one built now from the
    log directory `source`; a table that cannot be used stops the command with one line."""
    try:
        table, metadata = training_set.load(training_set.connect(), source, args)
    except training_set.TrainingSetError as e:
        raise SystemExit(f"error: {e}") from None
    X, y, w = training_set.arrays(table)
    if len(np.unique(y)) < 2:
        raise SystemExit(
            f"error: {source}: {len(y)} rows, {int(y.sum())} frauds: a model is trained and judged on both frauds and legitimate rows "
            f"({training_set.describe(metadata)})"
        )
    return X, y, w, metadata


def fit_with_progress(
    X: np.ndarray, y: np.ndarray, n_estimators: int, seed: int, quiet: bool, sample_weight: np.ndarray | None = None
) -> RandomForestClassifier:
    """Fits in chunks with warm_start to show progress; sklearn draws each tree's seed from the
    same stream either way, so the forest equals the one fitted in one call."""
    model = RandomForestClassifier(n_estimators=0, random_state=seed, n_jobs=-1, warm_start=True)
    start = time.monotonic()
    step = max(1, n_estimators // 20)
    for done in range(step, n_estimators + step, step):
        model.n_estimators = min(done, n_estimators)
        model.fit(X, y, sample_weight=sample_weight)
        if not quiet:
            bar = "#" * (20 * model.n_estimators // n_estimators)
            print(
                f"\r  training [{bar:<20}] {model.n_estimators}/{n_estimators} trees, {time.monotonic() - start:5.1f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if not quiet:
        print(file=sys.stderr)
    model.warm_start = False
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, help="train on this CSV (creditcard.csv columns) instead of synthetic data")
    parser.add_argument(
        "--from-log",
        type=Path,
        help="train on what production scored: a `make training-set` table, or the prediction log's directory "
        "(then with --from, --to, --as-of)",
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="synthetic rows (default 100000; the real set has 284807)"
    )
    parser.add_argument("--trees", type=int, default=100, help="number of trees (default 100)")
    parser.add_argument("--seed", type=int, default=42, help="random seed for data, split and forest (default 42)")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_MODEL_PATH, help=f"model path (default {DEFAULT_MODEL_PATH})"
    )
    parser.add_argument("--version", help="model version (default: rf-<date>-<digest>)")
    parser.add_argument(
        "--review-cost",
        type=float,
        default=threshold.REVIEW_COST,
        help=f"cost of reviewing one alert, in Amount's money (default {threshold.REVIEW_COST:g})",
    )
    parser.add_argument(
        "--max-alert-rate", type=float, help="choose the threshold among those alerting on at most this share (0-1)"
    )
    parser.add_argument(
        "--ood-target-rate",
        type=float,
        default=ood_bounds.TARGET_RATE,
        help=f"share of ordinary rows the out-of-distribution flag may mark (default {ood_bounds.TARGET_RATE:g})",
    )
    parser.add_argument("--quiet", action="store_true")
    training_set.add_window_arguments(parser)
    args = parser.parse_args(argv)
    if args.csv and args.from_log:
        parser.error("--csv and --from-log are two sources: give one")
    if args.review_cost < 0 or not np.isfinite(args.review_cost):
        parser.error("--review-cost must be a finite number >= 0")
    if args.max_alert_rate is not None and not 0 <= args.max_alert_rate <= 1:
        parser.error("--max-alert-rate must be between 0 and 1")
    if not 0 < args.ood_target_rate < 1:
        parser.error("--ood-target-rate must be between 0 and 1")

    weights, logged = None, None
    if args.from_log:
        X, y, weights, logged = read_training_set(args.from_log, args)
        source = (
            f"prediction log {logged['log_dir']} from {logged['from'] or 'the start'} to {logged['to'] or 'the end'}, "
            f"labels as of {logged['as_of']}"
        )
    elif args.csv:
        X, y = read_labelled(args.csv)
        source = f"csv:{args.csv.name} sha256={sha256_file(args.csv)}"
    else:
        X, y = synthetic.generate(args.rows, seed=args.seed)
        source = f"synthetic rows={args.rows} seed={args.seed}"
    if not args.quiet:
        print(f"data: {source}: {len(y)} rows, {int(y.sum())} frauds ({100 * y.mean():.3f} %)", file=sys.stderr)
    # The same split with or without weights (train_test_split shuffles indices); unweighted data
    # keeps weights None throughout, so its figures are the ones it always had.
    X_train, X_test, y_train, y_test, w_train, w_test = train_test_split(
        X, y, np.ones(len(y)) if weights is None else weights, test_size=0.2, stratify=y, random_state=args.seed
    )
    if weights is None:
        w_train = w_test = None
    model = fit_with_progress(X_train, y_train, args.trees, args.seed, args.quiet, w_train)
    model.n_jobs = None
    p = model.predict_proba(X_test)[:, 1]
    metrics = {
        "roc_auc": round(float(roc_auc_score(y_test, p, sample_weight=w_test)), 6),
        "average_precision": round(float(average_precision_score(y_test, p, sample_weight=w_test)), 6),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "n_test_fraud": int(y_test.sum()),
    }
    scores = threshold.scores_of(p)
    chosen = threshold.choose(
        y_test,
        scores,
        X_test[:, threshold.AMOUNT],
        review_cost=args.review_cost,
        max_alert_rate=args.max_alert_rate,
        weights=w_test,
    )
    manifest = export(
        model,
        args.output,
        data_source=source,
        metrics=metrics,
        stats=feature_stats(X_train),
        version=args.version,
        threshold=chosen,
        drift=drift.reference(X_train, scores),
        ood=ood_bounds.calibrate(X_train, X_test, args.ood_target_rate),
        training_set=logged,
    )
    ood = manifest["ood"]
    print(
        f"held-out split ({metrics['n_test']} rows, {metrics['n_test_fraud']} frauds): "
        f"ROC AUC {metrics['roc_auc']:.4f}, average precision (AUC-PR) {metrics['average_precision']:.4f}"
    )
    cap = "" if args.max_alert_rate is None else f", alert rate at most {100 * args.max_alert_rate:g} %"
    print(
        f"threshold {chosen['value']} chosen for least expected cost (missed fraud: its Amount; "
        f"review: {args.review_cost:g} per alert{cap}; from {chosen['frauds']} frauds in the held-out split)"
    )
    print("  " + threshold.describe(f"at {chosen['value']:>3}", chosen["at_threshold"]))
    print("  " + threshold.describe("at  50", chosen["at_50"]))
    print(
        f"out-of-distribution bounds: training quantiles {ood['tail']:.3g} and 1 - {ood['tail']:.3g}, flagging "
        f"{100 * ood['heldout_rate']:.2f} % of the held-out split (target {100 * ood['target_rate']:g} %)"
    )
    forest_info = manifest["files"].get("forest", {})
    print(
        f"wrote {args.output} (version {manifest['version']}, {forest_info.get('n_trees')} trees, "
        f"{forest_info.get('n_nodes')} nodes, max depth {forest_info.get('max_depth')})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
