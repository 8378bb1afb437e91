"""Property-based differential tests of livesale.fasthttp's request parsing: generated purchase and bid
requests (odd bodies, odd extra headers, odd request shapes sent in pieces) sent to the fast socket and to
aiohttp's own socket of one app get the same answer (status line, headers but Date and Content-Length,
body without per-order fields)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from typing import Any

import hypothesis
import orjson
from hypothesis import strategies as st

from tests import test_fasthttp as fh
from tests.helpers import Api
from tests.test_auctions import setup_auction
from tests.test_fasthttp import Pair, exchange, normalized, purchase

# One app on two sockets, and an API client on the aiohttp one (tests/test_fasthttp.py's fixtures).
pair = fh.pair
api = fh.api


# Every test here: a fixed sequence of examples (derandomized), LIVESALE_FUZZ_EXAMPLES of them.
_SETTINGS = hypothesis.settings(max_examples=int(os.environ.get("LIVESALE_FUZZ_EXAMPLES", "200")), deadline=None,
                                database=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck))


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # also integers past 64 bits, and Infinity (not JSON: refused)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
_BODY = st.one_of(
    st.integers(1, 3).map(lambda q: _dumps({"quantity": q})),
    _JSON.map(lambda q: _dumps({"quantity": q})),
    _JSON.map(_dumps),
    st.binary(max_size=40),
)
_NAME = st.text("abcXYZ-_!#$%&'*+.^`|~0123456789 :\t\x7f", min_size=1, max_size=12)
_VALUE = st.binary(max_size=20).filter(lambda v: b"\r" not in v and b"\n" not in v)
_EXTRA = st.lists(st.tuples(_NAME, _VALUE), max_size=3).map(
    lambda hs: b"".join(n.encode() + b": " + v + b"\r\n" for n, v in hs))


async def _answer(srv: Any, raw: bytes) -> Any:
    try:
        (resp,) = await exchange(srv, raw)
    except (asyncio.IncompleteReadError, ConnectionError):
        return "closed without an answer"
    try:
        return normalized(resp)
    except orjson.JSONDecodeError:
        return resp.status_line, [(k, v) for k, v in resp.headers if k not in (b"Date", b"Content-Length")], resp.body


async def test_generated_purchase_requests_get_the_same_answer_on_both_paths(pair: Pair, api: Api) -> None:
    """Each generated request goes to both sockets (its own user and key on each, so neither sees the
    other's order); every pair of answers is equal."""
    s = await api.setup_sale(stock=1_000_000, per_user_limit=100)
    counter = itertools.count()
    loop = asyncio.get_running_loop()
    seen: list[tuple[Any, Any, bytes]] = []
    served_before = pair.site.fast.served

    @_SETTINGS
    @hypothesis.given(body=_BODY, extra=_EXTRA)
    def check(body: bytes, extra: bytes) -> None:
        n = next(counter)
        answers = []
        for srv in (pair.fast, pair.aio):
            raw = purchase(s["sale_id"], api.server.token(f"fuzz{n}-{srv.port}"), f"k{n}", body=body, extra=extra)
            answers.append(asyncio.run_coroutine_threadsafe(_answer(srv, raw), loop).result(30))
        seen.append((answers[0], answers[1], extra + body))

    await asyncio.to_thread(check)
    differing = [x for x in seen if x[0] != x[1]]
    assert not differing, differing[:3]
    statuses = {a[0] if isinstance(a, tuple) else a for a, _, _ in seen}
    # The generated requests reached several outcomes, orders among them, and the fast path served some.
    assert len(statuses) > 2 and b"HTTP/1.1 201 Created" in statuses, statuses
    assert pair.site.fast.served > served_before


_BID_BODY = st.one_of(
    st.integers(1000, 10**6).map(lambda v: _dumps({"max_cents": v})),
    _JSON.map(lambda v: _dumps({"max_cents": v})),
    _JSON.map(_dumps),
    st.binary(max_size=40),
)


async def test_generated_bids_get_the_same_answer_on_both_paths(pair: Pair, api: Api) -> None:
    """Generated bid bodies and extra headers: each bid sent by one bidder to the fast socket, then
    retried on the aiohttp one, which must answer what the first did (200 with the same body for an
    accepted bid; a refusal writes nothing, so the retry is refused alike)."""
    a = await setup_auction(api)
    counter = itertools.count()
    loop = asyncio.get_running_loop()
    seen: list[tuple[Any, Any, bytes]] = []
    served_before = pair.site.fast.served

    @_SETTINGS
    @hypothesis.given(body=_BID_BODY, extra=_EXTRA)
    def check(body: bytes, extra: bytes) -> None:
        n = next(counter)
        raw = (b"POST /api/auctions/%s/bids HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nIdempotency-Key: k\r\n"
               b"%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (a["id"].encode(), api.server.token(f"bidder{n}").encode(), extra, len(body), body))
        first, retry = (asyncio.run_coroutine_threadsafe(_answer(srv, raw), loop).result(30) for srv in (pair.fast, pair.aio))
        if isinstance(first, tuple) and first[0].endswith(b" 201 Created") and retry[0].endswith(b" 200 OK"):
            retry = (first[0], *retry[1:])
        seen.append((first, retry, extra + body))

    await asyncio.to_thread(check)
    differing = [x for x in seen if x[0] != x[1]]
    assert not differing, differing[:3]
    statuses = {x[0] if isinstance(x, tuple) else x for x, _, _ in seen}
    assert len(statuses) > 2 and b"HTTP/1.1 201 Created" in statuses, statuses
    assert pair.site.fast.served > served_before


# Request shapes around the fast subset's edges: the request line's parts, the separators and line ends
# of the header lines, odd Content-Length forms and repeated or folded fields, each request sent whole
# or in pieces (partial reads feed the parser a part of a head at a time).
# Each part of a well-formed request, and odd values for it; a generated request has a few parts odd.
_ODD: dict[str, Any] = {
    "method": st.sampled_from([b"post", b"PUT", b"GET", b"POSTX", b"POST /x"]),
    "sp1": st.sampled_from([b"  ", b"\t"]),
    "target": st.sampled_from(["{p}?x=1", "{p}#f", "/{p}", "{p}/", "http://h{p}", "{p}%20", "{p}/../x", "{p}x"]),
    "sp2": st.sampled_from([b"  ", b"\t"]),
    "version": st.sampled_from([b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/11"]),
    "eol": st.sampled_from([b"\n", b"\r", b"\r\r\n", b" \r\n", b"\t\r\n"]),
    "host": st.sampled_from([b"", b"Host: other\r\n", b"Host:\r\n", b"Host: a b\r\n"]),
    "colon": st.sampled_from([b":", b":\t", b" : ", b":  ", b"\t: "]),
    "length": st.sampled_from(["+{n}", "0{n}", "{n} ", "{n}, {n}", "{n}x", "-{n}", "0x{n}", "{n}\r\nContent-Length: {n}"]),
    "fields": st.lists(st.tuples(
        st.sampled_from([b"X-A", b"Host", b"Content-Type", b"Connection", b"Idempotency-Key", b"User-Agent",
                         b"Transfer-Encoding", b"Content-Length", b"Expect", b"Upgrade", b"Proxy-Connection",
                         b"Content-Encoding", b"Keep-Alive", b"X-\x7fA", b"X A", b"Authorization"]),
        st.sampled_from([b"close", b"keep-alive", b"upgrade", b"chunked", b"identity", b"gzip", b"x", b"",
                         b"a\x00b", b"100-continue", b"\xc2\xa0", b"1", b"close, upgrade", b"Close "]),
        st.booleans()), min_size=1, max_size=3),  # (name, value, followed by an obs-fold line)
    "line": st.integers(0, 5),  # which line end `eol` replaces
    "cuts": st.lists(st.integers(1, 400), min_size=1, max_size=3),  # sent in pieces, cut there
}
_NORMAL: dict[str, Any] = {"method": b"POST", "sp1": b" ", "target": "{p}", "sp2": b" ", "version": b"HTTP/1.1",
                           "eol": b"\r\n", "host": b"Host: 127.0.0.1\r\n", "colon": b": ", "length": "{n}",
                           "fields": [], "line": 0, "cuts": []}


@st.composite
def _shaped(draw: Any) -> dict[str, Any]:
    odd = draw(st.lists(st.sampled_from(sorted(_ODD)), max_size=3, unique=True))
    return {**_NORMAL, **{part: draw(_ODD[part]) for part in odd}}


def _shaped_request(shape: dict[str, Any], path: str, token: str, key: str, body: bytes) -> tuple[bytes, list[int]]:
    eols = [b"\r\n"] * 6
    eols[shape["line"]] = shape["eol"]
    colon = shape["colon"]
    lines = [shape["method"] + shape["sp1"] + shape["target"].format(p=path).encode() + shape["sp2"]
             + shape["version"] + eols[0], shape["host"],
             b"Authorization" + colon + b"Bearer " + token.encode() + eols[1],
             b"Idempotency-Key" + colon + key.encode() + eols[2]]
    for name, value, folded in shape["fields"]:
        lines.append(name + colon + value + eols[3] + (b" folded" + eols[3] if folded else b""))
    lines.append(b"Content-Length" + colon + shape["length"].format(n=len(body)).encode() + eols[4])
    raw = b"".join(lines) + eols[5] + body
    return raw, sorted({c for c in shape["cuts"] if c < len(raw)})


async def _answer_in_pieces(srv: Any, raw: bytes, cuts: list[int]) -> Any:
    """The first answer to `raw` sent in pieces cut at `cuts`, normalized; or how it ended without one."""
    async with fh.connect(srv) as (reader, writer):
        try:
            for a, b in itertools.pairwise([0, *cuts, len(raw)]):
                writer.write(raw[a:b])
                await writer.drain()
                if b < len(raw):
                    await asyncio.sleep(0.002)  # most likely its own read on the server
            resp = await fh.read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed without an answer"
        except TimeoutError:
            return "no answer yet"
    try:
        return normalized(resp)
    except orjson.JSONDecodeError:
        return resp.status_line, [(k, v) for k, v in resp.headers if k not in (b"Date", b"Content-Length")], resp.body


async def _check_shapes(pair: Pair, path: str, body_of: Any, same_user: bool) -> list[tuple[Any, Any, bytes]]:
    """Send each generated shape to the fast socket, then to the aiohttp one: with its own user on each
    (`same_user` False), or as one user's retry (True: a first 201 is then answered 200 with its body)."""
    counter = itertools.count()
    loop = asyncio.get_running_loop()
    seen: list[tuple[Any, Any, bytes]] = []

    @_SETTINGS
    @hypothesis.given(shape=_shaped())
    def check(shape: dict[str, Any]) -> None:
        n = next(counter)
        answers = []
        for srv in (pair.fast, pair.aio):
            user = f"shape{n}" if same_user else f"shape{n}-{srv.port}"
            raw, cuts = _shaped_request(shape, path, srv.token(user), f"k{n}", body_of(n))
            answers.append(asyncio.run_coroutine_threadsafe(_answer_in_pieces(srv, raw, cuts), loop).result(60))
        first, retry = answers
        if same_user and isinstance(first, tuple) and first[0].endswith(b" 201 Created") and retry[0].endswith(b" 200 OK"):
            retry = (first[0], *retry[1:])
        seen.append((first, retry, raw))

    await asyncio.to_thread(check)
    return seen


def _assert_alike(pair: Pair, seen: list[tuple[Any, Any, bytes]], served_before: int, handoffs_before: int) -> None:
    differing = [x for x in seen if x[0] != x[1]]
    assert not differing, differing[:3]
    statuses = {a[0] if isinstance(a, tuple) else a for a, _, _ in seen}
    assert b"HTTP/1.1 201 Created" in statuses and b"HTTP/1.0 400 Bad Request" in statuses, statuses
    assert pair.site.fast.served > served_before and pair.site.fast.handoffs > handoffs_before


async def test_generated_request_shapes_get_the_same_answer_on_both_paths(pair: Pair, api: Api) -> None:
    """Purchases of many shapes, whole or in pieces, on both sockets: every pair of answers is equal, so
    whatever the fast path takes, it frames as aiohttp does, and what it does not take reaches aiohttp."""
    s = await api.setup_sale(stock=1_000_000, per_user_limit=100)
    served, handoffs = pair.site.fast.served, pair.site.fast.handoffs
    seen = await _check_shapes(pair, f"/api/sales/{s['sale_id']}/orders", lambda n: b'{"quantity":1}', False)
    _assert_alike(pair, seen, served, handoffs)


async def test_generated_bid_shapes_get_the_same_answer_on_both_paths(pair: Pair, api: Api) -> None:
    """Bids of the same shapes: each sent by one bidder to the fast socket, then retried on the aiohttp
    one, which must answer what the first did (200 with the same body for an accepted bid)."""
    a = await setup_auction(api)
    served, handoffs = pair.site.fast.served, pair.site.fast.handoffs
    seen = await _check_shapes(pair, f"/api/auctions/{a['id']}/bids",
                               lambda n: b'{"max_cents":%d}' % (2000 + 1000 * n), True)
    _assert_alike(pair, seen, served, handoffs)
