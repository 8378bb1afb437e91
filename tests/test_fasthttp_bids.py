"""livesale.fasthttp's bid route (`POST /api/auctions/{id}/bids`): the fast socket and aiohttp's own
socket of one app answer alike (status line, headers but Date, body), for every outcome; bids are
pipelined, mixed with purchases and handed off like purchases; and a crowd bidding through both
sockets at once leaves the auction consistent."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import orjson
import redis.asyncio as aioredis

from commerce import auction_rules as rules
from commerce import keys
from commerce.auctions import AUCTIONS
from tests import test_fasthttp as fh
from tests.helpers import Api, LiveServer
from tests.metrics_scrape import delta, scrape
from tests.test_auctions import setup_auction
from tests.test_fasthttp import Pair, Response, connect, exchange, purchase, read_response

pair, api = fh.pair, fh.api  # one app on a fast and an aiohttp socket


def bid(auction_id: str, token: str | None, key: str | None, body: bytes | None = None, max_cents: int = 2000,
        extra: bytes = b"") -> bytes:
    body = orjson.dumps({"max_cents": max_cents}) if body is None else body
    head = b"POST /api/auctions/%s/bids HTTP/1.1\r\nHost: 127.0.0.1\r\n" % auction_id.encode()
    if token is not None:
        head += b"Authorization: Bearer %s\r\n" % token.encode()
    if key is not None:
        head += b"Idempotency-Key: %s\r\n" % key.encode()
    return head + extra + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def test_fast_and_aiohttp_answer_bids_alike(pair: Pair, api: Api) -> None:
    """Each outcome from each socket. Refusals change nothing, so both sockets get the same request and
    must answer the same bytes; an accepted bid is sent to one socket and retried on the other, which
    must answer 200 with the same body."""
    a = await setup_auction(api)
    sched = await setup_auction(api, start=False)
    aid = a["id"]
    fast, aio = pair.fast, pair.aio
    before = pair.site.fast.served
    tok = fast.token  # tokens are the same on both sockets (one app)
    # Accepted bids: first on one socket, the retry on the other.
    accepted = [(fast, aio, bid(aid, tok("ann"), "k1", max_cents=5000)),
                (aio, fast, bid(aid, tok("ben"), "k1", max_cents=3000)),  # outbid
                (fast, aio, bid(aid, tok("ben"), "k2", max_cents=6000)),  # leading
                (aio, fast, bid(aid, tok("ben"), "k3", max_cents=7777))]  # the leader raises
    for first_srv, retry_srv, raw in accepted:
        (first,) = await exchange(first_srv, raw)
        (retry,) = await exchange(retry_srv, raw)
        assert (first.status, retry.status) == (201, 200), (first, retry)
        assert first.comparable()[1:] == retry.comparable()[1:]
    refusals: list[bytes] = [
        bid(aid, None, "k"),  # 401
        bid(aid, "garbage", "k"),  # 401
        bid(aid, a["host_token"], "k"),  # 403, the host role
        bid(aid, tok("host1"), "k"),  # 403, the host's own user with a viewer token
        bid(aid, tok("mod", "moderator"), "k"),  # 403
        bid(aid, tok("cat"), None),  # 422 missing key
        bid(aid, tok("cat"), "bad key with spaces"),  # 422
        bid(aid, tok("cat"), "k", b"{not json"),  # 400
        bid(aid, tok("cat"), "k", b"[1]"),  # 400
        bid(aid, tok("cat"), "k", b""),  # 400
        *(bid(aid, tok("cat"), "k", orjson.dumps({"max_cents": v}) if not isinstance(v, bytes) else v)
          for v in (-1000, 0, 1000.0, "2000", True, None, 10**11, b'{"max_cents":1e400}', b'{"max_cents":99999999999999999999999}')),
        bid("au000000000000", tok("cat"), "k"),  # 404 unknown
        bid("nope", tok("cat"), "k"),  # 404 malformed
        bid("sa0123456789ab", tok("cat"), "k"),  # 404, a sale's id
        bid(sched["id"], tok("cat"), "k"),  # 409 not active
        bid(aid, tok("cat"), "k", max_cents=5500),  # 409 too low (min 5600)
        bid(aid, tok("ben"), "k4", max_cents=7000),  # 409 already leading
        bid(aid, tok("ben"), "k2", max_cents=6100),  # 422 idempotency conflict
        bid(aid, tok("cat"), "k", max_cents=5500, extra=b"Connection: close\r\n"),  # 409, then close
    ]
    statuses = []
    for raw in refusals:
        (f,) = await exchange(fast, raw)
        (g,) = await exchange(aio, raw)
        assert f.comparable() == g.comparable(), raw
        statuses.append(f.status)
    assert statuses == [401, 401, 403, 403, 403, 422, 422, 400, 400, 400, *[422] * 9, 404, 404, 404, 409, 409, 409,
                        422, 409]
    assert pair.site.fast.served - before == 2 + 2 + len(refusals)  # all of them on the fast path
    assert pair.site.fast.handoffs == 0
    st, view = await api.call("GET", f"/api/auctions/{aid}")
    assert (view["leader"], view["price_cents"], view["bids"]) == ("ben", 5300, 3)


async def test_first_bid_of_a_process_on_the_fast_path(pair: Pair, api: Api) -> None:
    """The first bid on an auction this process has not looked up yet (no cached AuctionInfo) is
    answered alike too."""
    a = await setup_auction(api)
    assert pair.fast.app is not None
    pair.fast.app[AUCTIONS]._info.clear()
    (f,) = await exchange(pair.fast, bid(a["id"], pair.fast.token("ann"), "k1"))
    pair.fast.app[AUCTIONS]._info.clear()
    (g,) = await exchange(pair.aio, bid(a["id"], pair.fast.token("ann"), "k1"))
    assert (f.status, g.status) == (201, 200) and f.comparable()[1:] == g.comparable()[1:]


async def test_pipelined_bids_and_purchases_answer_in_order(pair: Pair, api: Api) -> None:
    """Bids and purchases pipelined on one connection, a byte-split GET after them: the fast path answers
    the bids and purchases in order, then hands the GET to aiohttp."""
    a = await setup_auction(api)
    s = await api.setup_sale(stock=10, per_user_limit=10)
    tok = pair.fast.token("piper")
    before_served, before_handoffs = pair.site.fast.served, pair.site.fast.handoffs
    raws = []
    for i in range(6):
        raws.append(bid(a["id"], pair.fast.token(f"b{i}"), f"k{i}", max_cents=2000 + 1000 * i))
        raws.append(purchase(s["sale_id"], tok, f"p{i}"))
    get = b"GET /api/auctions/%s HTTP/1.1\r\nHost: x\r\n\r\n" % a["id"].encode()
    async with connect(pair.fast) as (reader, writer):
        writer.write(b"".join(raws) + get[:7])
        await writer.drain()
        writer.write(get[7:])
        answers: list[Response] = [await read_response(reader) for _ in range(len(raws) + 1)]
    assert [r.status for r in answers] == [201] * len(raws) + [200]
    assert [orjson.loads(r.body)["status"] for r in answers[0:-1:2]] == ["leading"] * 6
    assert [orjson.loads(r.body)["quantity"] for r in answers[1:-1:2]] == [1] * 6
    view = orjson.loads(answers[-1].body)
    assert (view["leader"], view["bids"]) == ("b5", 6)
    assert pair.site.fast.served - before_served == len(raws)
    assert pair.site.fast.handoffs - before_handoffs == 1


async def test_a_crowd_bidding_through_both_sockets(pair: Pair, api: Api, redis_url: str) -> None:
    """400 bidders over 40 connections, half on each socket, each bidding twice (once retried with the
    same key): every accepted answer has its record, the auction's counter equals the accepted bids,
    the highest maximum leads at the price the rules give when the accepted bids are replayed in the
    order their prices rose, and each retry answers 200 with its first answer."""
    a = await setup_auction(api)
    aid, stream = a["id"], a["stream_id"]
    rng = random.Random(14)
    maxes = rng.sample(range(1000, 400_000), 400)
    results: list[tuple[str, int, int, Any]] = []
    retries: list[tuple[Response, Response]] = []
    before = pair.site.fast.served

    async def bidder_connection(n: int) -> None:
        srv: LiveServer = pair.fast if n % 2 else pair.aio
        async with connect(srv) as (reader, writer):
            for i in range(n, 400, 40):
                user = f"crowd{i}"
                raw = bid(aid, srv.token(user), "k", max_cents=maxes[i])
                writer.write(raw)
                first = await read_response(reader)
                writer.write(raw)
                again = await read_response(reader)
                results.append((user, maxes[i], first.status, orjson.loads(first.body)))
                if first.status == 201:
                    retries.append((first, again))

    await asyncio.gather(*(bidder_connection(n) for n in range(40)))
    statuses = Counter(st for _, _, st, _ in results)
    assert set(statuses) <= {201, 409} and statuses[201] > 0, statuses
    assert all(again.status == 200 and again.body == first.body for first, again in retries)
    accepted = sorted(((u, m, b) for u, m, st, b in results if st == 201), key=lambda x: x[2]["price_cents"])
    model = rules.State("active", ends_at=10**15)
    spec = rules.Rules(1000, 10, 10)
    for u, m, b in accepted:
        res = rules.bid(spec, model, u, m, 0)
        assert (res.outcome.value, res.price) == (b["status"], b["price_cents"]), (u, m, b)
    r = aioredis.Redis.from_url(redis_url)
    try:
        auction = await r.hgetall(keys.auction(stream, aid))
        records = await r.hlen(keys.auction_idem(stream, aid))
    finally:
        await r.aclose()
    assert records == len(accepted)
    top_user, _ = max(((u, m) for u, m, _ in accepted), key=lambda x: x[1])
    assert auction[b"leader"].decode() == model.leader == top_user
    assert int(auction[b"price"]) == model.price and int(auction[b"bids"]) == model.bids
    assert pair.site.fast.served - before == 400  # the fast socket's half, and their retries


async def test_bids_on_both_paths_move_the_same_series(pair: Pair, api: Api) -> None:
    """A bid answered on the fast path counts in the HTTP series aiohttp's route counts in, by the
    route's template and status."""
    a = await setup_auction(api)
    route = "/api/auctions/{id}/bids"
    deltas = []
    for n, srv in enumerate((pair.fast, pair.aio)):
        before = await scrape(api.session, api.server.url)
        for raw in (bid(a["id"], srv.token(f"m{n}"), "k", max_cents=100_000 * (n + 1)),  # 201
                    bid(a["id"], None, "k"),  # 401
                    bid(a["id"], srv.token(f"m{n}"), "k2", max_cents=500)):  # 409
            await exchange(srv, raw)
        after = await scrape(api.session, api.server.url)
        deltas.append({
            **{st: delta(before, after, "livesale_http_requests_total", route=route, method="POST", status=st)
               for st in ("201", "401", "409")},
            "observed": delta(before, after, "livesale_http_request_duration_seconds_count", route=route, method="POST"),
        })
    assert deltas[0] == deltas[1] == {"201": 1, "401": 1, "409": 1, "observed": 3}, deltas
