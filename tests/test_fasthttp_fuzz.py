"""Property-based differential test of livesale.fasthttp's request parsing: generated purchase requests
(odd bodies, odd extra headers) sent to the fast socket and to aiohttp's own socket of one app get the
same answer (status line, headers but Date and Content-Length, body without per-order fields)."""

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
from tests.test_fasthttp import Pair, exchange, normalized, purchase

# One app on two sockets, and an API client on the aiohttp one (tests/test_fasthttp.py's fixtures).
pair = fh.pair
api = fh.api


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

    @hypothesis.settings(max_examples=int(os.environ.get("LIVESALE_FUZZ_EXAMPLES", "200")), deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
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
