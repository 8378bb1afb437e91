"""The Grafana dashboard: valid dashboard JSON, and every query selects metrics a real server exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import Api
from tests.metrics_scrape import exported_names, promql_metric_names

DASHBOARD = Path(__file__).resolve().parent.parent / "monitoring" / "grafana" / "livesale.json"
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap"}


def _load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def _exprs(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(d) for t in p.get("targets", [])]


def test_dashboard_has_the_grafana_schema_fields() -> None:
    """Title, uid, schemaVersion, a Prometheus datasource variable, and panels with ids, grid positions,
    datasource and targets (refId + expr) as Grafana's dashboard model requires."""
    d = _load()
    assert isinstance(d["title"], str) and d["title"]
    assert isinstance(d["uid"], str) and 0 < len(d["uid"]) <= 40
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(d)]
    assert len(ids) == len(set(ids))
    for p in _panels(d):
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")) and g["x"] + g["w"] <= 24, p["title"]
        assert p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in PANEL_TYPES, p["type"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"]


def test_dashboard_covers_what_an_operator_watches() -> None:
    """Viewers, fan-out rate and lag, purchase outcomes, stock per sale, order-writer lag, error rates and
    media sessions and dropped frames each have a panel."""
    used = set().union(*(promql_metric_names(e) for e in _exprs(_load())))
    for name in ("livesale_ws_connections", "livesale_ws_events_sent_total", "livesale_ws_events_dropped_total",
                 "livesale_ws_publish_lag_seconds_bucket", "livesale_ws_slow_consumer_closes_total",
                 "livesale_reserve_total", "livesale_reserve_duration_seconds_bucket", "livesale_payments_total",
                 "livesale_sale_units", "livesale_sale_invariant_violation_units", "livesale_order_writer_pending",
                 "livesale_sql_write_duration_seconds_bucket", "livesale_http_requests_total",
                 "livesale_redis_errors_total", "livesale_media_viewers", "livesale_media_frames_dropped_total"):
        assert name in used, name


async def test_dashboard_queries_name_only_exported_metrics(api: Api) -> None:
    """After a purchase, a payment, a decline and a cancel, the server exports every metric the
    dashboard queries (histogram _bucket and counter _total names included)."""
    s = await api.setup_sale(stock=3)
    st, a = await api.reserve(s["sale_id"], "alice", "k1", 1)
    assert st == 201
    st, b = await api.reserve(s["sale_id"], "bob", "k1", 1)
    assert st == 201
    for user, order, method, want in (("alice", a, "pm_card_visa", 200), ("bob", b, "pm_card_chargeDeclined", 402)):
        st, _ = await api.call("POST", f"/api/orders/{order['id']}/pay", token=api.server.token(user),
                               json={"payment_method": method})
        assert st == want
    assert (await api.call("POST", f"/api/orders/{b['id']}/cancel", token=api.server.token("bob")))[0] == 200
    async with api.session.get(api.server.url + "/metrics") as r:
        exported = exported_names(await r.text())
    for expr in _exprs(_load()):
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)


def test_unknown_metric_in_a_query_is_caught() -> None:
    """The name extraction sees a misspelt metric behind functions, labels, ranges and Grafana variables."""
    names = promql_metric_names(
        'histogram_quantile(0.99, sum by (le, route) (rate(livesale_http_request_duraton_seconds_bucket'
        '{route=~"/api/.*"}[$__rate_interval]))) / on (route) group_left livesale_up or vector(0)')
    assert names == {"livesale_http_request_duraton_seconds_bucket", "livesale_up"}
