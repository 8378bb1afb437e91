"""What stream analytics add to the hub (issue 10), measured against what the hub already does, in one run.

- per viewer socket: `Tally.join` + `Tally.leave` (the analytics bookkeeping of a socket opening and
  closing) against the room's own `set.add` + `set.discard` of the same socket;
- per stream per second: the analytics report script (realtime/analytics_report.lua) against the
  viewer report script the hub already runs on the same tick (viewers_report.lua), both through
  redis-py on a private embedded Redis: steady (nothing new) and after a busy second (200 new
  viewers, 50 comments, likes).

    python bench/analytics_tick.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from livesale.embedded_redis import EmbeddedRedis  # noqa: E402
from livesale.redis_client import connect  # noqa: E402
from realtime import state  # noqa: E402
from realtime.analytics import Report, Tally, identity  # noqa: E402


def per_socket_ns(n: int) -> tuple[float, float]:
    conns = [object() for _ in range(n)]
    idents = [identity(f"user{i}") for i in range(n)]
    room: set[object] = set()
    t0 = time.perf_counter_ns()
    for c in conns:
        room.add(c)
    for c in conns:
        room.discard(c)
    base = (time.perf_counter_ns() - t0) / n
    tally = Tally(time.monotonic())
    counted: dict[object, str] = {}
    t0 = time.perf_counter_ns()
    for c, ident in zip(conns, idents, strict=True):
        room.add(c)
        counted[c] = ident
        tally.join(ident, time.monotonic())
    for c in conns:
        room.discard(c)
        tally.leave(counted.pop(c), time.monotonic())
    return base, (time.perf_counter_ns() - t0) / n


async def per_tick_us(url: str, calls: int) -> dict[str, float]:
    r = connect(url)
    out: dict[str, float] = {}
    try:
        async def timed(name: str, make: object) -> None:
            t0 = time.perf_counter()
            for i in range(calls):
                await make(i)  # type: ignore[operator]
            out[name] = (time.perf_counter() - t0) / calls * 1e6

        await timed("viewers report (existing)", lambda i: state.report_viewers(r, "bench", "p1", 2000, 5000))
        await timed("analytics report, steady", lambda i: state.report_analytics(r, "bench", "p1", Report(2000), 5000))
        minute = int(time.time() // 60)

        def busy(i: int) -> Report:
            return Report(2000, views=200, identities={f"u:{i}:{k}" for k in range(200)}, watch_ms=2_000_000,
                          comments={minute: 50}, likes={minute: 400})

        await timed("analytics report, busy second", lambda i: state.report_analytics(r, "bench", "p1", busy(i), 5000))
    finally:
        await r.aclose()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args()
    base, ours = per_socket_ns(200_000)
    print(f"per socket open+close: room set only {base:.0f} ns, with the analytics tally {ours:.0f} ns "
          f"(+{ours - base:.0f} ns)")
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as d:
        redis = EmbeddedRedis(Path(d), appendonly=False).start()
        try:
            ticks = asyncio.run(per_tick_us(redis.url, args.calls))
        finally:
            redis.stop()
    ref = ticks["viewers report (existing)"]
    for name, us in ticks.items():
        print(f"per stream per tick: {name:<32} {us:8.1f} us  ({us / ref:.2f}x the existing report)")


if __name__ == "__main__":
    main()
