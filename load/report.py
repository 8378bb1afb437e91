"""Reading generator output and printing the one `make load` report (no network I/O)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Entry = dict[str, Any]


def read_locust_json(path: Path | str) -> dict[tuple[str, str], Entry]:
    """Locust's `--json-file` output keyed by (request type, name). Unlike the CSV files, which Locust
    rewrites once a second, it is written after every user stopped, so its counts are final."""
    with open(path) as f:
        return {(e["method"], e["name"]): e for e in json.load(f)}


def count(stats: dict[tuple[str, str], Entry], kind: str, name: str) -> int:
    e = stats.get((kind, name))
    return int(e["num_requests"]) if e else 0


def outcomes(stats: dict[tuple[str, str], Entry], kind: str = "ORDER") -> dict[str, int]:
    return {name: int(e["num_requests"]) for (k, name), e in sorted(stats.items()) if k == kind}


def latency(e: Entry | None, q: float) -> float:
    """Percentile (ms) from Locust's response-time histogram (keys are rounded ms)."""
    if not e or not e.get("response_times"):
        return 0.0
    hist = sorted((float(k), int(v)) for k, v in e["response_times"].items())
    target = q / 100 * sum(v for _, v in hist)
    seen = 0
    for ms, n in hist:
        seen += n
        if seen >= target:
            return ms
    return hist[-1][0]


def peak_per_s(e: Entry | None) -> int:
    """Busiest second of an entry (Locust keeps per-second counts)."""
    return max((int(v) for v in (e or {}).get("num_reqs_per_sec", {}).values()), default=0)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def show_report(*, plan: dict[str, Any], swarm: dict[str, Any], locust: dict[tuple[str, str], Entry],
                sale_open_s: float, verdict: Any, problems: list[str]) -> str:
    """The one report `make load` prints."""
    lag = swarm["lag_ms"]
    orders = outcomes(locust)
    reserve = locust.get(("POST", "/api/sales/[id]/orders"))
    pay = locust.get(("POST", "/api/orders/[id]/pay"))
    reserved = orders.get("reserved", 0)
    by_type = ", ".join(f"{k} {_n(v)}" for k, v in sorted(swarm["events"].items(), key=lambda kv: -kv[1]))
    lines = [
        f"livesale load show: {plan['viewers']} viewers, {plan['buyers']} buyers, sale open {sale_open_s:.0f} s, "
        f"stock {plan['stock']} (limit {plan['per_user_limit']}/user, hold {plan['hold_s']} s), "
        f"server workers {plan['workers']}, 127.0.0.1 only",
        f"peak viewers        {_n(swarm['peak_connections'])} connected (ramp {swarm['ramp_s'] or 0:.1f} s, "
        f"connect failures {swarm['connect_failures']}, reconnects {swarm['reconnects']}, "
        f"server closes {swarm['closes'] or 'none'})",
        f"events delivered    {_n(swarm['events_per_s'])}/s ({_n(swarm['events_total'])} in {swarm['elapsed_s']:.0f} s: "
        f"{by_type})",
        f"event lag (ts)      p50 {lag['p50']:.0f} ms, p99 {lag['p99']:.0f} ms, max {lag['max']:.0f} ms "
        f"over {_n(lag['n'])} events",
        "purchase outcomes   " + (", ".join(f"{k} {_n(v)}" for k, v in orders.items()) or "none"),
        f"orders/s            {reserved / sale_open_s if sale_open_s else 0:,.1f} reserved/s while the sale was open "
        f"(peak {peak_per_s(locust.get(('ORDER', 'reserved')))}/s); "
        f"reserve requests {_n(int(reserve['num_requests']) if reserve else 0)} "
        f"(p50 {latency(reserve, 50):.0f} ms, p99 {latency(reserve, 99):.0f} ms, "
        f"failures {int(reserve['num_failures']) if reserve else 0}); "
        f"pay p99 {latency(pay, 99):.0f} ms",
        f"sale state          stock {verdict.stock}: sold {verdict.sold}, held {verdict.held}, "
        f"available {verdict.available}; orders in sql {sum(verdict.sql_orders.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(verdict.sql_orders.items())) or 'none'})",
    ]
    all_problems = list(verdict.problems) + problems
    if all_problems:
        lines.append(f"RESULT              FAIL: oversold {verdict.oversold}, lost {verdict.lost}")
        lines += [f"  - {p}" for p in all_problems]
    else:
        lines.append(f"RESULT              oversold {verdict.oversold}, lost {verdict.lost}: OK")
    return "\n".join(lines)
