"""`make perf-compare`'s logic (no load is run here): ratios of recorded rounds, their spread, the
verdict, the table, and which revision BASE defaults to (in a real git repository)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from perf import compare, report, stats

DATA = Path(__file__).resolve().parent / "data"


def recorded() -> list[dict]:
    """Three rounds of a real run (identical code on both sides, a busy machine), trimmed."""
    return json.loads((DATA / "perf-compare-rounds.json").read_text())["rounds"]


def test_each_figure_is_the_median_of_the_rounds_ratios_with_their_min_max():
    rounds = recorded()
    compared = compare.compare(rounds)
    assert set(compared) == set(rounds[0])
    rps = compared["score c64 closed"]["rps"]
    ratios = [r["score c64 closed"]["current"]["rps"] / r["score c64 closed"]["base"]["rps"] for r in rounds]
    assert rps["ratios"] == ratios
    assert rps["ratio"] == stats.median(ratios)
    assert (rps["min"], rps["max"]) == (min(ratios), max(ratios))
    assert rps["min"] < 1 < rps["max"] and rps["verdict"] == "within spread"
    p99 = compared["score c64 closed"]["p99"]
    assert p99["base"] == stats.median(r["score c64 closed"]["base"]["latency_ms"]["p99"] for r in rounds)


def scaled(rounds: list[dict], figure_factors: dict[str, list[float]]) -> list[dict]:
    """The current side's figures multiplied, round by round."""
    out = copy.deepcopy(rounds)
    for index, this_round in enumerate(out):
        for scenario in this_round.values():
            base, current = scenario["base"], scenario["current"]
            current["rps"] = base["rps"] * figure_factors["rps"][index]
            for p in ("p50", "p99"):
                current["latency_ms"][p] = base["latency_ms"][p] * figure_factors[p][index]
    return out


def test_a_difference_beyond_the_spread_is_flagged_in_the_right_direction():
    faster = scaled(recorded(), {"rps": [1.3, 1.2, 1.25], "p50": [0.8, 0.9, 0.85], "p99": [1.2, 1.1, 1.3]})
    c = compare.compare(faster)["health c1 closed"]
    assert c["rps"]["ratio"] == pytest.approx(1.25) and c["rps"]["verdict"] == "better"
    assert c["p50"]["ratio"] == pytest.approx(0.85) and c["p50"]["verdict"] == "better"  # lower latency
    assert c["p99"]["ratio"] == pytest.approx(1.2) and c["p99"]["verdict"] == "worse"


def test_a_difference_within_the_spread_is_not_flagged():
    mixed = scaled(recorded(), {"rps": [1.4, 0.98, 1.3], "p50": [1.0, 1.0, 1.0], "p99": [0.7, 1.01, 0.8]})
    c = compare.compare(mixed)["score c1 closed"]
    assert c["rps"]["ratio"] == pytest.approx(1.3) and c["rps"]["verdict"] == "within spread"
    assert c["p50"]["verdict"] == "within spread"  # equal is no difference
    assert c["p99"]["verdict"] == "within spread"


def test_the_table_shows_every_figure_with_ratio_spread_and_verdict():
    faster = scaled(recorded(), {"rps": [1.3, 1.2, 1.25], "p50": [1.0, 1.0, 1.0], "p99": [0.7, 1.01, 0.8]})
    text = report.comparison_table(compare.compare(faster))
    line = next(x for x in text.splitlines() if x.startswith("score c64 closed") and " rps " in x)
    assert "1.250" in line and "1.200–1.300" in line and line.endswith("BETTER")
    p99 = next(x for x in text.splitlines() if x.startswith("score c64 closed") and " p99 " in x)
    assert p99.endswith("within spread")
    assert len([x for x in text.splitlines() if " closed " in x]) == 4 * 3


def test_scenarios_are_make_perfs_closed_loop_ones():
    plan = compare.scenarios(["score", "health"], [1, 64], 2.0)
    assert [s.name for s in plan] == ["score c1 closed", "health c1 closed", "score c64 closed", "health c64 closed"]
    assert all(s.rate is None and s.duration_s == 2.0 for s in plan)


def test_fewer_than_three_rounds_are_refused():
    with pytest.raises(SystemExit):
        compare.main(["--rounds", "2"])


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name)
    git(repo, "add", name)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD")


def test_base_defaults_to_where_the_branch_left_main_or_head_1_on_main(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    first, second = commit(repo, "a"), commit(repo, "b")
    assert compare.default_base(repo) == first  # on main: HEAD~1

    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, "c")
    feature = commit(repo, "d")
    assert compare.default_base(repo) == second  # on a branch: the merge base with main

    git(repo, "checkout", "-q", "main")
    after = commit(repo, "e")  # main moved on; the branch merges it in
    git(repo, "checkout", "-q", "feature")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "merge", "-q", "--no-edit", "main")
    assert compare.default_base(repo) == after

    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--ff-only", "feature")  # merged: HEAD is on main again
    assert compare.default_base(repo) == git(repo, "rev-parse", "HEAD~1")
    assert compare.resolve(repo, first[:7]) == first
    assert compare.resolve(repo, "feature~1") == git(repo, "rev-parse", "HEAD~1")
    assert compare.default_base(repo) == feature  # HEAD~1 of a merge is its first parent: name BASE then
