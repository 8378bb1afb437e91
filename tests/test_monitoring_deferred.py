"""The hot path's deferred series (monitoring.metrics.counter/histogram) expose exactly what direct
prometheus-client updates would, and reach the registry by the end of the event-loop turn."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from monitoring import metrics as m

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Values on, just under and just over every bound, zero, and past the last bound (+Inf bucket).
VALUES = [0.0, 0.0005, 0.001, 0.0010001, 0.005, 0.01, 0.05, 0.1, 0.10001, 0.5, 1.0, 1.5, 7.0, 1e9]


def _pair(name: str) -> tuple[CollectorRegistry, Counter, Histogram]:
    reg = CollectorRegistry()
    c = Counter(f"{name}_total", "c", ["outcome"], registry=reg)
    h = Histogram(f"{name}_seconds", "h", ["route"], buckets=BUCKETS, registry=reg)
    return reg, c, h


def _exposition(reg: CollectorRegistry) -> list[str]:
    # `_created` carries each registry's own creation time: not part of what is compared.
    return [line for line in generate_latest(reg).decode().splitlines() if "_created" not in line]


def test_deferred_series_expose_what_direct_updates_do() -> None:
    direct_reg, dc, dh = _pair("t_direct")
    deferred_reg, fc, fh = _pair("t_deferred")
    for i, v in enumerate(VALUES * 3):
        outcome = ("a", "b")[i % 2]
        dc.labels(outcome).inc()
        dh.labels("/x").observe(v)
        m.counter(fc, outcome).inc()
        m.histogram(fh, "/x").observe(v)
    m.counter(fc, "a").inc(5)
    dc.labels("a").inc(5)
    m.flush()
    want = [line.replace("t_direct", "t_x") for line in _exposition(direct_reg)]
    got = [line.replace("t_deferred", "t_x") for line in _exposition(deferred_reg)]
    assert got == want
    # every value counted once, in the bucket prometheus-client itself chose
    assert deferred_reg.get_sample_value("t_deferred_seconds_count", {"route": "/x"}) == len(VALUES) * 3


async def test_deferred_updates_reach_the_registry_by_the_end_of_the_loop_turn() -> None:
    reg, c, h = _pair("t_turn")
    series, hist = m.counter(c, "a"), m.histogram(h, "/y")
    series.inc()
    hist.observe(0.02)
    assert reg.get_sample_value("t_turn_total", {"outcome": "a"}) == 0.0  # not yet: same turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert reg.get_sample_value("t_turn_total", {"outcome": "a"}) == 1.0
    assert reg.get_sample_value("t_turn_seconds_count", {"route": "/y"}) == 1.0
    assert reg.get_sample_value("t_turn_seconds_bucket", {"route": "/y", "le": "0.01"}) == 0.0
    assert reg.get_sample_value("t_turn_seconds_bucket", {"route": "/y", "le": "0.1"}) == 1.0
    # A second round in a later turn adds to the first, and a scrape's flush needs no loop turn.
    series.inc(2)
    m.flush()
    assert reg.get_sample_value("t_turn_total", {"outcome": "a"}) == 3.0


def test_a_loop_that_closed_before_its_flush_does_not_stall_the_next_one() -> None:
    reg, c, _ = _pair("t_closed")
    a, b = m.counter(c, "a"), m.counter(c, "b")

    async def touch_and_leave() -> None:
        a.inc()  # schedules a flush on this loop, which closes before running it
        asyncio.get_running_loop().stop()

    loop = asyncio.new_event_loop()
    loop.create_task(touch_and_leave())
    loop.run_forever()  # stops right after the task's step: the flush never runs here
    loop.close()
    assert reg.get_sample_value("t_closed_total", {"outcome": "a"}) == 0.0

    async def next_loop() -> None:
        b.inc()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert reg.get_sample_value("t_closed_total", {"outcome": "a"}) == 1.0
    assert reg.get_sample_value("t_closed_total", {"outcome": "b"}) == 1.0
