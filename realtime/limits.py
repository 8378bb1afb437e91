"""Rate limits without I/O: clocks are passed in, so tests drive time (CONTRIBUTING.md #1)."""

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


class SocketCaps:
    """Open viewer sockets per user and per client address, at most `per_user` and `per_ip` of each
    (docs/limits.md). Counted per process: with N processes a user may hold up to N x `per_user`."""

    def __init__(self, per_user: int = 10, per_ip: int = 500) -> None:
        self.per_user = per_user
        self.per_ip = per_ip
        self._users: dict[str, int] = {}
        self._ips: dict[str, int] = {}

    def admit(self, user: str | None, ip: str | None) -> str | None:
        """Count a new socket in, or name the cap it would exceed ("ws_per_user", "ws_per_ip")."""
        if user is not None and self._users.get(user, 0) >= self.per_user:
            return "ws_per_user"
        if ip is not None and self._ips.get(ip, 0) >= self.per_ip:
            return "ws_per_ip"
        if user is not None:
            self._users[user] = self._users.get(user, 0) + 1
        if ip is not None:
            self._ips[ip] = self._ips.get(ip, 0) + 1
        return None

    def release(self, user: str | None, ip: str | None) -> None:
        """A socket `admit` counted in is closed."""
        for counts, key in ((self._users, user), (self._ips, ip)):
            if key is not None:
                left = counts[key] - 1
                if left:
                    counts[key] = left
                else:
                    del counts[key]

    def __len__(self) -> int:
        return len(self._users) + len(self._ips)
