"""What a run is judged on (the targets of perf/README.md and the hard limits) and the table it prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

P99_LIMIT_MS = 200.0  # at 20 and 64 connections
LIMITED_CONNECTIONS = (20, 64)


@dataclass(frozen=True)
class Target:
    figure: str
    measured: str
    target: str
    met: bool


def _model_private_growth(memory: dict[str, Any]) -> tuple[int, int, bool]:
    """(largest growth of model pages private to one worker with ≥ 2 workers, largest copied,
    every worker mapped the model). With one worker every page it touches is its alone, so the
    sharing shows from two workers on."""
    shared_runs = [w for count, run in memory.items() if int(count) >= 2 for w in run["workers"]]
    every = [w for run in memory.values() for w in run["workers"]]
    growth = max((w["model_private_growth"] for w in shared_runs), default=0)
    copied = max((w["model_copied"] for w in every), default=0)
    mapped = bool(every) and all(w["model_mappings"] > 0 and w["model_rss"] > 0 for w in every)
    return growth, copied, mapped


def _worker_cpu(cpu: dict[str, float | None] | None) -> str:
    """The workers' CPU per request behind the ceiling's ratio, when it was read."""
    if not cpu or not cpu.get("score") or not cpu.get("bare"):
        return ""
    return f"; worker CPU/request {cpu['score']:.0f} vs {cpu['bare']:.0f} µs"


def targets(results: dict[str, Any]) -> list[Target]:
    found = by_id_targets(results.get("by_id"))
    ratios = results["closed_loop_ratios"]["score_vs_health_rps"]
    if "64" in ratios:
        found.append(
            Target(
                "scoring ÷ /health throughput, 64 connections",
                f"{100 * ratios['64']:.0f} %",
                "≥ 75 %",
                ratios["64"] >= 0.75,
            )
        )
    ceiling = results.get("ceiling")
    if ceiling:
        found.append(
            Target(
                "scoring ÷ bare stack throughput, 64 connections",
                f"{100 * ceiling['score_vs_bare_rps']:.0f} % ({ceiling['score_rps']:.0f} vs {ceiling['bare_rps']:.0f}/s)"
                + _worker_cpu(ceiling.get("worker_cpu_us_per_request")),
                "≥ 90 %",
                ceiling["score_vs_bare_rps"] >= 0.90,
            )
        )
    micro = results.get("micro", {})
    if "engine" in micro:
        engine = micro["engine"]
        found.append(
            Target(
                "one row: predict_proba ÷ walker",
                f"{engine['single_row_speedup']:.0f}× "
                f"({engine['single_row_us']['sklearn']:.0f} µs vs {engine['single_row_us']['forest']:.2f} µs)",
                "≥ 300×",
                engine["single_row_speedup"] >= 300,
            )
        )
        found.append(
            Target(
                "walker bit-identical to predict_proba",
                f"{engine['bit_identical']} ({engine['rows_compared']:,} rows)",
                "True",
                engine["bit_identical"],
            )
        )
        batch = engine["batch"]["10000"]
        found.append(
            Target(
                "10,000 rows: walker ÷ predict_proba(n_jobs=1) throughput",
                f"{batch['speedup']:.2f}×",
                "≥ 3×",
                batch["speedup"] >= 3.0,
            )
        )
    bulk = results.get("bulk")
    if bulk:
        for name, source in (("parquet_to_parquet", "Parquet"), ("csv_to_parquet", "CSV")):
            figure = bulk[name]
            low, high = figure.get("vs_sklearn_range", (figure["vs_sklearn"],) * 2)
            found.append(
                Target(
                    f"bulk {bulk['rows']:,} rows {source} → Parquet ÷ predict_proba(n_jobs=-1)",
                    f"{figure['vs_sklearn']:.2f}× ({low:.2f}–{high:.2f}; {figure['rows_per_s']:,.0f} rows/s)",
                    "≥ 3×",
                    figure["vs_sklearn"] >= 3.0,
                )
            )
        found.append(
            Target(
                "bulk scores bit-identical to predict_proba",
                f"{all(bulk[n]['bit_identical'] for n in ('parquet_to_parquet', 'csv_to_parquet'))} "
                f"({bulk['rows']:,} rows, both files)",
                "True",
                all(bulk[n]["bit_identical"] for n in ("parquet_to_parquet", "csv_to_parquet")),
            )
        )
    if "validation" in micro:
        validation = micro["validation"]
        found.append(
            Target(
                "validation per request (compiled; jsonschema is the reference)",
                f"{validation['compiled_us']:.1f} µs (jsonschema {validation['jsonschema_us']:.0f} µs)",
                "≤ 25 µs",
                validation["compiled_us"] <= 25.0,
            )
        )
    counting = micro.get("lifecycle")
    if counting:
        found.append(
            Target(
                "drift counting per row (one row / in a batch of 1,000)",
                f"{counting['drift_row_us']:.2f} / {counting['drift_batch_row_us']:.2f} µs",
                "≤ 2 µs",
                max(counting["drift_row_us"], counting["drift_batch_row_us"]) <= 2.0,
            )
        )
    challenger = results.get("challenger")
    if challenger:
        found.append(
            Target(
                f"scoring throughput with a challenger ÷ without, {challenger['connections']} connections",
                f"{100 * challenger['ratio']:.1f} % ({challenger['rps']['with']:.0f} vs {challenger['rps']['without']:.0f}/s"
                + (
                    f"; rounds {100 * challenger['ratio_spread'][0]:.1f}–{100 * challenger['ratio_spread'][1]:.1f} %)"
                    if challenger.get("ratio_spread")
                    else ")"
                ),
                "≥ 95 %",
                challenger["ratio"] >= 0.95,
            )
        )
        if challenger.get("challenger_cpu_us_per_request") is not None:
            cpu = challenger["worker_cpu_us_per_request"]
            found.append(
                Target(
                    "the challenger's worker CPU a request (with − without)",
                    f"{challenger['challenger_cpu_us_per_request']:.1f} µs ({cpu['with']:.0f} vs {cpu['without']:.0f} µs)",
                    "reported",
                    True,
                )
            )
    memory = results.get("memory")
    if memory:
        artifact = next(iter(memory.values()))["artifact_bytes"]
        growth, copied, mapped = _model_private_growth(memory)
        worst = max(growth, copied)
        found.append(
            Target(
                "model pages private to a worker after scoring (growth, worst worker)",
                f"{worst / 1024:.0f} KiB of a {artifact / 1024:.0f} KiB artifact"
                + ("" if mapped else "; the model is NOT memory-mapped in every worker"),
                "≤ 1 %",
                mapped and worst <= 0.01 * artifact,
            )
        )
        if "1" in memory and "4" in memory:
            one, four = memory["1"]["total_pss"], memory["4"]["total_pss"]
            found.append(
                Target(
                    "total PSS, 4 workers vs 1 (master included)",
                    f"{four / 2**20:.1f} MiB vs {one / 2**20:.1f} MiB ({four / one:.2f}×)",
                    "reported",
                    True,
                )
            )
    open50 = results.get("open_loop", {}).get("50")
    if open50:
        latency = open50["latency_ms"]
        found.append(
            Target(
                "open loop at 50 % of capacity: p99 ÷ p50",
                f"{latency['p99'] / latency['p50']:.1f} ({latency['p99']:.2f} / {latency['p50']:.2f} ms)",
                "≤ 5",
                latency["p99"] <= 5 * latency["p50"],
            )
        )
    return found


def hard_failures(results: dict[str, Any]) -> list[str]:
    """Failed requests anywhere, a p99 of 200 ms or more at 20 or 64 connections, and a walker
    that no longer agrees with predict_proba to the last bit (correctness before speed)."""
    failures = []
    engine = results.get("micro", {}).get("engine")
    if engine and not engine["bit_identical"]:
        failures.append("the walker's probabilities differ from predict_proba's")
    bulk = results.get("bulk")
    if bulk and not all(bulk[n]["bit_identical"] for n in ("parquet_to_parquet", "csv_to_parquet")):
        failures.append("bulk scoring's probabilities differ from predict_proba's")
    scenarios = [*results["closed_loop"].values(), *results.get("open_loop", {}).values()]
    ceiling = results.get("ceiling")
    if ceiling and ceiling["failed"]:
        failures.append(f"ceiling (scoring and the bare stack, 64 connections): {ceiling['failed']} failed requests")
    for s in scenarios:
        if s["failed"]:
            errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items() if v)
            failures.append(f"{s['scenario']}: {s['failed']} failed requests ({errors})")
        if s["rate"] is None and s["connections"] in LIMITED_CONNECTIONS and s["latency_ms"]["p99"] >= P99_LIMIT_MS:
            failures.append(f"{s['scenario']}: p99 {s['latency_ms']['p99']:.0f} ms ≥ {P99_LIMIT_MS:.0f} ms")
    by_id = results.get("by_id") or {}
    for name, route in by_id.get("routes", {}).items():
        if route["failed"]:
            failures.append(f"{name} (by-id run): {route['failed']} failed requests")
    for name, run in by_id.get("open_loop", {}).items():
        if run["failed"]:
            failures.append(f"{name} (by-id open loop): {run['failed']} failed requests")
    return failures


def table(results: dict[str, Any]) -> str:
    header = (
        f"{'scenario':<26}{'req/s':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}{'errors':>8}"
        f"{'refused':>9}{'wrk CPU':>9}"
    )
    lines = [header, "-" * len(header)]
    for s in [*results["closed_loop"].values(), *results.get("open_loop", {}).values()]:
        lat = s["latency_ms"]
        lines.append(
            f"{s['scenario']:<26}{s['rps']:>9.0f}"
            + "".join(f"{lat[k]:>9.2f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            + f"{s['failed']:>8}{sum(s.get('refused', {}).values()) if 'refused' in s else '':>9}"
            + f"{s['generator_cpu_cores']:>8.2f}c"
        )
    lines.append(
        "latencies in ms; open-loop latencies count from each request's scheduled send time;"
        " wrk CPU = cores the load generator used; refused = the documented 503s (deadline_exceeded,"
        " unavailable) of a closed loop beyond the scoring queue, counted apart from errors"
    )
    return "\n".join(lines)


def memory_table(memory: dict[str, Any]) -> str:
    lines = [
        f"{'workers':>7}{'total PSS':>12}{'worker PSS':>12}{'private':>10}{'+scoring':>10}{'model RSS':>11}{'model private':>15}"
    ]
    for count, run in memory.items():
        workers = run["workers"]
        if not workers:
            continue
        n = len(workers)
        lines.append(
            f"{count:>7}{run['total_pss'] / 2**20:>10.1f}Mi"
            f"{sum(w['pss'] for w in workers) / n / 2**20:>10.1f}Mi"
            f"{sum(w['private'] for w in workers) / n / 2**20:>8.1f}Mi"
            f"{sum(w['private_growth'] for w in workers) / n / 2**10:>8.0f}Ki"
            f"{sum(w['model_rss'] for w in workers) / n / 2**10:>9.0f}Ki"
            f"{sum(w['model_private'] for w in workers) / n / 2**10:>13.0f}Ki"
        )
    lines.append(
        "per-worker figures are means; private = pages only that process maps (a lone worker's"
        " model pages are its alone); +scoring = private growth under load (Python's heap)"
    )
    return "\n".join(lines)


def by_id_targets(by_id: dict[str, Any] | None) -> list[Target]:
    """The by-id targets (docs/feature-store.md). Throughput is judged closed loop, for each way of reaching the store;
    latency open loop (a closed loop's mean latency is connections ÷ throughput by Little's law, for
    any route: the closed-loop p99 is reported with that bound beside it)."""
    if not by_id:
        return []
    routes, connections = by_id["routes"], by_id["connections"]
    raw = routes["raw single"]
    workers = f", {by_id['workers']} workers" if by_id.get("workers") else ""  # results from before it was kept
    found = []
    for name, transport, ratio in (
        ("by-id single", "TCP loopback", by_id["single_ratio"]),
        ("by-id single unix", "unix socket", by_id["single_ratio_unix"]),
    ):
        found.append(
            Target(
                f"by-id ÷ raw single throughput, {connections} connections closed loop{workers}, store over {transport}",
                f"{100 * ratio:.0f} % ({routes[name]['rps']:,.0f} vs {raw['rps']:,.0f} req/s)",
                "≥ 70 %",
                ratio >= 0.70,
            )
        )
    for name, transport in (("by-id single", "TCP loopback"), ("by-id single unix", "unix socket")):
        run, raw_run = by_id["open_loop"][name], by_id["open_loop"]["raw single"]
        found.append(
            Target(
                f"by-id single p99, {connections} connections open loop at {run['rate']:,}/s "
                f"(½ raw capacity){workers}, store over {transport}",
                f"{run['p99_ms']:.2f} ms (raw {raw_run['p99_ms']:.2f} ms)",
                "< 5 ms",
                run["p99_ms"] < 5.0,
            )
        )
        fetch = run["fetch_p99_ms"]
        found.append(
            Target(
                f"store fetch p99 in that run (fetch histogram), over {transport}",
                "no fetch observed" if fetch is None else f"≤ {fetch:g} ms (bucket bound)",
                "reported",
                True,
            )
        )
    for name in ("by-id single", "by-id single unix"):
        route = routes[name]
        found.append(
            Target(
                f"{name} p99, {connections} connections closed loop (Little's law: mean latency = "
                f"{connections} ÷ throughput = {route['mean_ms_by_littles_law']:.1f} ms)",
                f"{route['p99_ms']:.2f} ms (raw {raw['p99_ms']:.2f} ms)",
                "reported",
                True,
            )
        )
    for name, transport, ratio in (
        ("by-id batch", "TCP loopback", by_id["batch_ratio"]),
        ("by-id batch unix", "unix socket", by_id["batch_ratio_unix"]),
    ):
        found.append(
            Target(
                f"by-id ÷ raw batch of {by_id['batch_rows']} rows throughput, store over {transport}",
                f"{100 * ratio:.0f} % ({routes[name]['rows_per_s']:,.0f} rows/s)",
                "reported",
                True,
            )
        )
    return found


def targets_table(found: list[Target]) -> str:
    width = max(len(t.figure) for t in found)
    lines = [f"{'figure':<{width}}  {'measured':<44}{'target':<10}"]
    for t in found:
        lines.append(f"{t.figure:<{width}}  {t.measured:<44}{t.target:<10}{'met' if t.met else 'MISSED'}")
    return "\n".join(lines)


def comparison_table(compared: dict[str, dict[str, Any]]) -> str:
    """`make perf-compare`'s table: per scenario and figure, the base's and the current median, the
    median ratio current ÷ base, its spread over rounds (min–max) and whether it is beyond the spread."""
    header = f"{'scenario':<22}{'figure':<8}{'base':>10}{'current':>10}{'ratio':>8}  {'spread':<14}verdict"
    lines = [header, "-" * len(header)]
    for name, per_figure in compared.items():
        for figure, c in per_figure.items():
            unit = "/s" if figure == "rps" else "ms"
            lines.append(
                f"{name:<22}{figure:<8}{c['base']:>8.{0 if unit == '/s' else 2}f}{unit}"
                f"{c['current']:>8.{0 if unit == '/s' else 2}f}{unit}{c['ratio']:>8.3f}  "
                f"{c['min']:.3f}–{c['max']:.3f}  {c['verdict'].upper() if c['verdict'] != 'within spread' else c['verdict']}"
            )
    lines.append(
        "ratio = median over rounds of current ÷ base (throughput: higher is better; latency: lower is better);"
        " BETTER/WORSE only when every round's ratio is on the same side of 1"
    )
    return "\n".join(lines)
