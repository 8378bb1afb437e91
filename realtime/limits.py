"""Rate limits without I/O: clocks are passed in, so tests drive time (STYLE.md #1)."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable


class TokenBucket:
    """Per-key token buckets: `burst` tokens, refilled at `rate` per second (comments: 5 then 1/s)."""

    def __init__(self, rate: float = 1.0, burst: int = 5) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: Hashable, now: float) -> bool:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def purge(self, now: float) -> None:
        """Forget keys whose bucket has refilled: they behave exactly like new keys."""
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


class WindowCap:
    """At most `cap` units per key per one-second window; the excess is not counted (likes: 50/s)."""

    def __init__(self, cap: int = 50, window_s: float = 1.0) -> None:
        self.cap = cap
        self.window_s = window_s
        self._used: dict[Hashable, tuple[int, int]] = {}  # key -> (window number, used)

    def take(self, key: Hashable, count: int, now: float) -> int:
        """How many of `count` units count."""
        window = int(now // self.window_s)
        w, used = self._used.get(key, (window, 0))
        if w != window:
            used = 0
        granted = max(0, min(count, self.cap - used))
        self._used[key] = (window, used + granted)
        return granted

    def purge(self, now: float) -> None:
        window = int(now // self.window_s)
        for k in [k for k, (w, _) in self._used.items() if w != window]:
            del self._used[k]

    def __len__(self) -> int:
        return len(self._used)


class FloodGuard:
    """True once more than `limit` bad frames arrived within `window_s` (then close 4029)."""

    def __init__(self, limit: int = 20, window_s: float = 10.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: deque[float] = deque()

    def hit(self, now: float) -> bool:
        self._hits.append(now)
        while self._hits and self._hits[0] <= now - self.window_s:
            self._hits.popleft()
        return len(self._hits) > self.limit
