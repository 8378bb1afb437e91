"""What a load generator needs to know about the wire, without I/O: decoding the hub's frames,
event lag from `ts`, close-code policy, percentiles, and the show's host setup as a list of HTTP calls.

Shared by the Locust file (gevent) and the swarm (asyncio), so it imports neither."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from livesale.codes import CloseCode


def now_ms() -> float:
    return time.time() * 1000


def decode_frame(data: str | bytes) -> list[dict[str, Any]]:
    """A text frame is one event object or a JSON array of them (docs/design.md: batched writes)."""
    value = orjson.loads(data)
    if isinstance(value, list):
        return [e for e in value if isinstance(e, dict)]
    return [value] if isinstance(value, dict) else []


def lag_ms(event: dict[str, Any], received_ms: float) -> float | None:
    """Publish-to-receive delay of an event that carries `ts` (epoch ms); clocks are one host's."""
    ts = event.get("ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return max(0.0, received_ms - ts)
    return None


def should_reconnect(code: int | None) -> bool:
    """docs/design.md close codes: 4000-4499 reconnect with `since`; 4500-4999 never; 1001/1009 too."""
    if code is None or code == CloseCode.NORMAL:
        return False
    try:
        return CloseCode(code).reconnect
    except ValueError:
        return 4000 <= code < 4500


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LagStats:
    """Event lag samples, bounded by reservoir sampling (Algorithm R) so memory stays flat."""

    cap: int = 200_000
    samples: list[float] = field(default_factory=list)
    seen: int = 0

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.samples) < self.cap:
            self.samples.append(value)
        else:
            j = random.randrange(self.seen)
            if j < self.cap:
                self.samples[j] = value

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def summary(self) -> dict[str, float]:
        s = sorted(self.samples)
        return {"n": self.seen, "p50": percentile(s, 50), "p99": percentile(s, 99), "max": s[-1] if s else 0.0}


def show_setup_calls(*, stock: int, per_user_limit: int, hold_s: int, duration_s: int,
                     price_cents: int = 1999) -> tuple[str, list[tuple[str, str, dict[str, Any] | None]]]:
    """The host's HTTP calls for a show, in order, with `{stream}` to be filled in after the
    second call: product, stream, start, pin, a scheduled sale (opened later by the host)."""
    sku = f"LOAD-{os.urandom(4).hex()}"
    return sku, [
        ("POST", "/api/products", {"sku": sku, "title": "Load-test sneaker", "price_cents": price_cents}),
        ("POST", "/api/streams", {"title": "Load-test show"}),
        ("POST", "/api/streams/{stream}/start", None),
        ("POST", "/api/streams/{stream}/pin", {"sku": sku}),
        ("POST", "/api/streams/{stream}/sales", {"sku": sku, "price_cents": price_cents, "stock": stock,
                                                  "per_user_limit": per_user_limit, "duration_s": duration_s,
                                                  "hold_s": hold_s}),
    ]


def retry_delay(attempt: int, retry_after: str | None, *, base: float = 0.2, cap: float = 5.0) -> float:
    """Backoff for a 503: honour Retry-After (seconds) when given, else exponential, both capped."""
    if retry_after:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(cap, base * 2**attempt)


@dataclass(frozen=True)
class ShowPlan:
    """The show's load shape as data (load/shape.py hands it to Locust): viewers ramp, then the sale
    opens and the buyers rush in, everyone stays until `duration`, then `drain` seconds at 0 users.

    The drain matters in distributed mode: on a plain end (tick None) the master quits and waits only
    0.5 s for the workers' last stats, so the samples of users still finishing their task were lost
    from the totals (a test caught it). Scaling to 0 first lets users finish (--stop-timeout) and the
    workers report as usual."""

    viewers: int = 200
    buyers: int = 100
    ramp_rate: float = 20.0
    sale_open: float = 15.0
    spike_rate: float = 50.0
    duration: float = 60.0
    drain: float = 8.0

    @classmethod
    def from_env(cls) -> ShowPlan:
        e = os.environ.get
        return cls(int(e("LIVESALE_SHAPE_VIEWERS", cls.viewers)), int(e("LIVESALE_SHAPE_BUYERS", cls.buyers)),
                   float(e("LIVESALE_SHAPE_RAMP", cls.ramp_rate)), float(e("LIVESALE_SHAPE_SALE_OPEN", cls.sale_open)),
                   float(e("LIVESALE_SHAPE_SPIKE_RATE", cls.spike_rate)),
                   float(e("LIVESALE_SHAPE_DURATION", cls.duration)), float(e("LIVESALE_SHAPE_DRAIN", cls.drain)))

    def at(self, t: float) -> tuple[int, float, str] | None:
        """Target (users, spawn rate, phase) at time t; None once the show is over."""
        if t >= self.duration + self.drain:
            return None
        if t >= self.duration:
            return 0, 1000.0, "drain"
        if t < self.sale_open:
            return 1 + self.viewers, self.ramp_rate, "ramp"
        return 1 + self.viewers + self.buyers, self.spike_rate, "sale"
