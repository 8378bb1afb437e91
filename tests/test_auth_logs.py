"""A WebSocket's `?token=` never reaches a log line (docs/auth.md): a real `livesale serve` with its
access log on is visited with tokens in query strings, good, bad and in malformed requests, and its
log is read back."""

from __future__ import annotations

import asyncio

import websockets

from livesale.auth import mint
from livesale.codes import CloseCode
from livesale.config import Settings
from tests.helpers import Api, spawn_server, stop_server
from tests.test_realtime_ws import closed_code, ws_url


async def test_tokens_in_query_strings_never_reach_the_log(settings: Settings) -> None:
    """Viewer sockets with a valid and a forged token, a 404 and a malformed request carrying one: the
    access log has a line for each path, and no token appears anywhere in the server's output."""
    srv = spawn_server(settings, extra_env={"LIVESALE_ACCESS_LOG": "1"})
    good = mint(settings.secret, "viewer-with-a-secret-token")
    forged = good[:-6] + "AAAAAA"
    try:
        async with Api(srv) as api:
            s = await api.setup_sale()
            async with websockets.connect(ws_url(srv, s["stream_id"], good)) as ws:
                await ws.recv()  # the snapshot: the socket was served
            async with websockets.connect(ws_url(srv, s["stream_id"], forged)) as ws:
                assert await closed_code(ws) == CloseCode.UNAUTHORIZED
            st, _ = await api.call("GET", f"/api/nothing-here?token={good}")
            assert st == 404
        path = f"/ws/streams/{s['stream_id']}?token={good}"
        for malformed in (f"GET {path} HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # a header without colon
                          f"GET {path} HTTP/9.9\r\nHost: x\r\n\r\n",  # an unknown version
                          f"GET {path} HTTP/1.1 trailing\r\nHost: x\r\n\r\n",  # a request line too long
                          f"G\x01T {path} HTTP/1.1\r\nHost: x\r\n\r\n",  # a control byte in the method
                          f"GET {path}\x7f HTTP/1.1\r\nHost: x\r\n\r\n"):  # one in the target
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(malformed.encode())
            await writer.drain()
            assert (await reader.read(100)).startswith(b"HTTP/1.0 400"), malformed  # aiohttp answers these in 1.0
            writer.close()
    finally:
        stop_server(srv)
    log = (settings.data_dir / f"server-{srv.port}.log").read_text()
    assert f'"GET /ws/streams/{s["stream_id"]} HTTP/1.1" 101' in log, log[-2000:]
    assert '"GET /api/nothing-here HTTP/1.1" 404' in log
    for token in (good, forged, good.split(".")[1], good.split(".")[2]):
        assert token not in log
