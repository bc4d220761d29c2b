"""`make evaluate`: champion and challenger side by side on the same labelled rows, as one HTML page.

    python -m model.evaluate                                  # served champion, configured challenger,
                                                              # a fresh synthetic hold-out (another seed)
    python -m model.evaluate --champion A.joblib --challenger B.joblib --csv labelled.csv
    python -m model.evaluate --challenger B.joblib --from-log .run/prediction-log --from 2026-05-01 \
        --to 2026-05-31 --as-of 2026-10-01     # what production scored later, labelled as of a cut-off

Both models are loaded and verified by the service's own loader and scored by its own engine.
The page (images embedded, no network needed) shows ROC and precision-recall curves, ROC AUC and
average precision with bootstrap 95 % intervals, recall / precision / alert rate / expected cost at
each model's own threshold, the shift between their score distributions, the transactions they
disagree on most, and a one-line verdict. A JSON file with every figure is written beside it."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import html
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from model import synthetic, threshold
from model.train import read_labelled, read_training_set
from service.core.artifacts import ArtifactError
from service.core.settings import Settings, read_environment
from service.engine.drift import SCORE_EDGES, psi
from service.engine.loader import LoadedModel, load_model
from service.offline import training_set
from service.offline.report_page import page, percent

TOP_DISAGREEMENTS = 15


@dataclasses.dataclass
class Scored:
    name: str
    model: LoadedModel
    probability: np.ndarray
    score: np.ndarray

    @property
    def threshold(self) -> int:
        return int(self.model.threshold["value"])


def load(path: Path) -> LoadedModel:
    # A placeholder key: Settings requires one, and nothing here serves requests.
    return load_model(Settings(api_keys=(b"evaluate-only-not-a-key",), model_path=path))


def bootstrap(y: np.ndarray, columns: list[np.ndarray], statistic, n: int, seed: int) -> np.ndarray:
    """statistic(y_resampled, *columns_resampled) over n paired resamples of the rows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue  # one class only: the metrics are undefined
        out.append(statistic(y[i], *(c[i] for c in columns)))
    return np.array(out)


def interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def evaluate(
    models: list[Scored],
    y: np.ndarray,
    amount: np.ndarray,
    review_cost: float,
    n_boot: int,
    seed: int,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """weights: each row counts as that many transactions (the prediction log's sample_weight)."""
    w = np.ones(len(y)) if weights is None else weights
    figures: dict[str, Any] = {"rows": int(len(y)), "frauds": int(y.sum()), "review_cost": review_cost, "models": {}}

    def roc_auc(yy, p, ww):
        return roc_auc_score(yy, p, sample_weight=ww)

    def average_precision(yy, p, ww):
        return average_precision_score(yy, p, sample_weight=ww)

    for m in models:
        curve = threshold.figures(y, m.score, amount, review_cost, w)
        at = threshold.at(curve, m.threshold)
        figures["models"][m.name] = {
            "version": m.model.version,
            "threshold": m.model.threshold,
            "roc_auc": float(roc_auc(y, m.probability, w)),
            "roc_auc_ci": interval(bootstrap(y, [m.probability, w], roc_auc, n_boot, seed)),
            "average_precision": float(average_precision(y, m.probability, w)),
            "average_precision_ci": interval(bootstrap(y, [m.probability, w], average_precision, n_boot, seed)),
            "at_threshold": at,
            "cost_per_1000_ci": interval(
                bootstrap(
                    y,
                    [m.score, amount, w],
                    lambda yy, s, a, ww, t=m.threshold: threshold.at(threshold.figures(yy, s, a, review_cost, ww), t)[
                        "cost_per_1000"
                    ],
                    n_boot,
                    seed,
                )
            ),
            "cost_curve": curve["cost_per_1000"].tolist(),
            "mean_score": float(m.score.mean()),
        }
    if len(models) == 2:
        champion, challenger = models

        def cost_difference(yy, s1, s2, a, ww):
            c1 = threshold.at(threshold.figures(yy, s1, a, review_cost, ww), champion.threshold)["cost_per_1000"]
            c2 = threshold.at(threshold.figures(yy, s2, a, review_cost, ww), challenger.threshold)["cost_per_1000"]
            return c2 - c1

        difference = (
            figures["models"]["challenger"]["at_threshold"]["cost_per_1000"]
            - figures["models"]["champion"]["at_threshold"]["cost_per_1000"]
        )
        figures["cost_difference_per_1000"] = difference
        figures["cost_difference_ci"] = interval(
            bootstrap(y, [champion.score, challenger.score, amount, w], cost_difference, n_boot, seed)
        )
        n_bins = len(SCORE_EDGES) + 1
        expected = np.bincount(np.searchsorted(SCORE_EDGES, champion.score, side="right"), minlength=n_bins) / len(y)
        observed = np.bincount(np.searchsorted(SCORE_EDGES, challenger.score, side="right"), minlength=n_bins)
        figures["score_shift"] = {
            "psi_challenger_vs_champion": psi(expected, observed),
            "mean_difference": float((challenger.score - champion.score).mean()),
            "rows_scored_differently": int(np.sum(challenger.score != champion.score)),
            "decisions_differ": int(
                np.sum((champion.score >= champion.threshold) != (challenger.score >= challenger.threshold))
            ),
        }
    figures["verdict"] = verdict(figures)
    return figures


def verdict(figures: dict[str, Any]) -> str:
    if "cost_difference_per_1000" not in figures:
        return "No challenger to compare: the champion's figures stand alone."
    d, (low, high) = figures["cost_difference_per_1000"], figures["cost_difference_ci"]
    span = f"{d:+.2f} per 1,000 transactions, 95 % interval {low:+.2f} to {high:+.2f}"
    if high < 0:
        return f"Promote the challenger: it costs less at its threshold ({span}: the interval excludes zero)."
    if low > 0:
        return f"Keep the champion: the challenger costs more at its threshold ({span}: the interval excludes zero)."
    return (
        f"No clear winner: the challenger's cost difference ({span}) has an interval that includes zero; "
        f"keep the champion and evaluate on more labelled data."
    )


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def charts(models: list[Scored], y: np.ndarray, figures: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    for m in models:
        f = figures["models"][m.name]
        fpr, tpr, _ = roc_curve(y, m.probability)
        roc.plot(fpr, tpr, label=f"{m.name} {m.model.version} (AUC {f['roc_auc']:.4f})")
        precision, recall, _ = precision_recall_curve(y, m.probability)
        pr.step(recall, precision, where="post", label=f"{m.name} (AP {f['average_precision']:.4f})")
        at = f["at_threshold"]
        if at["precision"] is not None:
            pr.plot([at["recall"]], [at["precision"]], "o", label=f"{m.name} at its threshold {m.threshold}")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC")
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    roc.legend(loc="lower right", fontsize=8)
    pr.legend(loc="lower left", fontsize=8)
    out["curves"] = _png(fig)

    fig, (hist, cost) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.arange(0, 102) - 0.5
    for m in models:
        hist.hist(m.score, bins=bins, histtype="step", label=m.name, log=True)
        cost.plot(range(102), figures["models"][m.name]["cost_curve"], label=m.name)
        cost.axvline(m.threshold, linestyle=":", color=cost.lines[-1].get_color())
    hist.set(xlabel="fraud-score", ylabel="rows (log)", title="Score distributions")
    cost.set(
        xlabel="threshold (fraud-score)", ylabel="expected cost per 1,000", title="Cost by threshold", yscale="log"
    )
    hist.legend(fontsize=8)
    cost.legend(fontsize=8)
    out["scores"] = _png(fig)
    return out


def render(models: list[Scored], X: np.ndarray, y: np.ndarray, figures: dict[str, Any], source: str) -> str:
    from service.core.features import FEATURES

    images = charts(models, y, figures)
    e = html.escape
    rows = []
    for m in models:
        f = figures["models"][m.name]
        at = f["at_threshold"]
        rows.append(
            f"<tr><th>{e(m.name)}</th><td>{e(m.model.version)}</td><td>{m.threshold} ({e(m.model.threshold['source'])})</td>"
            f"<td>{f['roc_auc']:.4f} [{f['roc_auc_ci'][0]:.4f}, {f['roc_auc_ci'][1]:.4f}]</td>"
            f"<td>{f['average_precision']:.4f} [{f['average_precision_ci'][0]:.4f}, {f['average_precision_ci'][1]:.4f}]</td>"
            f"<td>{percent(at['recall'])}</td><td>{percent(at['precision'])}</td><td>{percent(at['alert_rate'])}</td>"
            f"<td>{at['cost_per_1000']:.2f} [{f['cost_per_1000_ci'][0]:.2f}, {f['cost_per_1000_ci'][1]:.2f}]</td></tr>"
        )
    shift = ""
    disagreements = ""
    if len(models) == 2:
        s = figures["score_shift"]
        shift = (
            f"<p>Challenger against champion on the same rows: PSI of the score distributions "
            f"{s['psi_challenger_vs_champion']:.4f}, mean score difference {s['mean_difference']:+.3f}, "
            f"{s['rows_scored_differently']} rows scored differently, {s['decisions_differ']} decisions differ.</p>"
        )
        champion, challenger = models
        gap = np.abs(challenger.score - champion.score)
        top = np.argsort(-gap, kind="stable")[:TOP_DISAGREEMENTS]
        amount = FEATURES.index("Amount")
        v14 = FEATURES.index("V14")
        lines = "".join(
            f"<tr><td>{i}</td><td>{'fraud' if y[i] else 'genuine'}</td><td>{champion.score[i]}</td>"
            f"<td>{challenger.score[i]}</td><td>{X[i, amount]:.2f}</td><td>{X[i, v14]:.3f}</td></tr>"
            for i in top
            if gap[i] > 0
        )
        disagreements = (
            "<h2>Transactions they disagree on most</h2><table><tr><th>row</th><th>label</th><th>champion score</th>"
            f"<th>challenger score</th><th>Amount</th><th>V14</th></tr>{lines}</table>"
        )
    body = f"""<h1>Champion and challenger</h1>
<p>{figures["rows"]} labelled rows ({figures["frauds"]} frauds) from {e(source)}; expected cost: each missed fraud
costs its Amount, each alert costs {figures["review_cost"]:g}. Intervals: 95 % bootstrap ({figures["bootstrap"]} resamples).
Generated {e(figures["generated"])}.</p>
<table><tr><th>model</th><th>version</th><th>threshold</th><th>ROC AUC [95 %]</th><th>average precision [95 %]</th>
<th>recall</th><th>precision</th><th>alert rate</th><th>cost per 1,000 [95 %]</th></tr>{"".join(rows)}</table>
<img alt="ROC and precision-recall curves" src="{images["curves"]}">
<h2>Score distributions</h2>{shift}
<img alt="score distributions and cost by threshold" src="{images["scores"]}">
{disagreements}
<p class="verdict">{e(figures["verdict"])}</p>"""
    return page("Model evaluation", body)


def main(argv: list[str] | None = None) -> int:
    env = read_environment()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--champion", type=Path, default=Path(env.get("MODEL_PATH") or "model/fraud-model.joblib"))
    parser.add_argument("--challenger", type=Path, default=env.get("CHALLENGER_MODEL_PATH") or None)
    parser.add_argument("--csv", type=Path, help="labelled rows (creditcard.csv columns); default: fresh synthetic")
    parser.add_argument(
        "--from-log",
        type=Path,
        help="labelled rows of what production scored: a `make training-set` table, or the prediction log's "
        "directory (then with --from, --to, --as-of; a window later than the challenger's training)",
    )
    training_set.add_window_arguments(parser)
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows (default 100000)")
    parser.add_argument("--seed", type=int, default=2027, help="synthetic data seed, not training's 42 (default 2027)")
    parser.add_argument(
        "--review-cost", type=float, help="cost per alert (default: the champion's training choice, else 5)"
    )
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    parser.add_argument("--output", type=Path, help="the HTML file (default evaluation/report-<time>.html)")
    args = parser.parse_args(argv)

    try:
        models = [("champion", load(args.champion))]
        if args.challenger is not None:
            models.append(("challenger", load(args.challenger)))
    except ArtifactError as e:
        sys.exit(f"model error: {e}")
    weights = None
    if args.csv and args.from_log:
        parser.error("--csv and --from-log are two sources: give one")
    if args.from_log:
        X, y, weights, logged = read_training_set(args.from_log, args)
        source = f"the prediction log, {training_set.describe(logged)}"
    elif args.csv:
        X, y = read_labelled(args.csv)
        source = f"{args.csv.name}"
    else:
        X, y = synthetic.generate(args.rows, seed=args.seed)
        source = f"synthetic rows={args.rows} seed={args.seed}"
    review_cost = args.review_cost
    if review_cost is None:
        recorded = (models[0][1].manifest.get("threshold") or {}).get("costs") or {}
        review_cost = float(recorded.get("review_per_alert", threshold.REVIEW_COST))
    scored = []
    for name, model in models:
        p = model.scorer.predict_rows(X)
        scored.append(Scored(name, model, p, threshold.scores_of(p)))
    figures = evaluate(scored, y, X[:, threshold.AMOUNT], review_cost, args.bootstrap, args.seed, weights)
    figures["bootstrap"] = args.bootstrap
    figures["generated"] = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    figures["source"] = source
    output = args.output or Path("evaluation") / f"report-{dt.datetime.now():%Y%m%d-%H%M%S}.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(scored, X, y, figures, source))
    output.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    print(figures["verdict"])
    print(f"report: {output.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
