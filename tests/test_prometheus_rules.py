"""deploy/prometheus/rules.yml: valid for Prometheus (promtool check rules), every alert proven by
promtool's unit tests to fire when it should and stay quiet when it should not, and documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stack.monitoring import RULES

ROOT = Path(__file__).resolve().parent.parent
UNIT_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package")
    return found


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, UNIT_TESTS)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet():
    """An alert only ever tested quiet would pass with a threshold no series reaches."""
    fired, quiet = set(), set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "never tested firing"
    assert names - quiet == set(), "never tested quiet"


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_summary_a_description_and_a_runbook_section():
    anchors = {github_anchor(line.lstrip("#")) for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    for rule in alerts():
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/runbooks.md" and anchor in anchors, rule["alert"]
