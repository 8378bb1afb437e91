"""The per-process hub: rooms of local viewers, one Redis pub/sub subscription per process, and the
per-tick flushes (docs/design.md "Fan-out rules").

A process subscribes to `stream:{id}` when the stream gets its first local viewer and lets go of
it a grace period after the last one left. Every message on a channel is a complete JSON event:
the room parses it once (for its type, seq and ts), keeps its bytes, and per flush tick writes one
frame (a JSON array when several events are due) to every local viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis import exceptions as rx
from redis.asyncio.client import PubSub

from livesale.bus import STATE_TYPES, channel, now_ms
from livesale.codes import CloseCode
from livesale.redis_client import REDIS_DOWN, is_cluster, refuses_writes
from livesale.services import Services
from livesale.tasks import pause, raise_if_cancelling
from monitoring import metrics as m
from realtime import state
from realtime.analytics import Tally, identity
from realtime.coalesce import Conflator, LikeSum
from realtime.conn import Batch, Conn, Item
from realtime.limits import TokenBucket, WindowCap
from realtime.protocol import WordFilter

log = logging.getLogger("livesale.realtime")

SnapshotSource = Callable[[Services, str], Awaitable[dict[str, Any] | None]]

# A lost Redis, and one that answers but refuses writes (OOM, READONLY, ...): the hub retries both
# later, as the HTTP API answers both with 503. A loop that died on a refusal would stop flushing
# likes or reporting viewers for good. Catch these, then `raise_unless_refused` (other reply errors are bugs).
REDIS_UNUSABLE = (*REDIS_DOWN, rx.ResponseError)


def raise_unless_refused(exc: BaseException) -> None:
    if isinstance(exc, rx.ResponseError) and not refuses_writes(exc):
        raise exc


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class HubConfig:
    """Tunables; the defaults are docs/design.md's. `from_env` reads LIVESALE_WS_* overrides."""

    # Stream-log events wait at most this long to share a frame; the first after a quiet spell goes at
    # once. 15 ms: at 50 events/s nearly every event leaves at once, at 200/s about 3 share a frame.
    flush_s: float = 0.015
    likes_interval_s: float = 0.25
    stock_interval_s: float = 0.1
    viewers_interval_s: float = 1.0
    viewers_ttl_s: float = 5.0  # a process that stops reporting drops out of the count after this
    outbound_bytes: int = 256 * 1024
    slow_close_s: float = 3.0
    heartbeat_s: float = 20.0
    recent_comments: int = 50
    comment_rate: float = 1.0
    comment_burst: int = 5
    likes_per_s: int = 50
    unsubscribe_grace_s: float = 5.0
    connect_concurrency: int = 32  # snapshots built at once (each takes a few Redis round trips)
    blocked_words: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls) -> HubConfig:
        words = os.environ.get("LIVESALE_BLOCKED_WORDS", "")
        return cls(
            outbound_bytes=int(_env_float("LIVESALE_WS_OUTBOUND_BYTES", cls.outbound_bytes)),
            slow_close_s=_env_float("LIVESALE_WS_SLOW_CLOSE_S", cls.slow_close_s),
            flush_s=_env_float("LIVESALE_WS_FLUSH_S", cls.flush_s),
            blocked_words=tuple(w for w in words.split(",") if w.strip()),
        )


def _state_key(kind: str, event: dict[str, Any]) -> Hashable:
    return ("stock", str(event.get("sale"))) if kind == "stock" else kind


class Room:
    """Local viewers of one stream and what is waiting for the next flush."""

    def __init__(self, hub: Hub, stream_id: str) -> None:
        self.hub = hub
        self.stream_id = stream_id
        self.conns: set[Conn] = set()
        self.log: list[Item] = []
        self.state = Conflator()
        self.lag_ts: list[int] = []
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._flushed_at = 0.0
        self.drop_at: float | None = None
        self.tally = Tally(time.monotonic())  # audience figures since the last viewers tick
        self.counted: dict[Conn, str] = {}  # viewer sockets that count (not the host's) -> identity

    def on_message(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
            kind = event["type"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.warning("dropping a non-event message on %s", channel(self.stream_id))
            return
        if m.ENABLED and isinstance(event.get("ts"), int):
            self.lag_ts.append(event["ts"])
        cfg = self.hub.cfg
        if kind in STATE_TYPES:
            if kind == "likes":
                total = event.get("total")
                self.state.offer("likes", data, cfg.likes_interval_s, total if isinstance(total, int) else None)
            else:
                interval = cfg.stock_interval_s if kind == "stock" else cfg.viewers_interval_s
                self.state.offer(_state_key(kind, event), data, interval)
            self._schedule(0.0)
        else:
            if kind == "stream":  # watch time counts while the stream is live
                self.tally.set_live(event.get("status") == "live", time.monotonic())
            seq = event.get("seq")
            self.log.append(Item(kind, None, data, seq if isinstance(seq, int) else None))
            # Leading edge goes out at once; events arriving within flush_s of a flush share the next frame.
            self._schedule(max(0.0, self._flushed_at + cfg.flush_s - asyncio.get_running_loop().time()))

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self.flush)

    def flush(self) -> None:
        self._timer = None
        loop_now = self._flushed_at = asyncio.get_running_loop().time()
        due, next_at = self.state.due(loop_now)
        items = self.log
        self.log = []
        for key, payload in due:
            items.append(Item(key if isinstance(key, str) else key[0], key, payload))  # type: ignore[index]
        if next_at is not None:
            self._schedule(next_at - loop_now)
        if not items:
            return
        batch = Batch.of(tuple(items))
        for c in list(self.conns):
            c.deliver(batch, loop_now)
        if m.ENABLED:
            self._count(items)

    def _count(self, items: list[Item]) -> None:
        n = len(self.conns)
        if n:
            for it in items:
                m.WS_EVENTS_SENT.labels(it.kind).inc(n)
        now_ms = time.time() * 1000
        for ts in self.lag_ts:
            m.WS_PUBLISH_LAG.observe(max(0.0, now_ms - ts) / 1000)
        self.lag_ts.clear()


class Hub:
    def __init__(self, svc: Services, snapshot_source: SnapshotSource, cfg: HubConfig) -> None:
        self.svc = svc
        self.snapshot_source = snapshot_source
        self.cfg = cfg
        self.proc = secrets.token_hex(8)
        self.rooms: dict[str, Room] = {}
        self.likes = LikeSum()
        self.comment_limit = TokenBucket(cfg.comment_rate, cfg.comment_burst)
        self.like_cap = WindowCap(cfg.likes_per_s)
        self.words = WordFilter(cfg.blocked_words)
        self.closing: set[asyncio.Task[None]] = set()
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub_lock = asyncio.Lock()
        # On Redis Cluster, rooms are sharded pub/sub (SSUBSCRIBE on the master of the stream's slot):
        # a classic PUBLISH there is copied to every node of the cluster (docs/cluster.md).
        self._sharded = is_cluster(svc.redis)
        self._stopped = False
        self.connecting = asyncio.Semaphore(cfg.connect_concurrency)

    async def start(self) -> None:
        self._pubsub = self.svc.redis.pubsub()
        if not self._sharded:
            # A private channel gives the pub/sub connection a subscription before any viewer arrives.
            await self._pubsub.subscribe(f"realtime:proc:{self.proc}")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._likes_loop()),
                       loop.create_task(self._viewers_loop())]

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for room in list(self.rooms.values()):
            for c in list(room.conns):
                c.close(CloseCode.SERVER_RESTARTING)
        if self.closing:
            await asyncio.wait(self.closing, timeout=3)
        for t in self._tasks:
            t.cancel()
        # Bounded: a loop that does not end (a cancel lost inside a library) must not hang shutdown.
        _, stuck = await asyncio.wait(self._tasks, timeout=5)
        for t in stuck:
            log.error("hub task %s did not stop within 5 s of its cancel; left behind", t.get_name())
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.error("hub task %s failed", t.get_name(), exc_info=t.exception())
        await self._flush_likes()
        for room in list(self.rooms.values()):
            with contextlib.suppress(*REDIS_UNUSABLE):
                await state.report_viewers(self.svc.redis, room.stream_id, self.proc, 0, 0)
                await self._report_analytics(room)
        if self._pubsub is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await self._pubsub.aclose()

    # --- rooms
    async def join(self, conn: Conn, *, counted: bool = True, live: bool = True) -> Room:
        """Add a viewer socket to its stream's room; `counted` False for the host's own sockets,
        which never count in the stream's figures (docs/api.md "Stream analytics"); `live`, whether
        the stream is live, starts a new room's watch-time clock (the room's ticks keep it current)."""
        room = self.rooms.get(conn.stream_id)
        if room is None:
            room = self.rooms[conn.stream_id] = Room(self, conn.stream_id)
            room.tally.live = live
            assert self._pubsub is not None
            try:
                async with self._pubsub_lock:
                    await self._subscribe(channel(conn.stream_id))
            except BaseException:
                del self.rooms[conn.stream_id]
                raise
        room.drop_at = None
        room.conns.add(conn)
        if counted:
            ident = room.counted[conn] = identity(conn.user.id if conn.user is not None else None)
            room.tally.join(ident, time.monotonic())
        if m.ENABLED:
            m.WS_CONNECTIONS.inc()
        await asyncio.wait_for(asyncio.shield(room.subscribed), 5)
        return room

    def leave(self, conn: Conn) -> None:
        room = self.rooms.get(conn.stream_id)
        if room is None or conn not in room.conns:
            return
        room.conns.discard(conn)
        ident = room.counted.pop(conn, None)
        if ident is not None:
            room.tally.leave(ident, time.monotonic())
        if m.ENABLED:
            m.WS_CONNECTIONS.dec()
        if not room.conns:
            room.drop_at = time.monotonic() + self.cfg.unsubscribe_grace_s

    def note_comment(self, stream_id: str) -> None:
        """An accepted comment, for the stream's figures (flushed with the next viewers tick)."""
        room = self.rooms.get(stream_id)
        if room is not None:
            room.tally.comment(now_ms())

    async def _report_analytics(self, room: Room) -> None:
        report = room.tally.take(time.monotonic())
        try:
            _, status = await state.report_analytics(self.svc.redis, room.stream_id, self.proc, report,
                                                     int(self.cfg.viewers_ttl_s * 1000))
        except BaseException:
            room.tally.restore(report)
            raise
        room.tally.set_live(status == "live", time.monotonic())

    async def _drop_idle_rooms(self) -> None:
        now = time.monotonic()
        assert self._pubsub is not None
        for sid, room in list(self.rooms.items()):
            if room.drop_at is None or room.drop_at > now or room.conns:
                continue
            async with self._pubsub_lock:
                # Checked again once the lock is ours: a viewer may have joined (or a new room been
                # made) while we waited. From `del` on, a join makes a new room whose SUBSCRIBE queues
                # behind this lock, so it goes out after our UNSUBSCRIBE, never before it.
                if self.rooms.get(sid) is not room or room.conns or room.drop_at is None:
                    continue
                del self.rooms[sid]
                if self._sharded:
                    await self._pubsub.sunsubscribe(channel(sid))  # type: ignore[attr-defined]
                else:
                    await self._pubsub.unsubscribe(channel(sid))
            try:
                await state.report_viewers(self.svc.redis, sid, self.proc, 0, 0)
                await self._report_analytics(room)  # its last figures, and no open sockets
            except REDIS_UNUSABLE as exc:
                # The entry expires on its own (viewers_ttl_s); the other rooms still get dropped.
                raise_if_cancelling()
                raise_unless_refused(exc)
                if m.ENABLED:
                    m.REDIS_ERRORS.labels("ws_viewers").inc()

    async def _subscribe(self, ch: str) -> None:
        assert self._pubsub is not None
        if self._sharded:
            await self._pubsub.ssubscribe(ch)  # type: ignore[attr-defined]
        else:
            await self._pubsub.subscribe(ch)

    async def _next_message(self) -> dict[str, Any] | None:
        assert self._pubsub is not None
        if not self._sharded:
            return await self._pubsub.get_message(timeout=1.0)
        if not self.rooms:  # no shard subscription yet: nothing to read from
            await pause(0.05)
            return None
        return await self._pubsub.get_sharded_message(timeout=1.0)  # type: ignore[attr-defined,no-any-return]

    async def _resubscribe(self, ch: str) -> None:
        for attempt in range(50):
            try:
                async with self._pubsub_lock:
                    sid = ch[7:]
                    if sid in self.rooms:
                        await self._subscribe(ch)
                return
            except (*REDIS_DOWN, rx.ResponseError) as exc:  # the slot map not settled yet: MOVED, TRYAGAIN
                raise_if_cancelling()
                log.warning("resubscribing %s after its slot moved failed (%r); retrying", ch, exc)
                await pause(min(0.05 * (attempt + 1), 1.0))

    def close_conn(self, conn: Conn, code: CloseCode) -> None:
        """Conn.on_close: count it, stop delivering to it, send the close frame in the background."""
        self.leave(conn)
        if m.ENABLED:
            m.WS_CLOSES.labels(str(int(code))).inc()
            if code is CloseCode.SLOW_CONSUMER:
                m.WS_SLOW_CLOSES.inc()
        t = conn.closing = asyncio.get_running_loop().create_task(conn.aclose(code))
        self.closing.add(t)
        t.add_done_callback(self.closing.discard)

    # --- background loops
    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            # A bounded wait, and a look at our own cancellation around it: a stop that lands while
            # redis-py re-establishes the subscription after a Redis restart was seen swallowed there
            # (the task left 'cancelling' inside get_message(timeout=None), the app's shutdown hung).
            raise_if_cancelling()
            try:
                msg = await self._next_message()
            except REDIS_DOWN as exc:
                raise_if_cancelling()
                log.warning("pub/sub read failed (%s); retrying", exc.__class__.__name__)
                if m.ENABLED:
                    m.REDIS_ERRORS.labels("ws_pubsub").inc()
                await pause(0.5)
                continue
            if msg is None:
                continue  # (the loop's first line honours a pending cancel)
            ch = msg["channel"]
            sid = ch[7:].decode() if ch.startswith(b"stream:") else None
            room = self.rooms.get(sid) if sid is not None else None
            if room is None:
                continue
            if msg["type"] in ("message", "smessage"):
                room.on_message(msg["data"])
            elif msg["type"] in ("subscribe", "ssubscribe") and not room.subscribed.done():
                room.subscribed.set_result(None)
            elif msg["type"] == "sunsubscribe":
                # A room we keep is never unsubscribed by us (a dropped room leaves `rooms` first): the
                # stream's slot moved to another master, which unsubscribes its shard channel. Subscribe
                # again; the client routes it to the slot's new owner (docs/cluster.md).
                await self._resubscribe(ch.decode())

    async def _likes_loop(self) -> None:
        while True:
            await pause(self.cfg.likes_interval_s)
            await self._flush_likes()

    async def _flush_likes(self) -> None:
        pending = self.likes.drain()
        for sid, n in pending.items():
            try:
                await state.add_likes(self.svc.redis, sid, n)
                room = self.rooms.get(sid)
                if room is not None:  # the minute's likes, for the stream's figures
                    room.tally.likes(n, now_ms())
                if m.ENABLED:
                    m.WS_PUBLISHED.labels("likes").inc()
            except REDIS_UNUSABLE as exc:
                raise_if_cancelling()
                raise_unless_refused(exc)
                self.likes.restore({sid: n})
                if m.ENABLED:
                    m.REDIS_ERRORS.labels("ws_likes").inc()

    async def _viewers_loop(self) -> None:
        ttl_ms = int(self.cfg.viewers_ttl_s * 1000)
        while True:
            try:
                for sid, room in list(self.rooms.items()):
                    await state.report_viewers(self.svc.redis, sid, self.proc, len(room.conns), ttl_ms)
                    await self._report_analytics(room)
                await self._drop_idle_rooms()
                now = time.monotonic()
                self.comment_limit.purge(now)
                self.like_cap.purge(now)
            except REDIS_UNUSABLE as exc:
                raise_if_cancelling()
                raise_unless_refused(exc)
                if m.ENABLED:
                    m.REDIS_ERRORS.labels("ws_viewers").inc()
            await pause(self.cfg.viewers_interval_s)
