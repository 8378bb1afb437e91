"""Audience figures of one stream in one process, counted without I/O between two ticks of the hub
(docs/api.md "Stream analytics"). The hub's viewer-report tick takes what a `Tally` counted and adds
it to the stream's global figures in Redis (analytics_report.lua), so a viewer joining, commenting or
liking costs a few dict operations here and nothing on the fan-out path.

Who counts: every viewer socket but the stream's host's own. A viewer's identity is their user id
when signed in, else their connection (docs/api.md: unique viewers are distinct identities).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


def identity(user_id: str | None) -> str:
    """A signed-in viewer is one identity however many sockets they open; each anonymous socket is one."""
    return "u:" + user_id if user_id is not None else "a:" + secrets.token_hex(8)


def minute_of(ts_ms: int) -> int:
    """The per-minute bucket (minutes since the epoch) of a time in epoch ms."""
    return ts_ms // 60_000


@dataclass
class Report:
    """What one tick adds to the stream's figures."""

    open: int  # counted sockets open in this process now (a level, not an increment)
    views: int = 0  # sockets opened since the last tick
    identities: set[str] = field(default_factory=set)  # identities seen since the last tick (for the HLL)
    watch_ms: int = 0  # viewer-milliseconds accrued since the last tick
    comments: dict[int, int] = field(default_factory=dict)  # minute -> accepted comments
    likes: dict[int, int] = field(default_factory=dict)  # minute -> accepted likes

    def empty(self) -> bool:
        return not (self.views or self.identities or self.watch_ms or self.comments or self.likes)


class Tally:
    """One room's counted viewers and what they did since the last report.

    Watch time accrues per distinct identity connected (two tabs of one user watch once), as
    distinct-identities x elapsed time, updated at every join, leave and report: O(1) per event. It
    accrues only while the stream is live (`set_live`): time in a scheduled stream's waiting room or
    on an ended stream's page is not watching the show."""

    def __init__(self, now: float, live: bool = True) -> None:
        self.refs: dict[str, int] = {}  # identity -> its counted sockets open here
        self.open = 0
        self.live = live
        self._since = now
        self._watch_s = 0.0
        self._pending = Report(0)

    def _accrue(self, now: float) -> None:
        if now > self._since and self.live:
            self._watch_s += len(self.refs) * (now - self._since)
        self._since = max(self._since, now)

    def set_live(self, live: bool, now: float) -> None:
        """The stream went live or stopped being live (from its `stream` event, or the status each
        report reads back)."""
        if live != self.live:
            self._accrue(now)
            self.live = live

    def join(self, ident: str, now: float) -> None:
        self._accrue(now)
        self.refs[ident] = self.refs.get(ident, 0) + 1
        self.open += 1
        self._pending.views += 1
        self._pending.identities.add(ident)

    def leave(self, ident: str, now: float) -> None:
        self._accrue(now)
        left = self.refs.get(ident, 0) - 1
        if left > 0:
            self.refs[ident] = left
        else:
            self.refs.pop(ident, None)
        self.open -= 1

    def comment(self, ts_ms: int) -> None:
        m = minute_of(ts_ms)
        self._pending.comments[m] = self._pending.comments.get(m, 0) + 1

    def likes(self, n: int, ts_ms: int) -> None:
        if n > 0:
            m = minute_of(ts_ms)
            self._pending.likes[m] = self._pending.likes.get(m, 0) + n

    def take(self, now: float) -> Report:
        """What happened since the last take, and the open count now; the tally starts afresh."""
        self._accrue(now)
        report, self._pending = self._pending, Report(0)
        report.open = self.open
        whole_ms = int(self._watch_s * 1000)
        report.watch_ms = whole_ms
        self._watch_s -= whole_ms / 1000
        return report

    def restore(self, report: Report) -> None:
        """A report Redis did not take: counted again with the next one."""
        p = self._pending
        p.views += report.views
        p.identities |= report.identities
        self._watch_s += report.watch_ms / 1000
        for src, dst in ((report.comments, p.comments), (report.likes, p.likes)):
            for m, n in src.items():
                dst[m] = dst.get(m, 0) + n
