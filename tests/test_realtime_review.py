"""Repros from the realtime review: a room dropped under a joining viewer, error replies that are
not bad frames, replies written past the outbound bound, and sockets to unknown streams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct

import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from livesale.codes import CloseCode
from livesale.config import Settings
from realtime import HUB
from realtime import state as rstate
from realtime.conn import Conn
from tests.helpers import Api, start_app_server, wait_for
from tests.test_realtime_ws import closed_code, collect, of_type, send, viewer, ws_url


async def test_rejoin_while_room_is_being_dropped_still_receives_events(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer who joins while the idle room is being dropped must still get the stream's events."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    hub = api.server.app[HUB]  # type: ignore[index]
    hub.cfg.unsubscribe_grace_s = 0.0
    real = rstate.report_viewers
    dropping = asyncio.Event()

    dropped = asyncio.Event()

    async def slow_report(redis, stream_id, proc, count, ttl_ms):  # type: ignore[no-untyped-def]
        if ttl_ms == 0 and stream_id == sid:  # the drop path; widen its one Redis round trip
            dropping.set()
            await asyncio.sleep(0.3)
            try:
                return await real(redis, stream_id, proc, count, ttl_ms)
            finally:
                dropped.set()
        return await real(redis, stream_id, proc, count, ttl_ms)

    monkeypatch.setattr(rstate, "report_viewers", slow_report)
    async with viewer(api.server, sid):
        pass
    await asyncio.wait_for(dropping.wait(), 5)
    async with viewer(api.server, sid, "bob") as (ws, first):
        assert first[0]["type"] == "snapshot"
        await asyncio.wait_for(dropped.wait(), 5)  # the drop has finished, its UNSUBSCRIBE long out
        await send(ws, {"type": "comment", "text": "anyone there?"})
        got = await collect(ws, lambda ev: bool(of_type(ev, "comment")), wait=3)
        assert of_type(got, "comment")[0]["text"] == "anyone there?"


async def test_join_during_the_drops_unsubscribe_still_receives_events(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer who joins while the drop's UNSUBSCRIBE is in flight gets a room subscribed after it."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    hub = api.server.app[HUB]  # type: ignore[index]
    hub.cfg.unsubscribe_grace_s = 0.0
    assert hub._pubsub is not None
    real = hub._pubsub.unsubscribe
    dropping = asyncio.Event()

    unsubscribed = asyncio.Event()

    async def slow_unsubscribe(*channels):  # type: ignore[no-untyped-def]
        if f"stream:{sid}" in channels:
            dropping.set()
            await asyncio.sleep(0.3)
            try:
                return await real(*channels)
            finally:
                unsubscribed.set()
        return await real(*channels)

    monkeypatch.setattr(hub._pubsub, "unsubscribe", slow_unsubscribe)
    async with viewer(api.server, sid):
        pass
    await asyncio.wait_for(dropping.wait(), 5)
    async with viewer(api.server, sid, "bob") as (ws, first):
        assert first[0]["type"] == "snapshot"
        await asyncio.wait_for(unsubscribed.wait(), 5)  # the drop's UNSUBSCRIBE has gone out
        await send(ws, {"type": "comment", "text": "anyone there?"})
        got = await collect(ws, lambda ev: bool(of_type(ev, "comment")), wait=3)
        assert of_type(got, "comment")[0]["text"] == "anyone there?"



async def test_anonymous_viewer_tapping_like_is_not_kicked(api: Api) -> None:
    """Likes from an anonymous viewer are well-formed frames: error `unauthenticated`, but no 4029 close."""
    s = await api.setup_sale()
    async with viewer(api.server, s["stream_id"]) as (ws, _):
        for _ in range(25):
            await send(ws, {"type": "like", "count": 1})
        await send(ws, {"type": "ping"})
        got = await collect(ws, lambda ev: bool(of_type(ev, "pong")), wait=5)
        assert all(e["code"] == "unauthenticated" for e in of_type(got, "error"))


async def test_ping_flood_from_a_non_reading_client_is_bounded(api: Api) -> None:
    """A client that sends pings but never reads its pongs stays within the outbound bound and is
    closed as a slow consumer (aiohttp's heartbeat never fires: data keeps arriving)."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    hub = api.server.app[HUB]  # type: ignore[index]
    hub.cfg.slow_close_s = 0.5
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", api.server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/streams/{sid} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    # Handshake and snapshot sit unread in our tiny receive buffer; the socket has joined its room.
    await wait_for(lambda: sid in hub.rooms and len(hub.rooms[sid].conns) == 1)
    (conn,) = hub.rooms[sid].conns
    payload = b'{"type":"ping"}'
    frame = struct.pack("!BB", 0x81, 0x80 | len(payload)) + b"\0\0\0\0" + payload  # zero mask
    chunk = frame * 20_000
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    peak = 0
    try:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(15):
                for _ in range(25):  # up to 500k pings, ~10 MB up
                    await loop.sock_sendall(sock, chunk)
                    peak = max(peak, conn.transport.get_write_buffer_size())
        await wait_for(lambda: conn.closed)  # the 4008 path, as for a viewer that does not read broadcasts
        peak = max(peak, conn.transport.get_write_buffer_size())
        assert peak <= hub.cfg.outbound_bytes + 64 * 1024, peak
    finally:
        sock.close()


class _StuckTransport:
    """A transport whose peer reads nothing: every write stays in its buffer."""

    def __init__(self) -> None:
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


async def test_send_now_stops_at_the_bound_and_closes_a_peer_that_stays_over_it() -> None:
    """Replies stop once the unread bytes pass the bound; still over after slow_close_s: close 4008."""
    closes: list[CloseCode] = []
    transport = _StuckTransport()
    conn = Conn(None, transport, None, "s", 1000, 0.05, lambda _c, code: closes.append(code))  # type: ignore[arg-type]
    while transport.buffered <= 1000:
        conn.send_now(b'{"type":"pong"}')
    stuck_at = transport.buffered
    conn.send_now(b'{"type":"pong"}')
    assert transport.buffered == stuck_at and not closes
    await asyncio.sleep(0.1)
    conn.send_now(b'{"type":"pong"}')
    assert transport.buffered == stuck_at and closes == [CloseCode.SLOW_CONSUMER]



async def test_unknown_stream_leaves_no_redis_keys(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """An anonymous socket to a made-up stream id is closed 4504 and leaves no Redis state behind, also
    after two viewers ticks (seen reporting a real stream's room)."""
    reports: list[str] = []
    real = rstate.report_viewers

    async def counted(redis, stream_id, proc, count, ttl_ms):  # type: ignore[no-untyped-def]
        reports.append(stream_id)
        return await real(redis, stream_id, proc, count, ttl_ms)

    monkeypatch.setattr(rstate, "report_viewers", counted)
    s = await api.setup_sale()
    sid = "nope" + os.urandom(6).hex()
    async with viewer(api.server, s["stream_id"]):
        async with websockets.connect(ws_url(api.server, sid)) as ws:
            assert await closed_code(ws) == CloseCode.NO_SUCH_STREAM
        assert sid not in api.server.app[HUB].rooms  # type: ignore[index]  # never joined: no SUBSCRIBE
        ticks = reports.count(s["stream_id"])
        await wait_for(lambda: reports.count(s["stream_id"]) >= ticks + 2, timeout=10)
    r = aioredis.Redis.from_url(api.server.settings.redis_url)
    try:
        leftovers = [k async for k in r.scan_iter(match=f"*{sid}*")]
        ttls = {k: await r.pttl(k) for k in leftovers}
    finally:
        await r.aclose()
    assert not leftovers, ttls


async def test_last_viewer_leaving_deletes_the_viewers_total(api: Api) -> None:
    """Once no process reports viewers of a stream, its viewers total key is gone, not a 24 h zero."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    hub = api.server.app[HUB]  # type: ignore[index]
    async with viewer(api.server, sid):
        pass
    assert await rstate.report_viewers(hub.svc.redis, sid, hub.proc, 0, 0) == 0
    assert not await hub.svc.redis.exists(f"{{stream:{sid}}}:viewers", f"{{stream:{sid}}}:viewer_procs")


async def test_viewer_waiting_for_its_snapshot_is_not_closed_as_slow(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a reconnect storm a viewer can wait for its snapshot while its room is busy. What arrives
    meanwhile is held (and shed past the bound), but the viewer has not been sent anything to be
    slow about: it gets its snapshot, not a 4008."""
    monkeypatch.setenv("LIVESALE_WS_OUTBOUND_BYTES", "2000")
    monkeypatch.setenv("LIVESALE_WS_SLOW_CLOSE_S", "0.2")
    async with start_app_server(settings) as srv, Api(srv) as api:
        s = await api.setup_sale()
        assert srv.app is not None
        hub = srv.app[HUB]
        held = 0
        while not hub.connecting.locked():  # every snapshot slot taken, as in a storm
            await hub.connecting.acquire()
            held += 1
        async with websockets.connect(ws_url(srv, s["stream_id"])) as ws:
            await wait_for(lambda: hub.rooms.get(s["stream_id"]) is not None)
            for burst in range(3):  # over the bound, for longer than slow_close_s
                for i in range(40):
                    await hub.svc.bus.publish_log(s["stream_id"], {
                        "type": "comment", "id": f"c{burst}-{i}", "user": "chatty", "text": "x" * 60, "ts": 0})
                await asyncio.sleep(0.15)
            for _ in range(held):
                hub.connecting.release()
            first = await asyncio.wait_for(ws.recv(), 10)
            assert orjson.loads(first)["type"] == "snapshot"
