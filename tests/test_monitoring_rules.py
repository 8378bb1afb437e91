"""The alert rules: valid for promtool, their unit tests (alerts_test.yml) pass, and every metric they
query is one a real server exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import Api
from tests.metrics_scrape import exported_names, promql_metric_names

RULES_DIR = Path(__file__).resolve().parent.parent / "monitoring" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not on PATH: `make test` installs Debian's prometheus package when run as root")
    return path


def _run(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_passes() -> None:
    """`promtool check rules monitoring/prometheus/alerts.yml` succeeds."""
    r = _run("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_check_rules_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The same check fails on a rule with a PromQL syntax error (so the check above can fail)."""
    bad = tmp_path / "bad.yml"
    bad.write_text(ALERTS.read_text().replace("livesale_sale_invariant_violation_units > 0",
                                              "livesale_sale_invariant_violation_units >"))
    r = _run("check", "rules", str(bad))
    assert r.returncode != 0


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules`: the oversell alert fires at once for the broken sale only, the writer-lag,
    stalled-writer, p99 reserve latency and Redis error alerts fire on synthetic series as written."""
    r = _run("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_required_alerts_exist() -> None:
    """The issue's five alerts are there, and the oversell one is exactly invariant-violation > 0."""
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    for name in ("LivesaleOversellInvariantBroken", "LivesaleOrderWriterLagGrowing", "LivesaleReserveLatencyHigh",
                 "LivesaleSlowConsumerStorm", "LivesaleRedisErrors"):
        assert name in rules
    assert rules["LivesaleOversellInvariantBroken"]["expr"].strip() == "livesale_sale_invariant_violation_units > 0"


async def test_alert_queries_name_only_exported_metrics(api: Api) -> None:
    """Every metric an alert expression selects is exported by a real server after a purchase."""
    s = await api.setup_sale(stock=3)
    assert (await api.reserve(s["sale_id"], "alice", "k1", 1))[0] == 201
    async with api.session.get(api.server.url + "/metrics") as r:
        exported = exported_names(await r.text())
    used = set()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            names = promql_metric_names(rule["expr"])
            assert names, rule["alert"]
            used |= names
    assert used - exported == set()
