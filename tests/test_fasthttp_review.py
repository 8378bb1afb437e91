"""livesale.fasthttp, reviewed: requests and connection states where the fast path once answered
otherwise than aiohttp does (same app on a fast and a plain aiohttp socket, as in test_fasthttp)."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from live.app import create_app, make_site
from livesale.config import Settings
from livesale.embedded_redis import free_port
from livesale.fasthttp import FastSite
from livesale.web import Runner
from tests import test_fasthttp as base
from tests.helpers import Api, LiveServer, closed_within, wait_for
from tests.test_fasthttp import (
    Pair,
    _one_answer_or_close,
    connect,
    exchange,
    normalized,
    purchase,
    read_response,
)

pair, api = base.pair, base.api  # the fixtures of test_fasthttp: one app on a fast and an aiohttp socket

Raw = Callable[[str, str, str], bytes]  # (sale id, token, idempotency key) -> request


_MANY = b"".join(b"X-H%d: v\r\n" % i for i in range(130))


@pytest.mark.parametrize("name,raw_of", [
    ("no-host", lambda sale, tok, k: purchase(sale, tok, k).replace(b"Host: 127.0.0.1\r\n", b"")),
    ("two-hosts", lambda sale, tok, k: purchase(sale, tok, k, extra=b"Host: other\r\n")),
    ("two-content-types", lambda sale, tok, k: purchase(sale, tok, k, extra=b"Content-Type: text/plain\r\n")),
    ("two-user-agents", lambda sale, tok, k: purchase(sale, tok, k, extra=b"User-Agent: a\r\nuser-agent: b\r\n")),
    ("too-many-headers", lambda sale, tok, k: purchase(sale, tok, k, extra=_MANY)),
    ("header-too-long", lambda sale, tok, k: purchase(sale, tok, k, extra=b"X-Long: " + b"a" * 9000 + b"\r\n")),
    ("old-websocket-key", lambda sale, tok, k: purchase(sale, tok, k, extra=b"Sec-WebSocket-Key1: x\r\n")),
])
async def test_requests_aiohttp_rejects_are_not_served(pair: Pair, api: Api, name: str, raw_of: Raw) -> None:
    """A request aiohttp's parser refuses (400) gets that refusal on the fast socket, not an order."""
    s = await api.setup_sale(stock=5)
    before = pair.site.fast.served
    fast = await _one_answer_or_close(pair.fast, raw_of(s["sale_id"], pair.fast.token("f"), "k"))
    aio = await _one_answer_or_close(pair.aio, raw_of(s["sale_id"], pair.aio.token("a"), "k"))
    assert aio is not None and aio.status == 400, (name, aio)
    assert fast is not None and fast.comparable() == aio.comparable(), (name, fast)
    assert pair.site.fast.served == before


@pytest.mark.parametrize("body,encoding", [
    pytest.param(gzip.compress(b'{"quantity":1}'), b"gzip", id="gzip"),
    pytest.param(b'{"quantity":1}', b"gzip", id="gzip-header-plain-body"),
    pytest.param(b'{"quantity":1}', b"DEFLATE", id="deflate-in-capitals"),
])
async def test_content_encoding_is_decoded_as_aiohttp_does(pair: Pair, api: Api, body: bytes, encoding: bytes) -> None:
    """aiohttp decompresses a request body by its Content-Encoding: the fast socket answers alike."""
    s = await api.setup_sale(stock=5)
    extra = b"Content-Encoding: %s\r\n" % encoding
    fast = await _one_answer_or_close(pair.fast, purchase(s["sale_id"], pair.fast.token("f"), "k", body, extra))
    aio = await _one_answer_or_close(pair.aio, purchase(s["sale_id"], pair.aio.token("a"), "k", body, extra))
    assert fast is not None and aio is not None, (fast, aio)
    assert aio.status in (201, 400), aio  # a body its encoding cannot decode is the client's error
    if aio.status == 201:
        assert normalized(fast) == normalized(aio)
    else:
        assert fast.comparable() == aio.comparable()


async def test_proxy_connection_close_is_honoured(pair: Pair, api: Api) -> None:
    """llhttp reads Proxy-Connection as Connection: aiohttp answers `Connection: close` and closes."""
    s = await api.setup_sale(stock=5)
    for srv in (pair.aio, pair.fast):
        async with connect(srv) as (reader, writer):
            writer.write(purchase(s["sale_id"], srv.token(f"u{srv.port}"), "k", extra=b"Proxy-Connection: close\r\n"))
            resp = await read_response(reader)
            assert (resp.status, resp.header(b"Connection")) == (201, b"close"), srv.port
            assert await closed_within(reader, 2), srv.port


async def test_authorization_decoded_as_aiohttp_does(pair: Pair, api: Api) -> None:
    """Header bytes beyond ASCII are UTF-8 to aiohttp: a token followed by a UTF-8 no-break space (which
    `from_header` strips) is accepted on both sockets."""
    s = await api.setup_sale(stock=5)
    answers = []
    for srv in (pair.fast, pair.aio):
        auth = b"Authorization: Bearer %s\xc2\xa0\r\n" % srv.token(f"u{srv.port}").encode()
        (resp,) = await exchange(srv, purchase(s["sale_id"], None, "k", extra=auth))
        answers.append(resp)
    assert normalized(answers[0]) == normalized(answers[1])
    assert answers[0].status == 201


async def test_error_headers_in_aiohttp_order(pair: Pair, api: Api, redis_url: str) -> None:
    """A 503 (Redis refuses writes) carries Retry-After where aiohttp puts it: before Content-Type."""
    s = await api.setup_sale(stock=5)
    r = aioredis.Redis.from_url(redis_url)
    await r.config_set("min-replicas-to-write", 1)
    try:
        (fast,) = await exchange(pair.fast, purchase(s["sale_id"], pair.fast.token("f"), "k"))
        (aio,) = await exchange(pair.aio, purchase(s["sale_id"], pair.aio.token("a"), "k"))
    finally:
        await r.config_set("min-replicas-to-write", 0)
        await r.aclose()
    assert aio.status == 503 and aio.header(b"Retry-After") is not None
    assert fast.comparable() == aio.comparable()


@pytest.mark.parametrize("name,raw_of", [
    ("part-of-a-head", lambda sale, tok: purchase(sale, tok, "k")[:40]),
    ("part-of-a-body", lambda sale, tok: purchase(sale, tok, "k")[:-3]),
    ("a-purchase-then-part-of-one", lambda sale, tok: purchase(sale, tok, "k") + purchase(sale, tok, "k2")[:50]),
])
async def test_half_closed_mid_request_is_closed(pair: Pair, api: Api, name: str,
                                                 raw_of: Callable[[str, str], bytes]) -> None:
    """A client that half-closes with a request unfinished will never finish it: the server closes the
    connection (as aiohttp does), instead of holding it until the keep-alive sweep."""
    s = await api.setup_sale(stock=5)
    for srv in (pair.aio, pair.fast):
        async with connect(srv) as (reader, writer):
            writer.write(raw_of(s["sale_id"], srv.token(f"u{srv.port}")))
            writer.write_eof()
            assert await closed_within(reader, 2), (name, srv.port)


async def test_half_closed_after_hand_off_is_closed(pair: Pair, api: Api) -> None:
    """A purchase and a GET, then EOF: the fast path answers the purchase and hands the rest to
    aiohttp, which must see the EOF as it would on its own socket (and close), not keep the
    connection for its keep-alive timeout."""
    s = await api.setup_sale(stock=5)
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with connect(pair.fast) as (reader, writer):
        writer.write(purchase(s["sale_id"], pair.fast.token("h"), "k") + get)
        writer.write_eof()
        assert (await read_response(reader)).status == 201
        assert await closed_within(reader, 2)


async def test_keepalive_timeout_is_aiohttps(settings: Settings) -> None:
    """Idle connections on the fast socket close after the runner's keep-alive timeout, as aiohttp's
    own connections on the same runner do (not after a fixed 75 s)."""
    runner = Runner(create_app(settings), handle_signals=False, access_log=None, keepalive_timeout=1)
    await runner.setup()
    try:
        fast_port, aio_port = free_port(), free_port()
        site = make_site(runner, settings, port=fast_port)
        assert isinstance(site, FastSite)
        await site.start()
        await web.TCPSite(runner, "127.0.0.1", aio_port).start()
        for port in (aio_port, fast_port):
            async with connect(LiveServer(settings, port)) as (reader, _writer):
                assert await closed_within(reader, 4), port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("spaces,connections", [
    pytest.param(7500, 10, id="within-the-head-limit"),
    pytest.param(40000, 1, id="a-long-head-in-one-read"),
])
async def test_a_bad_header_line_costs_linear_time(pair: Pair, api: Api, spaces: int, connections: int) -> None:
    """A header value of many spaces and then a control character is refused without blocking the
    event loop (the header pattern once backtracked quadratically on it: seconds per request)."""
    s = await api.setup_sale(stock=5)
    raw = purchase(s["sale_id"], pair.fast.token("u"), "k", extra=b"X-Pad: " + b" " * spaces + b"\x01\r\n")
    started = asyncio.get_running_loop().time()
    answers = await asyncio.gather(*(_one_answer_or_close(pair.fast, raw) for _ in range(connections)))
    elapsed = asyncio.get_running_loop().time() - started
    assert [a and a.status for a in answers] == [400] * connections
    assert elapsed < 1.0, elapsed


async def test_a_slow_reader_is_not_swept(settings: Settings) -> None:
    """A client that pipelines purchases and reads their answers slowly is not idle: the keep-alive
    sweep leaves it be (as aiohttp does) instead of resetting it with answers to orders it made unsent."""
    runner = Runner(create_app(settings), handle_signals=False, access_log=None, keepalive_timeout=1)
    await runner.setup()
    try:
        srv = LiveServer(settings, free_port())
        site = make_site(runner, settings, port=srv.port)
        assert isinstance(site, FastSite)
        await site.start()
        async with Api(srv) as a:
            s = await a.setup_sale(stock=5000, per_user_limit=100)
        n = 2000
        raw = b"".join(purchase(s["sale_id"], srv.token("slow"), f"k{i}") for i in range(n))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small windows: the server must wait
        sock.connect(("127.0.0.1", srv.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        await wait_for(lambda: site.fast.connections)
        for conn in site.fast.connections:
            assert conn.transport is not None
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.transport.pause_reading()
        writer.write(raw)
        await asyncio.sleep(3)  # past the keep-alive timeout, the server waiting to write
        writer.transport.resume_reading()
        statuses = [(await read_response(reader)).status for _ in range(n)]
        assert statuses.count(201) == 100 and len(statuses) == n
        writer.close()
    finally:
        await runner.cleanup()
