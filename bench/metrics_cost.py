"""What our metric calls cost per request, with monitoring.metrics.ENABLED on and off (issue 4).

A bounded microbenchmark, no I/O: it times exactly the metric work the hot paths do, behind the same
`if m.ENABLED:` checks, in this process:

  reserve    per purchase request: the HTTP middleware's route label, request counter and latency
             histogram, plus the reserve handler's outcome counter and latency histogram
  fanout     per flushed batch of a room: events-sent counters (one inc(n) per event, whatever the
             number of viewers) and one publish->send lag observation per stream-log event

It runs once in single-process mode and once in prometheus-client's multiprocess mode (what
`--workers N` uses: values live in mmap files), each in a fresh interpreter because the mode is chosen
when prometheus_client is imported. The end-to-end numbers come from `make bench-inventory`
(its `ours` and `ours --no-metrics` phases); this says where the difference comes from.

Run: .venv/bin/python bench/metrics_cost.py [--n 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _measure(n: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from monitoring import metrics as m

    route, method, status, outcome = "/api/sales/{id}/orders", "POST", "201", "reserved"

    # The series the hot path keeps (monitoring.metrics.counter/histogram: deferred to the end of the
    # loop turn in one process, prometheus-client's own children with --workers N); the flush they
    # cost is counted too, once per 16 requests (a spike answers ~13-50 requests per loop turn).
    outcomes, latency = m.counter(m.RESERVE_OUTCOMES, outcome), m.histogram(m.RESERVE_LATENCY)
    requests, http_latency = m.counter(m.HTTP_REQUESTS, route, method, status), m.histogram(m.HTTP_LATENCY, route, method)

    turn = [0]

    def reserve_request() -> None:
        start = time.perf_counter()
        if m.ENABLED:
            outcomes.inc()
            latency.observe(time.perf_counter() - start)
        if m.ENABLED:
            requests.inc()
            http_latency.observe(time.perf_counter() - start)
            turn[0] += 1
            if turn[0] == 16:
                turn[0] = 0
                m.flush()

    kinds = ("comment", "comment", "likes", "stock", "viewers")
    viewers = 10_000

    def fanout_batch() -> None:
        if m.ENABLED:
            for kind in kinds:
                m.WS_EVENTS_SENT.labels(kind).inc(viewers)
            now_ms = time.time() * 1000
            for ts in (now_ms - 3, now_ms - 2):  # the two comments carry a publish timestamp
                m.WS_PUBLISH_LAG.observe(max(0.0, now_ms - ts) / 1000)

    out = {}

    async def timed() -> None:  # in an event loop, as the server: deferred series flush per loop turn
        for name, fn in (("reserve", reserve_request), ("fanout", fanout_batch)):
            for enabled in (True, False):
                m.ENABLED = enabled
                for _ in range(n // 10):  # warm up (label children created, caches hot)
                    fn()
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    fn()
                out[f"{name}_{'on' if enabled else 'off'}_ns"] = (time.perf_counter_ns() - t0) / n
                m.flush()

    asyncio.run(timed())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="calls per measurement (bounded)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    n = max(1000, min(args.n, 2_000_000))
    if args.child:
        print(json.dumps(_measure(n)))
        return 0
    rows = []
    for mode in ("single process", "multiprocess (--workers N)"):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory(prefix="livesale-metrics-bench-") as d:
            if mode.startswith("multi"):
                env["PROMETHEUS_MULTIPROC_DIR"] = d
            r = subprocess.run([sys.executable, __file__, "--child", "--n", str(n)], env=env, check=True,
                               capture_output=True, text=True, timeout=300)
        rows.append((mode, json.loads(r.stdout)))
    print(f"metric cost per call, {n:,} calls each (ns; 'off' is the `if m.ENABLED` check alone)")
    print(f"{'mode':30} {'reserve on':>11} {'reserve off':>12} {'fanout on':>10} {'fanout off':>11}")
    for mode, v in rows:
        print(f"{mode:30} {v['reserve_on_ns']:11.0f} {v['reserve_off_ns']:12.0f} "
              f"{v['fanout_on_ns']:10.0f} {v['fanout_off_ns']:11.0f}")
    print("fanout = one flushed batch of 5 events (2 comments, likes, stock, viewers) to a room of "
          "10,000 viewers: the cost does not grow with viewers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
