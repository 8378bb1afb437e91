"""Limits under hostile load, at the connection level (docs/limits.md): slow headers and idle
keep-alive connections closed on both HTTP paths, and the connection cap. Real sockets on loopback,
settings lowered so that each test takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from live.app import make_site
from livesale.config import Settings
from livesale.embedded_redis import free_port
from livesale.limits import ConnectionGate
from tests.helpers import (
    Api,
    LiveServer,
    app_runner,
    closed_within,
    spawn_server,
    start_app_server,
    stop_server,
    wait_for,
)
from tests.metrics_scrape import parse, value

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def refusals(limit: str) -> float:
    return REGISTRY.get_sample_value("livesale_limit_refusals_total", {"limit": limit}) or 0.0


@contextlib.asynccontextmanager
async def limited(settings: Settings, **limits: object) -> AsyncIterator[LiveServer]:
    async with start_app_server(dataclasses.replace(settings, **limits)) as srv:  # type: ignore[arg-type]
        yield srv


@contextlib.asynccontextmanager
async def gated(settings: Settings, **limits: object) -> AsyncIterator[tuple[LiveServer, ConnectionGate]]:
    """The app on a loopback socket, with the connection gate it accepts through."""
    settings = dataclasses.replace(settings, **limits)  # type: ignore[arg-type]
    async with app_runner(settings) as runner:
        srv = LiveServer(settings, free_port(), app=runner.app)
        await make_site(runner, settings, port=srv.port).start()
        gate = getattr(runner.server, "gate", None)
        assert isinstance(gate, ConnectionGate)
        yield srv, gate


async def open_conn(srv: LiveServer) -> Stream:
    return await asyncio.open_connection("127.0.0.1", srv.port)


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def get(stream: Stream, path: str) -> tuple[int, bytes]:
    reader, writer = stream
    writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
    async with asyncio.timeout(10):
        return await answer(reader)


def purchase(sale_id: str, token: str, key: str) -> bytes:
    body = b'{"quantity": 1}'
    return (b"POST /api/sales/%s/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            b"Idempotency-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (sale_id.encode(), token.encode(), key.encode(), len(body), body))


async def trickle(writer: asyncio.StreamWriter, first: bytes, then: bytes) -> None:
    """Slowloris: a request's first bytes, then a header byte every 0.1 s, never the blank line."""
    writer.write(first)
    with contextlib.suppress(ConnectionError, RuntimeError):
        while not writer.is_closing():
            await asyncio.sleep(0.1)
            writer.write(then)
            await writer.drain()


@pytest.mark.parametrize("path,first", [
    pytest.param("fast", b"POST /api/sales/sa000000000000/orders HTTP/1.1\r\nHost: x\r\n", id="fast-purchase-path"),
    pytest.param("aiohttp", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", id="aiohttp-path"),
])
async def test_slow_headers_are_closed_by_the_header_timeout(settings: Settings, path: str, first: bytes) -> None:
    """A client that keeps sending header bytes but never ends its head is closed after the header
    timeout (not the keep-alive one), on both paths, and counted; the server keeps serving."""
    async with limited(settings, header_timeout_s=0.5, keepalive_s=60) as srv:
        before = refusals("header_timeout")
        reader, writer = await open_conn(srv)
        sender = asyncio.create_task(trickle(writer, first, b"a"))
        try:
            assert await closed_within(reader, 10), f"{path}: still open"
        finally:
            sender.cancel()
            writer.close()
        assert refusals("header_timeout") == before + 1
        fresh = await open_conn(srv)
        assert await get(fresh, "/healthz") == (200, b'{"status":"ok"}')
        fresh[1].close()


async def test_a_slow_body_on_the_fast_path_is_closed_too(settings: Settings) -> None:
    """On the fast path the whole purchase request (head and its small body) must arrive within the
    header timeout: a head followed by a body that never completes is closed."""
    async with limited(settings, header_timeout_s=0.5, keepalive_s=60) as srv:
        reader, writer = await open_conn(srv)
        writer.write(b"POST /api/sales/sa000000000000/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        try:
            assert await closed_within(reader, 10)
        finally:
            writer.close()


async def test_idle_keepalive_connections_close_on_both_paths(settings: Settings) -> None:
    """After an answer, a connection left idle is closed after LIVESALE_KEEPALIVE_S, whether its last
    request went through the fast purchase path or aiohttp's."""
    async with limited(settings, keepalive_s=0.5) as srv, Api(srv) as api:
        s = await api.setup_sale(stock=5)
        fast, slow = await open_conn(srv), await open_conn(srv)
        fast[1].write(purchase(s["sale_id"], srv.token("buyer"), "k1"))
        assert (await answer(fast[0]))[0] == 201
        assert (await get(slow, "/healthz"))[0] == 200
        assert await closed_within(fast[0], 10), "fast path: still open"
        assert await closed_within(slow[0], 10), "aiohttp path: still open"
        fast[1].close()
        slow[1].close()


async def test_at_the_connection_cap_open_connections_are_served_and_accepting_resumes(settings: Settings) -> None:
    """At LIVESALE_MAX_CONNECTIONS the process stops accepting: its open connections (a monitor's
    keep-alive /healthz and /metrics, a buyer's purchase) are still served, a new client waits in the
    backlog, and is served as soon as some connections close."""
    cap = 20
    async with gated(settings, max_connections=cap) as (srv, gate):
        async with Api(srv) as api:
            s = await api.setup_sale(stock=5)
        await wait_for(lambda: gate.open == 0)
        paused = refusals("connection_cap")
        monitor, buyer = await open_conn(srv), await open_conn(srv)
        assert (await get(monitor, "/healthz"))[0] == 200
        idle = [await open_conn(srv) for _ in range(cap - 2)]
        await wait_for(lambda: gate.open == cap and refusals("connection_cap") == paused + 1)
        late = await open_conn(srv)  # completes in the kernel's backlog; the server does not accept it
        late[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await get(monitor, "/healthz"))[0] == 200
        status, body = await get(monitor, "/metrics")
        assert status == 200 and b"livesale_open_connections" in body
        buyer[1].write(purchase(s["sale_id"], srv.token("buyer"), "k1"))
        assert (await answer(buyer[0]))[0] == 201
        assert gate.open == cap  # the late client is still not accepted
        for _reader, writer in idle[:5]:
            writer.close()
        async with asyncio.timeout(10):
            assert (await answer(late[0]))[0] == 200
        for _reader, writer in (monitor, buyer, late, *idle[5:]):
            writer.close()


async def test_idle_connections_past_the_default_cap_never_exhaust_descriptors(settings: Settings) -> None:
    """A `livesale serve` whose soft RLIMIT_NOFILE is 200 caps itself at 160 connections (80%): 260
    idle clients never make it run out of descriptors, a monitor's keep-alive /healthz and /metrics
    answer throughout, and the clients left waiting are served once others leave."""
    srv = spawn_server(settings, nofile=200)
    assert srv.proc is not None
    try:
        monitor = await open_conn(srv)
        assert (await get(monitor, "/healthz"))[0] == 200
        conns = [await open_conn(srv) for _ in range(259)]

        async def metric(name: str, **labels: str) -> float:
            status, body = await get(monitor, "/metrics")
            assert status == 200
            return value(parse(body.decode()), name, **labels)

        async def at_cap() -> bool:
            return await metric("livesale_open_connections") >= 160

        await wait_for(at_cap, timeout=20)
        assert await metric("livesale_open_connections") == 160
        assert await metric("livesale_limit_refusals_total", limit="connection_cap") >= 1
        assert await metric("livesale_limit_refusals_total", limit="accept_error") == 0
        assert len(os.listdir(f"/proc/{srv.proc.pid}/fd")) < 200
        assert (await get(monitor, "/healthz"))[0] == 200
        for _reader, writer in conns[:110]:
            writer.close()
        for stream in conns[-10:]:  # among the last to connect: they waited in the backlog
            assert (await get(stream, "/healthz"))[0] == 200
        for _reader, writer in (monitor, *conns[110:]):
            writer.close()
    finally:
        stop_server(srv)
