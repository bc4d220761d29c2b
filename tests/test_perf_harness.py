"""The load harness's own logic (no load is run here): reading wrk's output, percentiles, the
limits, /proc memory figures and the baseline comparison."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from perf import baseline, by_id, memory, overload, prediction_log, report, stats, wrk

DATA = Path(__file__).resolve().parent / "data"


def test_nearest_rank_percentiles():
    values = list(range(1, 101))
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 99.9) == 100
    assert stats.percentile(values, 100) == 100
    assert stats.percentile([7], 99.9) == 7
    assert stats.latency_summary([1000, 2000, 3000, 4000]) == {
        "p50": 2.0,
        "p90": 4.0,
        "p99": 4.0,
        "p99.9": 4.0,
        "max": 4.0,
    }
    with pytest.raises(ValueError):
        stats.percentile(values, 0)
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    assert stats.median([3, 1, 2]) == 2 and stats.median([4, 1, 2, 3]) == 2.5


def test_reads_a_real_closed_loop_wrk_run():
    raw = wrk.parse_output((DATA / "wrk-closed-loop.txt").read_text())
    result = wrk.summarize(raw, wrk.Scenario("score", 20, 2))
    assert result["requests"] == 12282
    assert result["rps"] == pytest.approx(12282 / 2.001702)
    assert result["latency_ms"] == {"p50": 2.827, "p90": 4.631, "p99": 6.525, "p99.9": 7.998, "max": 8.867}
    assert result["failed"] == 0


def test_reads_a_real_fixed_rate_wrk_run_from_its_own_latencies():
    raw = wrk.parse_output((DATA / "wrk-open-loop.txt").read_text())
    result = wrk.summarize(raw, wrk.Scenario("score", 8, 1, rate=200))
    latencies = sorted(v for thread in raw["open_loop"] for v in thread["latencies_us"])
    assert result["requests"] == len(latencies) == 210
    assert result["sent_per_s"] == pytest.approx(210 / 1.098525)
    assert result["latency_ms"]["p50"] == stats.percentile(latencies, 50) / 1000
    assert result["latency_ms"]["p99"] == stats.percentile(latencies, 99) / 1000
    assert result["latency_ms"]["max"] == latencies[-1] / 1000
    # not wrk's own histogram, which counts from the actual send
    assert result["latency_ms"]["p50"] != raw["wrk_latency_us"]["50"] / 1000


def test_errors_of_every_kind_are_counted_and_fail_the_run():
    raw = wrk.parse_output((DATA / "wrk-open-loop.txt").read_text())
    raw["errors"]["timeout"] = 2
    raw["open_loop"][0]["non_2xx"] = 3
    raw["open_loop"][1]["unmatched"] = 1
    result = wrk.summarize(raw, wrk.Scenario("score", 8, 1, rate=200))
    assert result["failed"] == 6
    failures = report.hard_failures({"closed_loop": {}, "open_loop": {"50": result}})
    assert len(failures) == 1 and "6 failed requests" in failures[0]


def test_output_without_the_scripts_line_is_an_error():
    with pytest.raises(ValueError):
        wrk.parse_output("Running 1s test @ http://127.0.0.1:8000\nRequests/sec: 10\n")


def test_fixed_rate_is_split_between_wrk_threads():
    args = wrk.command(wrk.Scenario("score", 128, 15, rate=3000), "http://127.0.0.1:8000", Path("/x/score.requests"))
    assert args[:4] == ["wrk", "-t2", "-c128", "-d15s"]
    assert args[-3:] == ["--", "/x/score.requests", "1500.000"]
    closed = wrk.command(wrk.Scenario("health", 1, 4), "http://127.0.0.1:8000", Path("/x/health.requests"))
    assert closed[1] == "-t1" and closed[-1] == "/x/health.requests"


def test_request_files(tmp_path):
    files = wrk.write_requests(tmp_path, [b'{"a":1}', b'{"a":2}'])
    assert files["score"].read_text() == 'POST /v1/fraud-score\n{"a":1}\n{"a":2}\n'
    assert files["health"].read_text() == "GET /health\n"


def closed(endpoint: str, connections: int, rps: float, p50: float, p99: float) -> dict:
    return {
        "scenario": f"{endpoint} c{connections} closed",
        "endpoint": endpoint,
        "connections": connections,
        "rate": None,
        "rps": rps,
        "failed": 0,
        "errors": {},
        "latency_ms": {"p50": p50, "p90": p50 * 1.5, "p99": p99, "p99.9": p99 * 1.5, "max": p99 * 2},
    }


def make_results() -> dict:
    """A run's figures as python -m perf records them, trimmed to what the checks read."""
    loops = {
        f"{e} c{c}": closed(e, c, rps, p50, p99)
        for e, c, rps, p50, p99 in [
            ("health", 20, 6000, 3.0, 9.0),
            ("score", 20, 5000, 3.6, 11.0),
            ("health", 64, 6400, 9.0, 18.0),
            ("score", 64, 5200, 11.0, 22.0),
        ]
    }
    return {
        "closed_loop": loops,
        "closed_loop_ratios": {
            "score_vs_health_rps": {"20": 5000 / 6000, "64": 5200 / 6400},
            "score_vs_health_rps_rounds": {"20": [0.80, 5000 / 6000, 0.85], "64": [0.79, 5200 / 6400, 0.83]},
        },
        "open_loop": {
            "50": {
                "scenario": "score c128 2600/s",
                "rate": 2600,
                "connections": 128,
                "rps": 2600,
                "failed": 0,
                "errors": {},
                "latency_ms": {"p50": 0.5, "p90": 0.9, "p99": 2.0, "p99.9": 4.0, "max": 9.0},
            }
        },
        "micro": {
            "engine": {
                "single_row_speedup": 2000.0,
                "single_row_us": {"sklearn": 4000.0, "forest": 2.0},
                "bit_identical": True,
                "rows_compared": 10000,
                "batch": {"10000": {"speedup": 3.2, "sklearn_rows_per_s": 3e5, "forest_rows_per_s": 9.6e5}},
            },
            "validation": {"compiled_us": 8.0, "jsonschema_us": 200.0, "speedup": 25.0},
            "hot_path": {"app_health_us": 4.0, "app_score_us": 17.0},
        },
        "bulk": {
            "rows": 1_000_000,
            "workers": 2,
            "sklearn_n_jobs_-1": {"seconds": 2.0, "rows_per_s": 5e5},
            "parquet_to_parquet": {"seconds": 0.6, "rows_per_s": 1.67e6, "vs_sklearn": 3.33, "bit_identical": True},
            "csv_to_parquet": {"seconds": 0.65, "rows_per_s": 1.54e6, "vs_sklearn": 3.08, "bit_identical": True},
        },
        "memory": {
            "1": {"total_pss": 50 * 2**20, "artifact_bytes": 300_000, "workers": [worker(0)]},
            "4": {"total_pss": 68 * 2**20, "artifact_bytes": 300_000, "workers": [worker(0)] * 4},
        },
    }


def slower_machine(results: dict, factor: float) -> dict:
    """Everything `factor` times slower: throughput divided, every time multiplied."""
    slow = copy.deepcopy(results)
    for scenario in [*slow["closed_loop"].values(), *slow["open_loop"].values()]:
        scenario["rps"] /= factor
        scenario["latency_ms"] = {k: v * factor for k, v in scenario["latency_ms"].items()}
    engine = slow["micro"]["engine"]
    engine["single_row_us"] = {k: v * factor for k, v in engine["single_row_us"].items()}
    slow["micro"]["validation"]["compiled_us"] *= factor
    slow["micro"]["validation"]["jsonschema_us"] *= factor
    slow["micro"]["hot_path"] = {k: v * factor for k, v in slow["micro"]["hot_path"].items()}
    return slow


def test_every_ratio_is_computed():
    assert set(baseline.ratios(make_results())) == {r.name for r in baseline.RATIOS}


def test_a_slower_but_proportional_machine_passes():
    reference = baseline.ratios(make_results())
    slow = slower_machine(make_results(), 3.0)
    assert baseline.regressions(slow, reference) == []
    assert baseline.drifts(baseline.ratios(slow), reference) == []


def with_rounds(connections: str, rounds: list[float]) -> dict:
    results = make_results()
    results["closed_loop_ratios"]["score_vs_health_rps_rounds"][connections] = rounds
    results["closed_loop_ratios"]["score_vs_health_rps"][connections] = stats.median(rounds)
    return results


def test_noise_within_the_rounds_spread_passes_the_gate():
    """The run that failed on a quiet machine: scoring ÷ /health at 20 connections 0.716 against a
    baseline of 0.826 (13 % against a 12 % tolerance), its rounds spread as such rounds do."""
    reference = {**baseline.ratios(make_results()), "score_vs_health_rps_c20": 0.826}
    noisy = with_rounds("20", [0.662, 0.716, 0.771])
    assert baseline.regressions(noisy, reference) == []
    # reported all the same, as a figure to look at
    assert [d.split(":")[0] for d in baseline.drifts(baseline.ratios(noisy), reference)] == ["score_vs_health_rps_c20"]


def test_a_regression_beyond_the_rounds_spread_fails_the_gate():
    reference = {**baseline.ratios(make_results()), "score_vs_health_rps_c20": 0.826}
    slower = with_rounds("20", [0.60, 0.62, 0.63])  # scoring lost a quarter against /health, every round
    found = baseline.regressions(slower, reference)
    assert len(found) == 1 and found[0].startswith("score_vs_health_rps_c20")


@pytest.mark.parametrize(
    ("rounds", "then", "higher", "verdict"),
    [
        ([0.80, 0.81, 0.82], 0.82, True, False),  # the baseline inside the rounds
        ([0.70, 0.75, 0.80], 0.85, True, False),  # 6 % below, the rounds spread 10 points
        ([0.70, 0.71, 0.72], 0.85, True, True),  # 15 % below, the rounds agree
        ([0.80, 0.80, 0.80], 0.83, True, False),  # within the floor
        ([2.0, 2.1, 2.2], 1.5, False, True),  # lower is better: a heavier tail, every round
        ([1.4, 1.6, 2.0], 1.5, False, False),
        ([0.5, 0.5], 0.85, True, None),  # two rounds show no spread: not judged
    ],
)
def test_the_gate_judges_rounds_against_their_own_spread(rounds, then, higher, verdict):
    assert baseline.regressed(rounds, then, higher) is verdict


def test_a_single_run_figure_is_reported_never_gated():
    reference = baseline.ratios(make_results())
    worse, better = make_results(), make_results()
    worse["open_loop"]["50"]["latency_ms"]["p99"] *= 5  # recycled workers did far worse: ×90
    better["open_loop"]["50"]["latency_ms"]["p99"] /= 3
    assert [r.split(":")[0] for r in baseline.drifts(baseline.ratios(worse), reference)] == ["open50_p99_vs_p50"]
    assert baseline.regressions(worse, reference) == []
    assert baseline.drifts(baseline.ratios(better), reference) == []


def test_baseline_file_round_trip(tmp_path):
    path = tmp_path / "baseline.json"
    baseline.write(path, baseline.ratios(make_results()), {"run": "test"})
    assert baseline.load(path) == baseline.ratios(make_results())
    assert json.loads(path.read_text())["recorded_with"] == {"run": "test"}


def test_p99_of_200_ms_at_20_or_64_connections_fails():
    results = make_results()
    assert report.hard_failures(results) == []
    results["closed_loop"]["health c20"]["latency_ms"]["p99"] = 200.0
    results["closed_loop"]["score c256"] = closed("score", 256, 5000, 50.0, 400.0)  # not limited
    assert report.hard_failures(results) == ["health c20 closed: p99 200 ms ≥ 200 ms"]


def test_a_walker_that_disagrees_with_sklearn_fails():
    results = make_results()
    results["micro"]["engine"]["bit_identical"] = False
    assert report.hard_failures(results) == ["the walker's probabilities differ from predict_proba's"]


def test_bulk_scores_that_disagree_with_sklearn_fail():
    results = make_results()
    results["bulk"]["csv_to_parquet"]["bit_identical"] = False
    assert report.hard_failures(results) == ["bulk scoring's probabilities differ from predict_proba's"]


def test_targets_are_judged():
    met = {t.figure: t.met for t in report.targets(make_results())}
    assert all(met.values()), met
    results = make_results()
    results["closed_loop_ratios"]["score_vs_health_rps"]["64"] = 0.70
    results["open_loop"]["50"]["latency_ms"]["p99"] = 2.6  # 5.2 × p50
    missed = [t.figure for t in report.targets(results) if not t.met]
    assert missed == ["scoring ÷ /health throughput, 64 connections", "open loop at 50 % of capacity: p99 ÷ p50"]


def worker(model_private_growth: int, copied: int = 0, mapped: bool = True) -> dict:
    return {
        "model_private_growth": model_private_growth,
        "model_copied": copied,
        "model_mappings": 6 if mapped else 0,
        "model_rss": 300_000 if mapped else 0,
    }


def test_model_pages_target_counts_sharing_from_two_workers_on():
    def judged(runs: dict) -> bool:
        results = {
            "closed_loop_ratios": {"score_vs_health_rps": {}},
            "memory": {n: {"artifact_bytes": 400_000, "total_pss": 1, "workers": w} for n, w in runs.items()},
        }
        return next(t for t in report.targets(results) if t.figure.startswith("model pages")).met

    assert judged({"1": [worker(300_000)], "2": [worker(0), worker(0)]})  # a lone worker's pages are its own
    assert not judged({"1": [worker(0)], "2": [worker(0), worker(8192)]})
    assert not judged({"1": [worker(0, copied=4096)], "2": [worker(0), worker(0)]})
    assert not judged({"1": [worker(0, mapped=False)], "2": [worker(0), worker(0)]})


def test_model_pages_of_a_real_read_only_mapping(tmp_path):
    path = tmp_path / "arrays.npy"
    np.save(path, np.arange(64 * 1024, dtype=np.float64))  # 512 KiB
    mapped = np.load(path, mmap_mode="r")
    assert float(mapped[::512].sum()) > 0  # touches every page
    pages = memory.file_pages(memory.parse_smaps(Path("/proc/self/smaps").read_text()), path)
    assert pages["mappings"] >= 1
    assert pages["Rss"] >= 512 * 1024
    assert pages["Anonymous"] == 0  # nothing copied out of the file
    assert pages["Private_Clean"] + pages["Private_Dirty"] == pages["Rss"]  # no other process maps it
    rollup = memory.rollup(__import__("os").getpid())
    assert rollup["Pss"] > 0 and rollup["Rss"] >= rollup["Pss"]


def test_the_ceiling_is_judged_against_the_bare_stack():
    results = make_results()
    results["ceiling"] = {"score_rps": 4600, "bare_rps": 5000, "score_vs_bare_rps": 0.92, "ratios": [0.92], "failed": 0}
    judged = {t.figure: t for t in report.targets(results)}
    ceiling = judged["scoring ÷ bare stack throughput, 64 connections"]
    assert ceiling.met and ceiling.measured.startswith("92 %")
    results["ceiling"].update(score_vs_bare_rps=0.78, failed=2)
    assert not {t.figure: t for t in report.targets(results)}["scoring ÷ bare stack throughput, 64 connections"].met
    assert any("bare stack" in f and "2 failed" in f for f in report.hard_failures(results))


def test_the_bare_stack_runs_the_same_servers_with_a_constant_app(small_model, tmp_path):
    """One request, no load: the bare app is served by the same Stack (nginx, gunicorn.conf.py)."""
    import http.client

    from perf.bare import BODY
    from perf.common import BARE_APP, start_stack

    stack = start_stack(small_model[0], "bare-key-0123456789abcdef", tmp_path / "stack.log", workers=1, app=BARE_APP)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", stack.settings.port, timeout=10)
        conn.request("POST", "/v1/fraud-score", body=b'{"Time": 1}', headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (200, BODY)  # no key, no validation: not the service
        assert reply.getheader("X-Request-ID")  # through nginx
    finally:
        stack.stop()


def test_closed_loop_can_sort_its_answers_by_kind():
    args = wrk.command(wrk.Scenario("score", 1024, 20, classify=True), "http://127.0.0.1:8000", Path("/x/s"))
    assert args[-4:] == ["--", "/x/s", "0", "classify"]  # rate 0: closed loop


def answers_every_10ms(latency_ms) -> list[tuple[int, int, str]]:
    """(arrival µs, latency µs, kind) of requests sent every 10 ms for 3 s, latency by send time."""
    return [(t + 1000 * latency_ms(t / 1e6), 1000 * latency_ms(t / 1e6), "ok") for t in range(0, 3_000_000, 10_000)]


def test_normal_is_the_worst_window_of_the_undisturbed_run():
    before = answers_every_10ms(lambda s: 5 if 1.0 <= s < 1.25 else 2)  # one noisy quarter second
    assert [w["n"] for w in overload.windows(before, 0.25)] == [25] * 12
    assert overload.normal_limit_ms(before, 0.25) == 5


def test_recovery_is_the_first_normal_window_after_which_the_run_stays_normal():
    # Slow for the first 0.6 s, then as the undisturbed run, noise included.
    after = answers_every_10ms(lambda s: 80 if s < 0.6 else 5 if 2.0 <= s < 2.25 else 2)
    assert overload.recovery_s(after, limit_ms=5, width_s=0.25) == 0.75
    assert [round(w["p99_ms"]) for w in overload.windows_per_second(overload.windows(after, 0.25))] == [80, 2, 5]
    # A lone quiet quarter second while the queue still drains is not a recovery.
    relapse = answers_every_10ms(lambda s: 2 if 0.5 <= s < 0.75 else 80 if s < 1.5 else 2)
    assert overload.recovery_s(relapse, limit_ms=5, width_s=0.25) == 1.5
    assert overload.recovery_s(answers_every_10ms(lambda s: 80), limit_ms=5, width_s=0.25) is None


def test_overload_targets_are_judged():
    run = {
        "p99_ms": 120.0,
        "scored_per_s": 950.0,
        "answers": {"ok": 19000, "deadline": 500, "unavailable": 9000, "other_5xx": 0, "other": 0},
        "timeouts": 0,
        "socket_errors": 0,
    }
    results = {
        "capacity_per_s": 1000.0,
        "open_150": run,
        "closed_1024": {**run, "p99_ms": 170.0, "answers": {**run["answers"], "other_5xx": 1}},
        "after_50": {"recovery_s": 0.5},
    }
    met = {t.figure: t.met for t in overload.targets(results, deadline_ms=150)}
    assert met == {
        "overload, open loop at 150 %: p99 of every answer": True,
        "overload, open loop at 150 %: scored throughput ÷ capacity": True,
        "overload, open loop at 150 %: timeouts, socket errors, 5xx but the 503s, other statuses": True,
        "overload, closed loop, 1,024 connections: p99 of every answer": False,
        "overload, closed loop, 1,024 connections: scored throughput ÷ capacity": True,
        "overload, closed loop, 1,024 connections: timeouts, socket errors, 5xx but the 503s, other statuses": False,
        "overload: p99 back to normal after it stops (perf/overload.py says what normal is)": True,
    }
    results["after_50"]["recovery_s"] = None  # never back to normal within the run
    assert not overload.targets(results, deadline_ms=150)[-1].met
    assert overload.targets(None, deadline_ms=150) == []


def by_id_results(single_ratio_unix: float, open_p99_unix: float) -> dict:
    def route(rps: float, p99: float) -> dict:
        return {"rps": rps, "rows_per_s": rps, "p99_ms": p99, "mean_ms_by_littles_law": 64_000 / rps, "failed": 0}

    def open_run(p99: float, fetch: float | None) -> dict:
        return {
            "rate": 3000,
            "sent_per_s": 3000.0,
            "rps": 3000.0,
            "p50_ms": 1.0,
            "p99_ms": p99,
            "failed": 0,
            "fetch_p99_ms": fetch,
        }

    return {
        "workers": 2,
        "connections": 64,
        "batch_rows": 100,
        "routes": {
            "raw single": route(6000, 19.0),
            "by-id single": route(3600, 26.0),
            "by-id single unix": route(6000 * single_ratio_unix, 21.0),
            "raw batch": route(1700, 45.0),
            "by-id batch": route(1100, 68.0),
            "by-id batch unix": route(1300, 60.0),
        },
        "open_loop": {
            "raw single": open_run(2.0, None),
            "by-id single": open_run(8.0, 0.5),
            "by-id single unix": open_run(open_p99_unix, 0.25),
        },
        "single_ratio": 0.6,
        "single_ratio_unix": single_ratio_unix,
        "batch_ratio": 0.65,
        "batch_ratio_unix": 0.76,
    }


def test_by_id_targets_judge_throughput_closed_loop_and_p99_open_loop_per_transport():
    found = {t.figure: t for t in report.by_id_targets(by_id_results(0.72, 3.1))}
    judged = {figure: t.met for figure, t in found.items() if t.target != "reported"}
    assert judged == {
        "by-id ÷ raw single throughput, 64 connections closed loop, 2 workers, store over TCP loopback": False,
        "by-id ÷ raw single throughput, 64 connections closed loop, 2 workers, store over unix socket": True,
        "by-id single p99, 64 connections open loop at 3,000/s (½ raw capacity), 2 workers, store over TCP loopback": False,
        "by-id single p99, 64 connections open loop at 3,000/s (½ raw capacity), 2 workers, store over unix socket": True,
    }
    closed = (
        "by-id single unix p99, 64 connections closed loop (Little's law: mean latency = 64 ÷ throughput = 14.8 ms)"
    )
    assert found[closed].measured == "21.00 ms (raw 19.00 ms)"  # 14.8 ms = 64 ÷ 4,320 req/s
    assert (
        found["store fetch p99 in that run (fetch histogram), over unix socket"].measured == "≤ 0.25 ms (bucket bound)"
    )
    missed = [t.figure for t in report.by_id_targets(by_id_results(0.69, 5.0)) if not t.met]
    assert len(missed) == 4


def test_the_fetch_p99_is_the_bucket_holding_it_between_two_snapshots():
    before = {0.0001: 10.0, 0.0005: 20.0, 0.001: 20.0, float("inf"): 20.0}
    after = {0.0001: 900.0, 0.0005: 1010.0, 0.001: 1020.0, float("inf"): 1020.0}
    assert by_id.bucket_quantile(before, after, 0.99) == 0.5  # 990 of the 1,000 new ones ≤ 0.5 ms
    assert by_id.bucket_quantile(before, after, 0.5) == 0.1
    assert by_id.bucket_quantile(after, after, 0.99) is None


def test_the_challenger_is_judged_on_its_median_ratio_and_shows_its_spread_and_cpu():
    results = make_results()
    results["challenger"] = {
        "connections": 64,
        "rps": {"without": 6000.0, "with": 5820.0},
        "ratio": 0.97,
        "ratio_spread": [0.94, 0.99],
        "worker_cpu_us_per_request": {"without": 210.0, "with": 216.5},
        "challenger_cpu_us_per_request": 6.5,
    }
    judged = {t.figure: t for t in report.targets(results)}
    ratio = judged["scoring throughput with a challenger ÷ without, 64 connections"]
    assert ratio.met and "rounds 94.0–99.0 %" in ratio.measured
    assert judged["the challenger's worker CPU a request (with − without)"].measured.startswith("6.5 µs")
    results["challenger"]["ratio"] = 0.949
    assert not {t.figure: t for t in report.targets(results)}[ratio.figure].met


def test_batch_rows_count_only_the_requests_that_scored():
    from perf import batch

    assert batch.scored_rps({"rps": 1500.0, "requests": 3000, "failed": 1000}) == 1000.0
    assert batch.scored_rps({"rps": 0.0, "requests": 0, "failed": 0}) == 0.0


def test_walker_routes_checks_every_route_against_predict_proba_and_prints_each(small_model, capsys):
    from perf.experiments import walker_routes

    assert walker_routes.main(["--model", str(small_model[0]), "--rows", "300", "--rounds", "1"]) == 0
    printed = capsys.readouterr().out
    for lanes in walker_routes.routes(small_model[0]):
        assert f"lanes {lanes} " in printed
    assert "lanes 0 " in printed and "predict_proba(n_jobs=1)" in printed


def prediction_log_results(single: float, added_us: float, batch_ratio: float, wait_s: float, drained: float | None):
    return {
        "single": {
            "ratio": single,
            "ratio_spread": [single - 0.02, single + 0.02],
            "worker_cpu_us_added": 4 * added_us,  # the stacks': reported, not judged
            "worker_cpu_us_added_spread": [-40.0, 60.0],
            "in_process": {"added_us": {"median": added_us, "q1": added_us - 2, "q3": added_us + 2}},
        },
        "batch": {"ratio": batch_ratio, "ratio_spread": [batch_ratio - 0.03, batch_ratio + 0.03]},
        "compactor": {
            "cpu_s_per_million_rows": 4.2,
            "largest_spool_bytes": 8 << 20,
            "longest_wait_s": wait_s,
            "drained_after_s": drained,
        },
    }


def test_the_prediction_log_targets_judge_each_figure_on_its_own():
    assert all(t.met for t in prediction_log.targets(prediction_log_results(0.97, 6.0, 0.9, 2.5, 1.5)))
    missed = [t.figure for t in prediction_log.targets(prediction_log_results(0.93, 12.0, 0.8, 2.5, None)) if not t.met]
    assert len(missed) == 4 and not any("the stacks" in figure for figure in missed)
    lagging = prediction_log.targets(prediction_log_results(0.97, 6.0, 0.9, 30.0, 1.5))
    assert [t.met for t in lagging] == [True, True, True, True, False]
    assert prediction_log.targets(None) == []


def test_the_logs_cost_in_one_process_is_the_experiments_own(small_model):
    found = prediction_log.in_process_cost(small_model[0], rounds=2)
    assert found["rounds"] == 2 and len(found["cpu_us"]["on"]) == len(found["cpu_us"]["off"]) == 2
    assert found["log_call_us"]["median"] > 0 and found["added_us"]["q1"] <= found["added_us"]["q3"]
