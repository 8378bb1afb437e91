"""Conflation without I/O: state events keep only their latest value and leave at most once per
interval per key; likes are summed locally until the next flush (docs/design.md "Fan-out rules")."""

from __future__ import annotations

from collections.abc import Hashable


class Conflator:
    """Latest value per key, released at most every `interval_s` per key.

    A value may carry a rank (likes totals only grow): an offer ranked below what was already
    offered or sent is stale (another process's older total) and ignored.
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, bytes] = {}
        self._rank: dict[Hashable, int] = {}
        self._sent_at: dict[Hashable, float] = {}
        self._interval: dict[Hashable, float] = {}

    def offer(self, key: Hashable, payload: bytes, interval_s: float, rank: int | None = None) -> bool:
        """Keep `payload` as the latest value of `key`; False when it was stale."""
        if rank is not None:
            if rank < self._rank.get(key, rank):
                return False
            self._rank[key] = rank
        self._pending[key] = payload
        self._interval[key] = interval_s
        return True

    def due(self, now: float) -> tuple[list[tuple[Hashable, bytes]], float | None]:
        """(key, value) pairs that may be sent now, and when the next held-back one becomes due."""
        out: list[tuple[Hashable, bytes]] = []
        next_at: float | None = None
        for key in list(self._pending):
            at = self._sent_at.get(key, float("-inf")) + self._interval[key]
            if at <= now:
                out.append((key, self._pending.pop(key)))
                self._sent_at[key] = now
            elif next_at is None or at < next_at:
                next_at = at
        return out, next_at

    def latest(self) -> dict[Hashable, bytes]:
        return dict(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)


class LikeSum:
    """Likes counted in this process per stream since the last flush."""

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}

    def add(self, stream_id: str, count: int) -> None:
        if count > 0:
            self._pending[stream_id] = self._pending.get(stream_id, 0) + count

    def drain(self) -> dict[str, int]:
        out, self._pending = self._pending, {}
        return out

    def restore(self, counts: dict[str, int]) -> None:
        """Put back counts a failed flush could not write (they are retried next tick)."""
        for stream_id, n in counts.items():
            self.add(stream_id, n)
