"""One viewer connection's outbound side: a buffer bounded in bytes and a writer that never makes
a broadcast wait (CONTRIBUTING.md #5, docs/design.md "Fan-out rules").

A room hands every connection the same `Batch` (one frame, encoded once). A connection that keeps
up gets the frame written straight to its transport, the way `websockets.broadcast()` does; one
that lags queues batches and gets a writer task that waits for its transport to drain. Over the
bound, queued comments are dropped and state events keep only their latest value; a connection
that stays over the bound for `slow_close_s` is closed with 4008.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode

from livesale.codes import CloseCode
from livesale.limits import drop, release
from monitoring import metrics as m
from realtime import protocol

# Bytes the kernel-side transport may hold before a connection counts as lagging and its batches
# queue in our own (bounded, sheddable) buffer instead.
TRANSPORT_HIGH = 64 * 1024
# How long a close waits for the peer's close frame (aiohttp's `WebSocketResponse(timeout=)`), and
# for the whole close, data still queued for the peer included: a closed viewer's socket and buffers
# are released within 5 s of the close whether or not it reads (docs/limits.md).
CLOSE_HANDSHAKE_S = 3.0
CLOSE_TIMEOUT_S = 4.0


@dataclass(frozen=True, slots=True)
class Item:
    kind: str  # event type
    key: Hashable | None  # conflation key for state events, None for stream-log events
    payload: bytes
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    items: tuple[Item, ...]
    wire: bytes  # the WebSocket frame holding all items
    low_seq: int | None  # lowest stream-log seq inside, to spot events a snapshot already covered

    @classmethod
    def of(cls, items: tuple[Item, ...]) -> Batch:
        seqs = [i.seq for i in items if i.seq is not None]
        return cls(items, protocol.text_frame(protocol.batch([i.payload for i in items])),
                   min(seqs) if seqs else None)

    def after(self, seq: int) -> Batch | None:
        """This batch without the stream-log events up to `seq`; None when nothing is left."""
        if self.low_seq is None or self.low_seq > seq:
            return self
        items = tuple(i for i in self.items if i.seq is None or i.seq > seq)
        return Batch.of(items) if items else None


class Conn:
    __slots__ = ("ws", "transport", "user", "stream_id", "queue", "queued", "over_since", "ready",
                 "closed", "closing", "writer", "bound", "slow_close_s", "on_close", "min_seq", "__weakref__")

    def __init__(self, ws: Any, transport: asyncio.Transport, user: Any, stream_id: str, bound: int,
                 slow_close_s: float, on_close: Callable[[Conn, CloseCode], None]) -> None:
        self.ws = ws
        self.transport = transport
        self.user = user
        self.stream_id = stream_id
        self.queue: list[Batch] = []  # a list, not a deque: idle viewers are many, and it is drained whole
        self.queued = 0  # bytes in `queue`
        self.over_since: float | None = None
        self.ready = False  # false until the snapshot (or replay) went out; batches wait until then
        self.closed = False
        self.closing: asyncio.Task[None] | None = None  # the close handshake the server started
        self.writer: asyncio.Task[None] | None = None
        self.bound = bound
        self.slow_close_s = slow_close_s
        self.on_close = on_close
        self.min_seq = 0  # stream-log events up to this seq were in the snapshot or replay

    # --- called by the room, synchronously, for every viewer: must never await
    def deliver(self, batch: Batch, now: float) -> bool:
        """Queue or write `batch`; False when it could not be written at once."""
        if self.closed or self.transport.is_closing():  # gone peers: writes would only log warnings
            return False
        if batch.low_seq is not None and batch.low_seq <= self.min_seq:
            # published before the snapshot's seq was read, but read off pub/sub after it went out
            fresh = batch.after(self.min_seq)
            if fresh is None:
                return True
            batch = fresh
        if self.ready and not self.queue and self.transport.get_write_buffer_size() < TRANSPORT_HIGH:
            self.over_since = None  # drained: a slow spell only send_now saw has ended
            self.transport.write(batch.wire)
            return True
        self.queue.append(batch)
        self.queued += len(batch.wire)
        if self.queued > self.bound:
            self._shed(now)
            # Before its snapshot a viewer has been sent nothing it could be slow to read (it may be
            # waiting for a snapshot slot in a reconnect storm): shed, but do not count it as slow.
            if self.ready and self._too_slow(now):
                return False
        if self.ready and self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write_backlog())
        return False

    def _too_slow(self, now: float) -> bool:
        """Over the bound now: start the slow spell, or close 4008 once it lasted `slow_close_s`."""
        if self.over_since is None:
            self.over_since = now
        elif now - self.over_since > self.slow_close_s:
            self.close(CloseCode.SLOW_CONSUMER)
            return True
        return False

    def _shed(self, now: float) -> None:
        """Drop queued comments first; keep the latest value of each state key; keep other log events."""
        kept: list[Item] = []
        latest: dict[Hashable, Item] = {}
        for b in self.queue:
            for it in b.items:
                if it.key is not None:
                    if m.ENABLED and it.key in latest:
                        m.WS_EVENTS_DROPPED.labels(it.kind, "conflated").inc()
                    latest[it.key] = it
                elif it.kind == "comment":
                    if m.ENABLED:
                        m.WS_EVENTS_DROPPED.labels("comment", "slow_consumer").inc()
                else:
                    kept.append(it)
        self._requeue(tuple(kept) + tuple(latest.values()))

    def _requeue(self, items: tuple[Item, ...]) -> None:
        self.queue = []
        self.queued = 0
        if items:
            b = Batch.of(items)
            self.queue.append(b)
            self.queued = len(b.wire)

    def start(self, min_seq: int) -> None:
        """The snapshot or replay is out: release what arrived meanwhile, minus what it already held."""
        self.min_seq = min_seq
        self.over_since = None
        if self.queue:
            self._requeue(tuple(i for b in self.queue if (f := b.after(min_seq)) is not None for i in f.items))
        self.ready = True
        if self.queue and self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write_backlog())

    async def _write_backlog(self) -> None:
        try:
            while self.queue and not self.closed:
                while self.transport.get_write_buffer_size() >= TRANSPORT_HIGH:
                    if self.closed or self.transport.is_closing():
                        return
                    await asyncio.sleep(0.02)
                batches, self.queue = self.queue, []
                self.queued = 0
                if len(batches) == 1:
                    self.transport.write(batches[0].wire)
                else:
                    self.transport.write(Batch.of(tuple(i for b in batches for i in b.items)).wire)
            # Only a drained socket ends the slow spell: shedding can empty the queue (all comments)
            # while the peer still reads nothing, and that viewer must still reach its 4008.
            if self.transport.get_write_buffer_size() < TRANSPORT_HIGH:
                self.over_since = None
        finally:
            self.writer = None

    def send_now(self, payload: bytes) -> None:
        """A reply to this viewer alone (error, pong, snapshot): tiny, written at once. A peer that
        left more than the bound unread gets no more replies and is on the 4008 path like a viewer
        that does not read broadcasts: one that sends pings and never reads must not grow our memory."""
        if self.closed or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.bound:
            self._too_slow(asyncio.get_running_loop().time())
            return
        self.transport.write(protocol.text_frame(payload))

    def close(self, code: CloseCode) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue = []
        self.queued = 0
        if self.writer is not None:
            self.writer.cancel()
        self.on_close(self, code)

    async def aclose(self, code: CloseCode) -> None:
        """Close with `code`, gracefully for CLOSE_TIMEOUT_S at most: a viewer that reads by then (a
        phone that stalled) gets what was queued for it and the close frame. One that does not loses
        the transport with a reset (livesale.limits.drop): aiohttp's close ends in `transport.close()`,
        which waits for the queued data to be written, forever for a peer that never reads."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=int(code), message=code.name.lower().encode(), drain=False)
                # A transport signals no "flushed after close": look while the grace lasts.
                while self.transport.get_write_buffer_size():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except (TimeoutError, ConnectionError):
            with contextlib.suppress(Exception):
                drop(self.transport)
            return
        release(self.transport, abnormal=self.ws.close_code == WSCloseCode.ABNORMAL_CLOSURE)
