"""The load generators' pure pieces: frame decoding, lag, close policy, percentiles, backoff, the plan."""

from __future__ import annotations

import pytest

from load import wire


def test_decode_frame_takes_one_event_or_a_batch() -> None:
    """A frame is one event object or a JSON array of them; anything else yields no events."""
    assert wire.decode_frame(b'{"type":"likes","total":3}') == [{"type": "likes", "total": 3}]
    assert [e["type"] for e in wire.decode_frame('[{"type":"comment"},{"type":"stock"},5]')] == ["comment", "stock"]
    assert wire.decode_frame("7") == []


def test_lag_uses_ts_and_ignores_events_without_it() -> None:
    """Lag is receive time minus `ts` (never negative); events without a numeric ts have none."""
    assert wire.lag_ms({"ts": 1000}, 1250.0) == 250.0
    assert wire.lag_ms({"ts": 2000}, 1000.0) == 0.0
    assert wire.lag_ms({"type": "likes"}, 1000.0) is None
    assert wire.lag_ms({"ts": True}, 1000.0) is None


@pytest.mark.parametrize(("code", "again"), [(4000, True), (4008, True), (4029, True), (4499, True), (1001, True),
                                             (4501, False), (4503, False), (4504, False), (1000, False), (None, False)])
def test_close_codes_follow_the_design_ranges(code: int | None, again: bool) -> None:
    """4000-4499 (and going-away) reconnect; 4500-4999, a normal close or no close frame do not."""
    assert wire.should_reconnect(code) is again


def test_percentile_is_nearest_rank() -> None:
    """p50/p99 of 1..100 are 50 and 99; an empty list gives 0."""
    values = [float(v) for v in range(1, 101)]
    assert (wire.percentile(values, 50), wire.percentile(values, 99), wire.percentile(values, 100)) == (50, 99, 100)
    assert wire.percentile([], 99) == 0.0


def test_lag_stats_stay_bounded_and_count_everything() -> None:
    """Past its cap the sample keeps a fixed size while `n` still counts every event."""
    lag = wire.LagStats(cap=100)
    lag.extend(float(v) for v in range(10_000))
    assert len(lag.samples) == 100 and lag.summary()["n"] == 10_000


def test_retry_delay_honours_retry_after_and_caps() -> None:
    """Retry-After wins when it parses; otherwise exponential backoff; both capped."""
    assert wire.retry_delay(0, "2") == 2.0
    assert wire.retry_delay(3, "soon") == 0.2 * 8
    assert wire.retry_delay(30, None) == 5.0 and wire.retry_delay(0, "999") == 5.0


def test_show_plan_ramps_then_adds_buyers_then_stops() -> None:
    """Host + viewers before the sale opens, plus the buyers after, 0 users to drain, then the end."""
    plan = wire.ShowPlan(viewers=10, buyers=4, sale_open=5, duration=9)
    assert plan.at(0) == (11, plan.ramp_rate, "ramp")
    assert plan.at(5) == (15, plan.spike_rate, "sale")
    assert plan.at(9) == (0, 1000.0, "drain")
    assert plan.at(9 + plan.drain) is None
