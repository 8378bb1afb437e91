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
    """A text frame is one event object or a JSON array of them (DESIGN.md: batched writes)."""
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
    """DESIGN.md close codes: 4000-4499 reconnect with `since`; 4500-4999 never; 1001/1009 too."""
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
