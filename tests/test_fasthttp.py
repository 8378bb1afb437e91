"""livesale.fasthttp: the purchase route's lean HTTP/1.1 path in front of aiohttp.

One app is served on two sockets at once: `fast` (livesale.fasthttp.FastSite, as `livesale serve`
runs) and `aio` (aiohttp's own TCPSite). Raw requests over real sockets check that the two answer
alike (status line, headers but Date, body), that the fast path really served what it should
(FastServer.served), and that everything outside its subset reaches aiohttp intact: on the same
connection, in order, pipelined or not, whole or a byte at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from commerce import keys
from live.app import make_site
from livesale.config import Settings
from livesale.embedded_redis import free_port
from livesale.fasthttp import FastSite
from livesale.web import MAX_BODY
from tests.helpers import Api, LiveServer, app_runner
from tests.test_auctions import setup_auction


@dataclass
class Pair:
    fast: LiveServer
    aio: LiveServer
    site: FastSite


@pytest.fixture
async def pair(settings: Settings) -> AsyncIterator[Pair]:
    async with app_runner(settings) as runner:
        fast_port, aio_port = free_port(), free_port()
        site = make_site(runner, settings, port=fast_port)
        assert isinstance(site, FastSite)
        await site.start()
        await web.TCPSite(runner, "127.0.0.1", aio_port).start()
        app = runner.app
        yield Pair(LiveServer(settings, fast_port, app=app), LiveServer(settings, aio_port, app=app), site)


@pytest.fixture
async def api(pair: Pair) -> AsyncIterator[Api]:
    async with Api(pair.aio) as a:
        yield a


@dataclass
class Response:
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def comparable(self) -> tuple[Any, ...]:
        return self.status_line, [(k, v) for k, v in self.headers if k != b"Date"], self.body


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].split(b"\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    resp = Response(lines[0], headers, b"")  # type: ignore[arg-type]
    resp.body = await asyncio.wait_for(reader.readexactly(int(resp.header(b"Content-Length") or 0)), 10)
    return resp


@contextlib.asynccontextmanager
async def connect(srv: LiveServer) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def exchange(srv: LiveServer, raw: bytes, count: int = 1) -> list[Response]:
    async with connect(srv) as (reader, writer):
        writer.write(raw)
        await writer.drain()
        return [await read_response(reader) for _ in range(count)]


def purchase(sale_id: str, token: str | None, key: str | None, body: bytes = b'{"quantity":1}',
             extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    head = b"POST /api/sales/%s/orders %s\r\nHost: 127.0.0.1\r\n" % (sale_id.encode(), version)
    if token is not None:
        head += b"Authorization: Bearer %s\r\n" % token.encode()
    if key is not None:
        head += b"Idempotency-Key: %s\r\n" % key.encode()
    return head + extra + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def normalized(resp: Response) -> tuple[Any, ...]:
    """An order answer without the fields that differ from order to order."""
    data = orjson.loads(resp.body)
    for field in ("id", "expires_at", "created_at", "order"):
        data.pop(field, None)
    return resp.status_line, [(k, v) for k, v in resp.headers if k not in (b"Date", b"Content-Length")], data


async def test_fast_and_aiohttp_answer_alike(pair: Pair, api: Api) -> None:
    """Every purchase outcome, from each socket: same status line, headers (but Date) and body."""
    s = await api.setup_sale(stock=3, per_user_limit=2)
    sale = s["sale_id"]
    before = pair.site.fast.served
    host = pair.fast.token("h", "host")
    for side, srv in (("f", pair.fast), ("a", pair.aio)):
        # Both sides get the same story: two orders, a duplicate, the limit, sold out.
        tok = srv.token(f"{side}-buyer")
        results = [
            await exchange(srv, purchase(sale, tok, f"{side}-1")),
            await exchange(srv, purchase(sale, tok, f"{side}-1")),
            await exchange(srv, purchase(sale, tok, f"{side}-1", b'{"quantity":2}')),
        ]
        if side == "f":
            fast_orders = results
        else:
            aio_orders = results
    for f, a in zip(fast_orders, aio_orders, strict=True):
        assert normalized(f[0]) == normalized(a[0])
    assert [r[0].status for r in fast_orders] == [201, 200, 422]

    refusals: list[bytes] = [
        purchase(sale, None, "k"),  # 401
        purchase(sale, "garbage", "k"),  # 401
        purchase(sale, host, "k"),  # 403, a host may not buy
        purchase(sale, pair.fast.token("u1"), None),  # 422 missing key
        purchase(sale, pair.fast.token("u1"), "bad key with spaces"),  # 422
        purchase(sale, pair.fast.token("u1"), "k", b"{not json"),  # 400
        purchase(sale, pair.fast.token("u1"), "k", b"[1]"),  # 400
        purchase(sale, pair.fast.token("u1"), "k", b'{"quantity":0}'),  # 422
        purchase(sale, pair.fast.token("u1"), "k", b'{"quantity":"1"}'),  # 422
        purchase(sale, pair.fast.token("u1"), "k", b'{"quantity":1.0}'),  # 422
        purchase(sale, pair.fast.token("u1"), "k", b'{"quantity":101}'),  # 422
        purchase("sa000000000000", pair.fast.token("u1"), "k"),  # 404 unknown sale
        purchase("nope", pair.fast.token("u1"), "k"),  # 404 malformed sale id
        purchase(sale, pair.fast.token("u1"), "k", b'{"quantity":2}'),  # 409 sold out (1 left)
        purchase(sale, pair.fast.token("u1"), "k", extra=b"Connection: close\r\n"),  # last unit, then close
        purchase(sale, pair.fast.token("u2"), "k"),  # 409 sold out (0 left)
    ]
    statuses = []
    for raw in refusals:
        (f,) = await exchange(pair.fast, raw)
        (a,) = await exchange(pair.aio, raw)
        statuses.append(f.status)
        if f.status in (200, 201):  # the aiohttp side repeats the key: the same order, 200
            assert (f.status, a.status) == (201, 200)
            assert normalized(f)[1:] == normalized(a)[1:]
        else:
            assert f.comparable() == a.comparable(), raw
    assert statuses == [401, 401, 403, 422, 422, 400, 400, 422, 422, 422, 422, 404, 404, 409, 201, 409]
    assert pair.site.fast.served - before == 3 + len(refusals)  # all of them on the fast path
    assert pair.site.fast.handoffs == 0


async def test_errors_keep_connection_and_state(pair: Pair, api: Api, redis_url: str) -> None:
    """Refusals on the fast path leave the connection serving and the sale untouched."""
    s = await api.setup_sale(stock=2)
    r = aioredis.Redis.from_url(redis_url)
    tok = pair.fast.token("v")
    raws = [purchase(s["sale_id"], tok, "k", b"{bad"), purchase(s["sale_id"], tok, "k", b'{"quantity":-1}')]
    async with connect(pair.fast) as (reader, writer):
        for raw in raws * 3:
            writer.write(raw)
            assert (await read_response(reader)).status in (400, 422)
        writer.write(purchase(s["sale_id"], tok, "k"))
        assert (await read_response(reader)).status == 201
    assert await r.hget(keys.sale(s["sale_id"]), "available") == b"1"
    await r.aclose()


async def test_pipelined_requests_answer_in_order(pair: Pair, api: Api) -> None:
    s = await api.setup_sale(stock=50, per_user_limit=100)
    tok = pair.fast.token("piper")
    quantities = [1, 3, 2, 5, 1, 4, 2, 3]
    raw = b"".join(purchase(s["sale_id"], tok, f"p{i}", b'{"quantity":%d}' % q) for i, q in enumerate(quantities))
    answers = await exchange(pair.fast, raw, len(quantities))
    assert [orjson.loads(a.body)["quantity"] for a in answers] == quantities
    assert all(a.status == 201 for a in answers)


@pytest.mark.parametrize("route", ["purchase", "bid"])
async def test_a_byte_at_a_time(pair: Pair, api: Api, route: str) -> None:
    if route == "purchase":
        s = await api.setup_sale(stock=5)
        raw = purchase(s["sale_id"], pair.fast.token("slow"), "k1")
    else:
        a = await setup_auction(api)
        raw = purchase(a["id"], pair.fast.token("slow"), "k1", b'{"max_cents":2000}').replace(
            b"/api/sales/%s/orders" % a["id"].encode(), b"/api/auctions/%s/bids" % a["id"].encode())
    before = pair.site.fast.served
    async with connect(pair.fast) as (reader, writer):
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
            if i % 16 == 0:
                await asyncio.sleep(0.001)
        resp = await read_response(reader)
    assert resp.status == 201, resp
    assert pair.site.fast.served == before + 1


async def test_hand_off_mid_connection(pair: Pair, api: Api) -> None:
    """Purchase, then another route, then a purchase, on one keep-alive connection: the second
    request hands the connection to aiohttp, which answers it and the third, in order."""
    s = await api.setup_sale(stock=5, per_user_limit=5)
    sale, tok = s["sale_id"], pair.fast.token("mixer")
    before_served, before_handoffs = pair.site.fast.served, pair.site.fast.handoffs
    get = b"GET /api/sales/%s HTTP/1.1\r\nHost: x\r\n\r\n" % sale.encode()
    async with connect(pair.fast) as (reader, writer):
        writer.write(purchase(sale, tok, "m1"))
        first = await read_response(reader)
        writer.write(get)
        second = await read_response(reader)
        writer.write(purchase(sale, tok, "m2"))
        third = await read_response(reader)
        # Pipelined across the hand-off: a purchase and a GET in one write.
        writer.write(purchase(sale, tok, "m3") + get)
        fourth, fifth = await read_response(reader), await read_response(reader)
    assert (first.status, second.status, third.status, fourth.status, fifth.status) == (201, 200, 201, 201, 200)
    assert orjson.loads(second.body)["id"] == sale
    assert pair.site.fast.served == before_served + 1
    assert pair.site.fast.handoffs == before_handoffs + 1


async def test_pipelined_hand_off_waits_for_the_answer(pair: Pair, api: Api) -> None:
    """A purchase and a GET in one write, on a fresh connection: the purchase (fast path, waiting on
    Redis) is answered before aiohttp answers the GET."""
    s = await api.setup_sale(stock=5)
    sale = s["sale_id"]
    raw = purchase(sale, pair.fast.token("p"), "k") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    first, second = await exchange(pair.fast, raw, 2)
    assert first.status == 201 and orjson.loads(first.body)["sale"] == sale
    assert second.status == 200 and orjson.loads(second.body) == {"status": "ok"}


@pytest.mark.parametrize("name,raw_of", [
    ("chunked", lambda sale, tok: (
        b"POST /api/sales/%s/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nIdempotency-Key: c1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n8\r\n{\"quanti\r\n6\r\nty\":1}\r\n0\r\n\r\n" % (sale.encode(), tok.encode()))),
    ("http10", lambda sale, tok: purchase(sale, tok, "h1", version=b"HTTP/1.0")),
    ("expect", lambda sale, tok: purchase(sale, tok, "e1", extra=b"Expect: 100-continue\r\n")),
    ("query", lambda sale, tok: purchase(sale, tok, "q1").replace(b"/orders ", b"/orders?x=1 ", 1)),
    ("lowercase-headers", lambda sale, tok: purchase(sale, tok, "l1").replace(b"Authorization", b"authorization")),
    ("space-in-value", lambda sale, tok: purchase(sale, tok, "s1").replace(b"Content-Length: ", b"Content-Length:   ")),
])
async def test_outside_the_subset_aiohttp_serves_it(pair: Pair, api: Api, name: str, raw_of: Any) -> None:
    """Valid HTTP the fast path does not take (or takes, for the last two) is answered correctly."""
    s = await api.setup_sale(stock=5)
    raw = raw_of(s["sale_id"], pair.fast.token("u"))
    before = pair.site.fast.handoffs
    (fast,) = await exchange(pair.fast, raw) if name != "expect" else [await _expect(pair.fast, raw)]
    assert fast.status == 201, (name, fast)
    taken = name in ("lowercase-headers", "space-in-value")
    assert pair.site.fast.handoffs == before + (0 if taken else 1)


async def _expect(srv: LiveServer, raw: bytes) -> Response:
    async with connect(srv) as (reader, writer):
        writer.write(raw)
        first = await read_response(reader)
        return await read_response(reader) if first.status == 100 else first


@pytest.mark.parametrize("name,raw_of", [
    ("two-lengths", lambda sale, tok: purchase(sale, tok, "d1", extra=b"Content-Length: 14\r\n")),
    ("length-and-chunked", lambda sale, tok: purchase(sale, tok, "d2", extra=b"Transfer-Encoding: chunked\r\n")),
    ("bare-lf", lambda sale, tok: purchase(sale, tok, "b1").replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\n")),
    ("obs-fold", lambda sale, tok: purchase(sale, tok, "o1", extra=b"X-A: 1\r\n  folded\r\n")),
    ("nul", lambda sale, tok: purchase(sale, tok, "n1", extra=b"X-A: a\x00b\r\n")),
    ("space-before-colon", lambda sale, tok: purchase(sale, tok, "s1", extra=b"X-A : b\r\n")),
    ("too-large", lambda sale, tok: purchase(sale, tok, "t1", b'{"quantity":1,"pad":"' + b"x" * MAX_BODY + b'"}')),
    ("two-keys", lambda sale, tok: purchase(sale, tok, "k1", extra=b"Idempotency-Key: k2\r\n")),
])
async def test_odd_requests_get_aiohttp_answer(pair: Pair, api: Api, redis_url: str, name: str, raw_of: Any) -> None:
    """Ambiguous or malformed requests go to aiohttp, byte for byte: the fast socket answers exactly
    as the aiohttp one does, and neither oversells or double-books."""
    s = await api.setup_sale(stock=5, per_user_limit=5)
    before = pair.site.fast.served
    raw = raw_of(s["sale_id"], pair.fast.token("odd"))
    fast = await _one_answer_or_close(pair.fast, raw)
    aio = await _one_answer_or_close(pair.aio, raw)
    if fast is None or aio is None:
        assert fast is None and aio is None, (fast, aio)
    elif fast.status in (200, 201):  # the aiohttp socket then repeats the same user's key: 200
        assert (fast.status, aio.status) == (201, 200), name
        assert normalized(fast)[1:] == normalized(aio)[1:], name
    else:
        assert fast.comparable() == aio.comparable(), name
    print(name, fast.status_line if fast else "closed")
    assert pair.site.fast.served == before  # none of these on the fast path
    r = aioredis.Redis.from_url(redis_url)
    sale = await r.hgetall(keys.sale(s["sale_id"]))
    assert int(sale[b"available"]) + int(sale[b"held"]) + int(sale.get(b"sold", 0)) == 5
    await r.aclose()


async def _one_answer_or_close(srv: LiveServer, raw: bytes) -> Response | None:
    async with connect(srv) as (reader, writer):
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            return await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None


async def test_connection_close_is_honoured(pair: Pair, api: Api) -> None:
    s = await api.setup_sale(stock=5)
    async with connect(pair.fast) as (reader, writer):
        writer.write(purchase(s["sale_id"], pair.fast.token("c"), "k", extra=b"Connection: close\r\n"))
        resp = await read_response(reader)
        assert resp.header(b"Connection") == b"close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it


async def test_half_closed_client_gets_its_answer(pair: Pair, api: Api) -> None:
    s = await api.setup_sale(stock=5)
    async with connect(pair.fast) as (reader, writer):
        writer.write(purchase(s["sale_id"], pair.fast.token("h"), "k"))
        writer.write_eof()
        resp = await read_response(reader)
        assert resp.status == 201
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_websocket_on_the_fast_socket(pair: Pair, api: Api) -> None:
    """An upgrade is aiohttp's: the realtime hub works through the fast socket."""
    s = await api.setup_sale(stock=5)
    async with api.session.ws_connect(f"{pair.fast.ws_url}/ws/streams/{s['stream_id']}") as ws:
        msg = await asyncio.wait_for(ws.receive_json(), 5)
        assert msg["type"] == "snapshot"


async def test_shutdown_answers_requests_in_flight(settings: Settings) -> None:
    """Stopping the server closes idle fast connections and answers the ones mid-purchase first."""
    async with app_runner(settings) as runner:
        port = free_port()
        await make_site(runner, settings, port=port).start()
        srv = LiveServer(settings, port, app=runner.app)
        async with Api(srv) as a:
            s = await a.setup_sale(stock=20, per_user_limit=20)
        await _stop_mid_purchase(runner, srv, s["sale_id"])


async def _stop_mid_purchase(runner: web.AppRunner, srv: LiveServer, sale_id: str) -> None:
    port = srv.port
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
    for i, (_, w) in enumerate(busy):
        w.write(purchase(sale_id, srv.token(f"b{i}"), "k"))
    await asyncio.sleep(0)  # the requests are on the wire; stop while they are in hand
    cleanup = asyncio.create_task(runner.cleanup())
    answers = [await read_response(r) for r, _ in busy]
    await cleanup
    assert {a.status for a in answers} == {201}
    assert await asyncio.wait_for(idle_r.read(), 5) == b""
    for _, w in [*busy, (idle_r, idle_w)]:
        w.close()


async def test_malformed_http_is_one_log_line_not_a_traceback(
        pair: Pair, api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp logs a request its parser refuses as an ERROR with a traceback (any client could flood
    the log with them): it becomes one INFO line, and the client still gets its 400."""
    s = await api.setup_sale(stock=5)
    raw = purchase(s["sale_id"], pair.fast.token("x"), "k", extra=b"Content-Length: 14\r\n")  # two lengths
    caplog.set_level(logging.INFO, logger="aiohttp.server")
    for srv in (pair.fast, pair.aio):
        resp = await _one_answer(srv, raw)
        assert resp.status == 400
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 2
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in records), records
    assert "400" in records[0].getMessage() and "Content-Length" in records[0].getMessage()


async def _one_answer(srv: LiveServer, raw: bytes) -> Response:
    async with connect(srv) as (reader, writer):
        writer.write(raw)
        return await read_response(reader)


@pytest.mark.parametrize("name,raw_of", [
    ("two-lengths", lambda sale, tok: purchase(sale, tok, "k", extra=b"Content-Length: 14\r\n")),
    ("bare-lf", lambda sale, tok: purchase(sale, tok, "k").replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\n")),
    ("nul", lambda sale, tok: purchase(sale, tok, "k", extra=b"X-A: a\x00b\r\n")),
    ("long-line", lambda sale, tok: purchase(sale, tok, "k", extra=b"X-A: " + b"a" * 9000 + b"\r\n")),
    ("bad-method", lambda sale, tok: b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("not-http", lambda sale, tok: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40),
])
async def test_malformed_http_gets_our_json_error(pair: Pair, api: Api, redis_url: str, name: str, raw_of: Any) -> None:
    """What aiohttp's parser refuses is answered in the contract's error shape (400 `bad_request`,
    JSON), not aiohttp's text/plain page, on both sockets; the server keeps serving; nothing sold."""
    s = await api.setup_sale(stock=5)
    for srv in (pair.fast, pair.aio):
        async with connect(srv) as (reader, writer):
            writer.write(raw_of(s["sale_id"], srv.token("m")))
            resp = await read_response(reader)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
        assert resp.status == 400, (name, resp)
        assert resp.header(b"Content-Type") == b"application/json", (name, resp.headers)
        body = orjson.loads(resp.body)
        assert body["error"] == "bad_request" and body["message"].startswith("malformed HTTP request"), body
        print(name, body["message"])
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert st == 200 and (sale["available"], sale["held"]) == (5, 0)
