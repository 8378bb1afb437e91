"""Limits under hostile load on the viewer WebSocket (docs/limits.md): a never-reading viewer closed
4008 is released within 5 s, sockets over the per-user and per-address caps close 4009, unmasked
client frames close 1002. Real server on loopback, real clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator

import websockets
from prometheus_client import REGISTRY

from livesale.codes import CloseCode
from livesale.services import SERVICES
from realtime import HUB, SOCKET_CAPS
from tests.helpers import Api, LiveServer, wait_for
from tests.test_realtime_ws import closed_code, viewer, ws_url


def open_connections() -> float:
    return REGISTRY.get_sample_value("livesale_open_connections") or 0.0


@contextlib.asynccontextmanager
async def raw_viewer(server: LiveServer, stream_id: str, *, rcvbuf: int = 4096) -> AsyncIterator[socket.socket]:
    """A WebSocket client on a plain socket with a tiny receive buffer, that reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.send((f"GET /ws/streams/{stream_id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        yield sock
    finally:
        sock.close()


async def test_a_never_reading_viewer_is_released_within_5_s_of_its_4008(api: Api) -> None:
    """A viewer that never reads is closed 4008 once over its bound, and its socket (with the data it
    left unread) is gone within 5 s of the close: the server does not wait for it to read."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    assert api.server.app is not None
    hub, svc = api.server.app[HUB], api.server.app[SERVICES]
    hub.cfg.slow_close_s = 0.5
    base = open_connections()
    async with raw_viewer(api.server, sid):
        await wait_for(lambda: sid in hub.rooms and any(c.ready for c in hub.rooms[sid].conns))
        (conn,) = hub.rooms[sid].conns
        assert open_connections() == base + 1
        big = "x" * 20_000
        async with asyncio.timeout(30):
            while not conn.closed:  # pins are stream-log events: kept (not shed) for a slow viewer
                await svc.bus.publish_log(sid, {"type": "pin", "product": {"sku": big}})
                await asyncio.sleep(0.01)
        await wait_for(lambda: open_connections() == base, timeout=5)
        assert conn.transport.get_write_buffer_size() == 0


async def test_the_socket_over_the_per_user_cap_closes_4009(api: Api) -> None:
    """A user's sockets beyond LIVESALE_WS_PER_USER are accepted, then closed 4009; the ones within
    stay open, and a socket freed makes room for another."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    cap = api.server.settings.ws_per_user
    before = REGISTRY.get_sample_value("livesale_limit_refusals_total", {"limit": "ws_per_user"}) or 0.0
    token = api.server.token("greedy")
    async with contextlib.AsyncExitStack() as stack:
        kept = [await stack.enter_async_context(websockets.connect(ws_url(api.server, sid, token)))
                for _ in range(cap)]
        for ws in kept:
            await ws.recv()  # the snapshot: each is in
        for _ in range(3):
            async with websockets.connect(ws_url(api.server, sid, token)) as extra:
                assert await closed_code(extra) == CloseCode.TOO_MANY_CONNECTIONS
        assert REGISTRY.get_sample_value("livesale_limit_refusals_total", {"limit": "ws_per_user"}) == before + 3
        async with viewer(api.server, sid, "someone-else") as (_ws, first):
            assert first[0]["type"] == "snapshot"  # other users are not affected
        await kept.pop().close()
        hub = api.server.app[HUB]  # type: ignore[index]
        await wait_for(lambda: len(hub.rooms[sid].conns) == cap - 1)
        async with viewer(api.server, sid, "greedy") as (_ws, first):
            assert first[0]["type"] == "snapshot"
        for ws in kept:
            await ws.send('{"type":"ping"}')
            assert b"pong" in (await ws.recv()).encode()


async def test_the_socket_over_the_per_address_cap_closes_4009(api: Api) -> None:
    """Anonymous sockets from one address beyond LIVESALE_WS_PER_IP are closed 4009."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    assert api.server.app is not None
    api.server.app[SOCKET_CAPS].per_ip = 4  # the setting, lowered for this server
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            ws = await stack.enter_async_context(websockets.connect(ws_url(api.server, sid)))
            await ws.recv()
        async with websockets.connect(ws_url(api.server, sid)) as extra:
            assert await closed_code(extra) == CloseCode.TOO_MANY_CONNECTIONS


async def test_an_unmasked_client_frame_closes_1002(api: Api) -> None:
    """A client frame without a mask (RFC 6455 §5.1) gets a close frame 1002 and the connection ends;
    masked frames on another socket are served as usual."""
    s = await api.setup_sale()
    async with raw_viewer(api.server, s["stream_id"], rcvbuf=1 << 20) as sock:
        loop = asyncio.get_running_loop()
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 65536)
        assert head.startswith(b"HTTP/1.1 101")
        payload = b'{"type":"ping"}'
        await loop.sock_sendall(sock, struct.pack("!BB", 0x81, len(payload)) + payload)  # no mask bit
        data = head.partition(b"\r\n\r\n")[2]
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 65536):
                data += chunk
        close = data.rfind(b"\x88")
        assert close >= 0 and struct.unpack("!H", data[close + 2 : close + 4])[0] == 1002, data[-80:]
    async with viewer(api.server, s["stream_id"]) as (ws, _first):
        await ws.send('{"type":"ping"}')
        assert b"pong" in (await ws.recv()).encode()


async def test_a_flooding_viewer_that_never_reads_is_released_within_5_s_of_its_4029(api: Api) -> None:
    """A client that sends bad frames and reads nothing is closed 4029 and its socket is released
    within 5 s of that close, though it never answers the close frame."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    assert api.server.app is not None
    hub = api.server.app[HUB]
    base = open_connections()
    async with raw_viewer(api.server, sid) as sock:
        await wait_for(lambda: sid in hub.rooms and any(c.ready for c in hub.rooms[sid].conns))
        (conn,) = hub.rooms[sid].conns
        payload = b"not json"
        frame = struct.pack("!BB", 0x81, 0x80 | len(payload)) + b"\x01\x02\x03\x04" + bytes(
            b ^ (1, 2, 3, 4)[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(sock, frame * 25)
        await wait_for(lambda: conn.closed)
        await wait_for(lambda: open_connections() == base, timeout=5)
