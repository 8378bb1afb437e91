"""Auctions over real HTTP on a real server, Redis and SQL: the rules as a client sees them, bad input,
a crowd of bidders in the last seconds, bids after the close, and closers that race or die."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import sqlalchemy as sa

from commerce import auction_rules as rules
from commerce import keys
from commerce.auctions import AUCTIONS, Auctions
from commerce.schema import auctions as auctions_table
from commerce.schema import orders as orders_table
from livesale.bus import log_key
from livesale.config import Settings
from livesale.db import make_engine
from livesale.embedded_redis import EmbeddedRedis
from livesale.services import SERVICES
from tests.helpers import Api, LiveServer, spawn_server, start_app_server, stop_server, wait_for
from tests.test_realtime_ws import collect, of_type, viewer


async def setup_auction(api: Api, *, start: bool = True, host: str = "host1", **spec: Any) -> dict[str, Any]:
    """A product, a live stream and an auction on it (started unless start=False)."""
    ht = api.server.token(host, "host")
    sku = f"LOT-{os.urandom(4).hex()}"
    st, p = await api.call("POST", "/api/products", token=ht, json={"sku": sku, "title": "Lot", "price_cents": 100})
    assert st == 201, p
    st, s = await api.call("POST", "/api/streams", token=ht, json={"title": "Auction night"})
    assert st == 201, s
    st, _ = await api.call("POST", f"/api/streams/{s['id']}/start", token=ht)
    assert st == 200
    body = {"sku": sku, "starting_bid_cents": 1000, "duration_s": 60, "hold_s": 60, **spec}
    st, a = await api.call("POST", f"/api/streams/{s['id']}/auctions", token=ht, json=body)
    assert st == 201, a
    if start:
        st, a = await api.call("POST", f"/api/auctions/{a['id']}/start", token=ht)
        assert st == 200, a
    return {"auction": a, "id": a["id"], "stream_id": s["id"], "host_token": ht, "sku": sku}


async def place(api: Api, auction_id: str, user: str, max_cents: Any, key: str) -> tuple[int, Any]:
    return await api.call("POST", f"/api/auctions/{auction_id}/bids", token=api.server.token(user),
                          json={"max_cents": max_cents}, headers={"Idempotency-Key": key})


async def wait_sold(api: Api, auction_id: str, timeout: float = 10) -> dict[str, Any]:  # noqa: ASYNC109 - polls, as wait_for
    """The auction's view once it is sold and its order announced."""
    last: list[Any] = [None]

    async def sold() -> Any:
        st, last[0] = await api.call("GET", f"/api/auctions/{auction_id}")
        return last[0] if last[0]["status"] == "sold" and last[0]["order"] else None

    try:
        return await wait_for(sold, timeout=timeout)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"not sold in {timeout} s: {last[0]}") from None


async def log_events(r: aioredis.Redis, stream_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"d"]) for _, f in await r.xrange(log_key(stream_id))]


async def sql_rows(server: LiveServer, table: sa.Table, where: Any) -> list[Any]:
    assert server.app is not None
    async with server.app[SERVICES].db.connect() as conn:
        return list((await conn.execute(sa.select(table).where(where))).all())


async def test_proxy_rules_ties_raise_and_retries_over_http(api: Api, redis_url: str) -> None:
    """Each rule as a client sees it (docs/auctions.md's amounts), a retried key answers 200 with the first
    answer, another max under the same key is 422, and no maximum appears in GET or the stream log."""
    a = await setup_auction(api)
    aid = a["id"]
    assert await place(api, aid, "ann", 5000, "k1") == (201, {"status": "leading", "price_cents": 1000,
                                                            "ends_at": a["auction"]["ends_at"]})
    st, again = await place(api, aid, "ann", 5000, "k1")
    assert st == 200 and again["price_cents"] == 1000 and again["status"] == "leading"
    st, err = await place(api, aid, "ann", 5100, "k1")
    assert st == 422 and err["error"] == "idempotency_conflict"
    assert (await place(api, aid, "ben", 3000, "k1"))[1]["price_cents"] == 3200  # min(5000, 3000 + 200)
    st, b = await place(api, aid, "ben", 6000, "k2")
    assert (st, b["status"], b["price_cents"]) == (201, "leading", 5300)  # min(6000, 5000 + 300)
    st, b = await place(api, aid, "ann", 6000, "k2")
    assert (st, b["status"], b["price_cents"]) == (201, "outbid", 6000)  # a tie: the earlier maximum wins
    st, b = await place(api, aid, "ben", 7777, "k3")
    assert (st, b["status"], b["price_cents"]) == (201, "leading", 6000)  # the leader raises: price stays
    st, err = await place(api, aid, "ben", 7000, "k4")
    assert (st, err["error"]) == (409, "already_leading")
    st, err = await place(api, aid, "cat", 6200, "k1")
    assert (st, err["error"], err["min_bid_cents"]) == (409, "bid_too_low", 6300)
    st, view = await api.call("GET", f"/api/auctions/{aid}")
    assert (view["price_cents"], view["leader"], view["bids"], view["min_bid_cents"]) == (6000, "ben", 4, 6300)
    r = aioredis.Redis.from_url(redis_url)
    try:
        events = await log_events(r, a["stream_id"])
    finally:
        await r.aclose()
    bids = [e for e in events if e["type"] == "bid"]
    assert [(e["price_cents"], e["leader"]) for e in bids] == [(1000, "ann"), (3200, "ann"), (5300, "ben"), (6000, "ben")]
    assert "7777" not in orjson.dumps(view).decode() + orjson.dumps(events).decode()


async def test_anti_snipe_and_sudden_death(api: Api) -> None:
    """A bid within extend_window_s of the end moves ends_at to now + extend_to_s; with sudden death it
    does not; a refused bid never moves it."""
    a = await setup_auction(api, duration_s=5, extend_window_s=10, extend_to_s=30)
    ends = a["auction"]["ends_at"]
    st, err = await place(api, a["id"], "ann", 500, "k")
    assert st == 409 and (await api.call("GET", f"/api/auctions/{a['id']}"))[1]["ends_at"] == ends
    st, b = await place(api, a["id"], "ann", 1000, "k2")
    assert st == 201 and b["ends_at"] > ends
    s = await setup_auction(api, duration_s=5, extend_window_s=10, extend_to_s=30, sudden_death=True)
    st, b = await place(api, s["id"], "ann", 1000, "k")
    assert st == 201 and b["ends_at"] == s["auction"]["ends_at"]


async def test_bad_input_gets_documented_errors_and_changes_nothing(api: Api, redis_url: str) -> None:
    """Negative, zero, float, string, bool, null, huge amounts, no body, no key, an unknown auction, the
    host bidding (host role or the host's own sub), a scheduled auction: each its documented error,
    and the auction, its idempotency keys and the stream log are as before."""
    a = await setup_auction(api)
    sched = await setup_auction(api, start=False)
    aid = a["id"]
    r = aioredis.Redis.from_url(redis_url)
    try:
        before = (await r.hgetall(keys.auction(a["stream_id"], aid)), await r.xlen(log_key(a["stream_id"])))
        for i, amount in enumerate((-1000, 0, 1000.0, 1500.5, "2000", True, None, [1000], {"x": 1}, 10**11, 10**40)):
            st, err = await place(api, aid, "ann", amount, f"k{i}")
            assert (st, err["error"]) == (422, "invalid_amount"), (amount, st, err)
        url = f"/api/auctions/{aid}/bids"
        st, err = await api.call("POST", url, token=api.server.token("ann"), json={"max_cents": 2000})
        assert (st, err["error"]) == (422, "missing_idempotency_key")
        st, err = await api.call("POST", url, token=api.server.token("ann"), data=b"max=2000",
                                 headers={"Idempotency-Key": "x"})
        assert (st, err["error"]) == (400, "bad_request")
        st, err = await api.call("POST", url, json={"max_cents": 2000}, headers={"Idempotency-Key": "x"})
        assert st == 401
        st, err = await api.call("POST", url, token=a["host_token"], json={"max_cents": 2000},
                                 headers={"Idempotency-Key": "x"})
        assert (st, err["error"]) == (403, "forbidden")
        st, err = await place(api, aid, "host1", 2000, "x")  # the host's own user id with a viewer token
        assert (st, err["error"]) == (403, "forbidden")
        for bad in ("au000000000000", "nope", "sa0123456789ab"):
            st, err = await place(api, bad, "ann", 2000, "x")
            assert (st, err["error"]) == (404, "not_found")
        st, err = await place(api, sched["id"], "ann", 2000, "x")
        assert (st, err["error"]) == (409, "auction_not_active")
        after = (await r.hgetall(keys.auction(a["stream_id"], aid)), await r.xlen(log_key(a["stream_id"])))
        assert after == before
        assert await r.hlen(keys.auction_idem(a["stream_id"], aid)) == 0
        for spec in ({"starting_bid_cents": 99}, {"duration_s": 4}, {"duration_s": 3601}, {"hold_s": 0},
                     {"sudden_death": "yes"}, {"reserve_cents": -1}, {"extend_to_s": 0}, {"starting_bid_cents": 1e3}):
            st, err = await api.call("POST", f"/api/streams/{a['stream_id']}/auctions", token=a["host_token"],
                                     json={"sku": a["sku"], "starting_bid_cents": 1000, "duration_s": 60,
                                           "hold_s": 60, **spec})
            assert (st, err["error"]) == (422, "validation_error"), spec
        st, err = await api.call("POST", f"/api/streams/{a['stream_id']}/auctions", token=api.server.token("x"),
                                 json={"sku": a["sku"], "starting_bid_cents": 1000, "duration_s": 60, "hold_s": 60})
        assert st == 403
        st, err = await api.call("POST", f"/api/auctions/{aid}/start", token=a["host_token"])
        assert (st, err["error"]) == (409, "invalid_state")
        st, err = await api.call("POST", f"/api/auctions/{sched['id']}/start", token=api.server.token("intruder", "host"))
        assert st == 403
        st, _ = await api.call("POST", f"/api/streams/{sched['stream_id']}/end", token=sched["host_token"])
        assert st == 200
        st, err = await api.call("POST", f"/api/auctions/{sched['id']}/start", token=sched["host_token"])
        assert (st, err["error"]) == (409, "invalid_state")  # the stream has ended
    finally:
        await r.aclose()
    st, _ = await api.call("GET", "/healthz")
    assert st == 200


async def test_hundreds_of_bidders_in_the_last_seconds(settings: Settings) -> None:
    """300 bidders pile in during the last 2.5 s (each accepted bid extends the clock), then ten more
    waves of 20, then bids after the close: one winner (the highest maximum), the price the rules give when the accepted bids are
    replayed in the order Redis took them, one `auction` event after every `bid` event, exactly one
    order in Redis and in SQL, and every bid after the close refused."""
    srv = spawn_server(settings)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        async with Api(srv) as api:
            a = await setup_auction(api, duration_s=8, extend_window_s=3, extend_to_s=3, hold_s=600)
            aid, stream = a["id"], a["stream_id"]
            rng = random.Random(14)
            maxes = rng.sample(range(1000, 400_000), 300)  # distinct: no ties to break by arrival
            users = [f"bidder{i}" for i in range(300)]
            tokens = {u: srv.token(u) for u in users + [f"late{n}-{i}" for n in range(1, 11) for i in range(20)]}
            results: list[tuple[str, int, int, Any]] = []
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                async def one(user: str, amount: int, key: str) -> None:
                    async with http.post(f"{srv.url}/api/auctions/{aid}/bids", json={"max_cents": amount},
                                         headers={"Authorization": f"Bearer {tokens[user]}",
                                                  "Idempotency-Key": key}) as resp:
                        results.append((user, amount, resp.status, await resp.json()))

                # The last ~2.5 s of the auction's first deadline.
                ends = datetime.fromisoformat(a["auction"]["ends_at"].replace("Z", "+00:00")).timestamp()
                await asyncio.sleep(max(0.0, ends - 2.5 - time.time()))
                await asyncio.gather(*(one(u, m, "k1") for u, m in zip(users, maxes, strict=True)))
                # Latecomers: ten more waves, each extending the clock again.
                for n in range(1, 11):
                    await asyncio.gather(*(one(f"late{n}-{i}", 500_000 + 100 * n + i, "k") for i in range(20)))
                view = await wait_sold(api, aid, timeout=20)
                # Bids after the close: all refused.
                for u in users[:30]:
                    st, err = await place(api, aid, u, 900_000, "after-close")
                    assert (st, err["error"]) == (409, "auction_not_active")

            statuses = Counter(st for *_, st, _ in results)
            assert set(statuses) <= {201, 409}, statuses
            accepted = [(u, m, b) for u, m, st, b in results if st == 201]
            # Prices rise with every accepted bid, so their order is Redis's order; replayed through the
            # pure rules with the clock each answer's ends_at implies, they give the same answers.
            accepted.sort(key=lambda x: x[2]["price_cents"])
            model = rules.State("active", ends_at=10**15)
            spec = rules.Rules(1000, 3000, 3000)
            for u, m, b in accepted:
                res = rules.bid(spec, model, u, m, 0)
                assert (res.outcome.value, res.price) == (b["status"], b["price_cents"]), (u, m, b)
            top_user, top_max = max(((u, m) for u, m, _ in accepted), key=lambda x: x[1])
            assert view["winner"] == model.leader == top_user
            assert view["price_cents"] == model.price <= top_max
            events = await log_events(r, stream)
            kinds = [e["type"] for e in events if e.get("auction") == aid]
            assert kinds.count("bid") == len(accepted) and kinds.count("auction") == 3  # scheduled, active, sold
            assert kinds[-1] == "auction" and events[-1]["status"] == "sold" and events[-1]["order"] == view["order"]
            bid_events = [e for e in events if e["type"] == "bid" and e["auction"] == aid]
            assert bid_events[-1]["ends_at"] == view["ends_at"]
            closed_at = int(await r.hget(keys.auction(stream, aid), "closed_at"))
            ends_ms = int(await r.hget(keys.auction(stream, aid), "ends_at"))
            assert 0 <= closed_at - ends_ms <= 1000  # closed within a second of ends_at
            orders = await r.hgetall(keys.orders(aid))
            assert [k for k in orders if k.startswith(b"s:")] == [b"s:" + view["order"].encode()]
            assert orders[b"u:" + view["order"].encode()].decode() == top_user

            eng = make_engine(settings.sql_url)

            async def in_sql() -> Any:
                async with eng.connect() as conn:
                    rows = (await conn.execute(sa.select(orders_table).where(orders_table.c.sale_id == aid))).all()
                    auc = (await conn.execute(sa.select(auctions_table).where(auctions_table.c.id == aid))).all()
                return (rows, auc) if rows and auc and auc[0].status == "sold" else None

            try:
                rows, auc = await wait_for(in_sql, timeout=10, interval=0.2)
            finally:
                await eng.dispose()
            assert [(x.id, x.user_id, x.amount_cents, x.status) for x in rows] == \
                [(view["order"], top_user, view["price_cents"], "reserved")]
            assert (auc[0].winner, auc[0].price_cents, auc[0].order_id) == (top_user, view["price_cents"], view["order"])
    finally:
        await r.aclose()
        stop_server(srv)


async def test_racing_closers_and_closers_that_die_make_one_order(server: LiveServer, api: Api, redis_url: str) -> None:
    """A closer that dies after fixing the winner, another that dies after making the order, then 20
    closers at once: one winner, one order, one `auction` sold event, SQL says sold. The server's own
    sweeper cannot close it first (its clock is an hour short of ends_at; these closers are given
    the clock)."""
    assert server.app is not None
    a = await setup_auction(api, duration_s=3600)
    aid, stream = a["id"], a["stream_id"]
    await place(api, aid, "ann", 4000, "k")
    await place(api, aid, "ben", 2500, "k")
    svc = server.app[SERVICES]
    after_end = int(await svc.redis.hget(keys.auction(stream, aid), "ends_at")) + 1
    dead1, dead2 = Auctions(svc), Auctions(svc)
    c = await dead1.close_step(aid, after_end)  # dies here
    assert c is not None and (c.status, c.winner, c.price) == ("sold", "ann", 2600)
    c2 = await dead2.close_step(aid, after_end)
    assert c2 is not None
    await dead2.award_step(aid, c2)  # dies here, before announcing
    st, v = await api.call("GET", f"/api/auctions/{aid}")
    assert v["status"] == "sold" and v["order"] is None  # not announced yet
    closers = [Auctions(svc) for _ in range(20)]
    outcomes = await asyncio.gather(*(x.settle(aid, after_end) for x in closers))
    assert {(o.status, o.winner, o.price, o.order) for o in outcomes if o} == {("sold", "ann", 2600, c.order)}
    r = aioredis.Redis.from_url(redis_url)
    try:
        orders = await r.hgetall(keys.orders(aid))
        assert [k for k in orders if k.startswith(b"s:")] == [b"s:" + c.order.encode()]
        assert await r.xlen(keys.events(aid)) == 1  # one `reserved` order event for the writer
        sold = [e for e in await log_events(r, stream) if e["type"] == "auction" and e["status"] == "sold"]
        assert len(sold) == 1 and sold[0]["order"] == c.order and sold[0]["winner"] == "ann"
        assert not await r.sismember(keys.OPEN_AUCTIONS, aid)
    finally:
        await r.aclose()
    st, v = await api.call("GET", f"/api/auctions/{aid}")
    assert (v["status"], v["winner"], v["order"], v["price_cents"]) == ("sold", "ann", c.order, 2600)
    st, err = await place(api, aid, "cat", 9000, "late")
    assert (st, err["error"]) == (409, "auction_not_active")
    rows = await sql_rows(server, auctions_table, auctions_table.c.id == aid)
    assert rows[0].status == "sold" and rows[0].order_id == c.order


async def test_winner_pays_through_the_order_pipeline(server: LiveServer, api: Api) -> None:
    """The winner's order is an ordinary order: amount = price, only the winner sees or pays it, paying
    twice is 409, the order writer puts it in SQL as paid, the stream's stats count it (kind
    `auction`); an unsold auction (reserve not met) makes no order."""
    assert server.app is not None
    a = await setup_auction(api, duration_s=3600)
    aid = a["id"]
    await place(api, aid, "ann", 4000, "k")
    await place(api, aid, "ben", 2500, "k")
    auc = server.app[AUCTIONS]
    ends = int(await server.app[SERVICES].redis.hget(keys.auction(a["stream_id"], aid), "ends_at"))
    c = await auc.settle(aid, ends)
    assert c is not None and c.status == "sold"
    st, err = await api.call("GET", f"/api/orders/{c.order}", token=api.server.token("ben"))
    assert st == 404
    st, order = await api.call("GET", f"/api/orders/{c.order}", token=api.server.token("ann"))
    assert (st, order["auction"], order["amount_cents"], order["status"], order["quantity"]) == \
        (200, aid, 2600, "reserved", 1)
    st, err = await api.call("POST", f"/api/orders/{c.order}/pay", token=api.server.token("ben"),
                             json={"payment_method": "pm_card_visa"})
    assert st == 404
    st, paid = await api.call("POST", f"/api/orders/{c.order}/pay", token=api.server.token("ann"),
                              json={"payment_method": "pm_card_visa"})
    assert (st, paid["status"]) == (200, "paid")
    st, err = await api.call("POST", f"/api/orders/{c.order}/pay", token=api.server.token("ann"),
                             json={"payment_method": "pm_card_visa"})
    assert (st, err["error"]) == (409, "order_not_pending")

    async def paid_in_sql() -> bool:
        rows = await sql_rows(server, orders_table, orders_table.c.id == c.order)
        return bool(rows) and rows[0].status == "paid" and rows[0].amount_cents == 2600

    await wait_for(paid_in_sql, timeout=10)

    async def in_stats() -> Any:
        st, stats = await api.call("GET", f"/api/streams/{a['stream_id']}/stats", token=a["host_token"])
        won = [p for p in stats["products"] if p["kind"] == "auction"]
        return stats if won and won[0]["gmv_cents"] == 2600 else None

    stats = await wait_for(in_stats, timeout=5)
    assert [(p["id"], p["orders"], p["paid_orders"], p["units_sold"]) for p in stats["products"]] == [(aid, 1, 1, 1)]
    assert (stats["gmv_cents"], stats["buyers"], stats["paid_orders"]) == (2600, 1, 1)
    u = await setup_auction(api, duration_s=3600, reserve_cents=5000)
    await place(api, u["id"], "ann", 4000, "k")
    ends = int(await server.app[SERVICES].redis.hget(keys.auction(u["stream_id"], u["id"]), "ends_at"))
    c = await auc.settle(u["id"], ends)
    assert c is not None and c.status == "unsold"
    st, v = await api.call("GET", f"/api/auctions/{u['id']}")
    assert (v["status"], v["reserve_met"], "winner" in v) == ("unsold", False, False)
    assert not await server.app[SERVICES].redis.exists(keys.orders(u["id"]))


async def test_unpaid_win_expires_like_any_hold(server: LiveServer, api: Api) -> None:
    """The winner who does not pay within hold_s: the order expires (the sweeper, as for sales), SQL
    says expired, and the auction stays sold to that winner."""
    assert server.app is not None
    a = await setup_auction(api, duration_s=3600, hold_s=1)
    await place(api, a["id"], "ann", 4000, "k")
    ends = int(await server.app[SERVICES].redis.hget(keys.auction(a["stream_id"], a["id"]), "ends_at"))
    c = await server.app[AUCTIONS].settle(a["id"], ends)
    assert c is not None

    async def expired() -> bool:
        rows = await sql_rows(server, orders_table, orders_table.c.id == c.order)
        return bool(rows) and rows[0].status == "expired"

    await wait_for(expired, timeout=10)
    st, order = await api.call("GET", f"/api/orders/{c.order}", token=api.server.token("ann"))
    assert order["status"] == "expired"
    st, v = await api.call("GET", f"/api/auctions/{a['id']}")
    assert (v["status"], v["winner"]) == ("sold", "ann")


async def test_process_that_took_the_last_bid_dies(settings: Settings, server: LiveServer, api: Api) -> None:
    """The last bid goes to a `livesale serve` process that is then killed (SIGKILL) before ends_at:
    the other process closes the auction within a second of ends_at and makes the one order."""
    other = spawn_server(settings)
    try:
        a = await setup_auction(api, duration_s=5, extend_window_s=1, extend_to_s=1)
        async with Api(other) as api2:
            st, b = await place(api2, a["id"], "ann", 3000, "k")
            assert st == 201
        stop_server(other, signal.SIGKILL)

        v = await wait_sold(api, a["id"], timeout=10)
        assert v["winner"] == "ann" and v["price_cents"] == 1000
        assert server.app is not None
        redis = server.app[SERVICES].redis
        closed_at, ends_at = await redis.hmget(keys.auction(a["stream_id"], a["id"]), "closed_at", "ends_at")
        assert 0 <= int(closed_at) - int(ends_at) <= 1000
    finally:
        stop_server(other)


async def test_bids_racing_the_close_are_refused_after_it(api: Api, redis_url: str) -> None:
    """Sudden death: valid, ever higher bids keep coming through the deadline. Each is answered 201
    before the close or 409 after it, never accepted after: every 201 has its `bid` event, all of them
    before the `auction` event (those the bounded log still holds), and the last one's price is the
    winning price."""
    a = await setup_auction(api, duration_s=5, sudden_death=True)
    aid = a["id"]
    answers: list[tuple[int, Any]] = []
    n = 0
    while True:
        n += 1
        batch = await asyncio.gather(*(place(api, aid, f"u{n}-{i}", 1000 + 10_000 * n + i, "k") for i in range(5)))
        answers += batch
        if all(st == 409 and b["error"] == "auction_not_active" for st, b in batch):
            break
    # Within a batch, a lower maximum can come after a higher one: too low, the only other refusal.
    assert {b["error"] for st, b in answers if st == 409} <= {"auction_not_active", "bid_too_low"}

    view = await wait_sold(api, aid, timeout=10)
    r = aioredis.Redis.from_url(redis_url)
    try:
        events = [e for e in await log_events(r, a["stream_id"]) if e.get("auction") == aid]
    finally:
        await r.aclose()
    ok = [b for st, b in answers if st == 201]
    bids = [e for e in events if e["type"] == "bid"]
    # The log keeps the last ~1000 events (stream_log_maxlen): compare what it holds.
    assert view["bids"] == len(ok) and 0 < len(bids) <= len(ok)
    assert events[-1]["type"] == "auction" and events[-1]["status"] == "sold"
    assert sorted(b["price_cents"] for b in ok)[-len(bids):] == [e["price_cents"] for e in bids]
    assert view["price_cents"] == bids[-1]["price_cents"] and view["winner"] == bids[-1]["leader"]


async def test_listed_on_the_stream_and_in_my_orders(server: LiveServer, api: Api) -> None:
    """GET /api/streams/{id}/sales lists the stream's auctions under `auctions` (oldest first, no
    maximum), and the winner's GET /api/me/orders has the win as kind `auction`, live status from Redis."""
    assert server.app is not None
    a = await setup_auction(api, duration_s=3600)
    await place(api, a["id"], "ann", 4321, "k")
    ends = int(await server.app[SERVICES].redis.hget(keys.auction(a["stream_id"], a["id"]), "ends_at"))
    c = await server.app[AUCTIONS].settle(a["id"], ends)
    assert c is not None and c.status == "sold"
    st, listing = await api.call("GET", f"/api/streams/{a['stream_id']}/sales")
    assert st == 200 and [x["id"] for x in listing["auctions"]] == [a["id"]]
    assert listing["auctions"][0]["winner"] == "ann" and "4321" not in orjson.dumps(listing).decode()

    async def listed() -> Any:
        st, mine = await api.call("GET", "/api/me/orders", token=api.server.token("ann"))
        return mine["orders"] if st == 200 and mine["orders"] else None

    orders = await wait_for(listed, timeout=10)
    assert [(o["kind"], o["id"], o["auction"], o["stream_id"], o["status"], o["amount_cents"]) for o in orders] \
        == [("auction", c.order, a["id"], a["stream_id"], "reserved", 1000)]


async def test_viewers_see_every_price_change_live_and_on_resume(api: Api) -> None:
    """A viewer on the stream's WebSocket finds the auction in its snapshot, gets each accepted bid as
    a `bid` event (the contract's fields, no maximum) in the order of the answers; one that reconnects
    with since= gets the ones it missed, in order, with the same seqs."""
    a = await setup_auction(api)
    aid, sid = a["id"], a["stream_id"]
    async with viewer(api.server, sid, "watcher") as (ws, first):
        assert first[0]["type"] == "snapshot"
        assert [(x["id"], x["status"]) for x in first[0]["auctions"]] == [(aid, "active")]  # who joins sees it
        answers = [await place(api, aid, u, m, "k") for u, m in (("ann", 5000), ("ben", 3000), ("cat", 9999))]
        live = of_type(await collect(ws, lambda ev: len(of_type(ev, "bid")) == 3), "bid")
    assert [e["price_cents"] for e in live] == [b["price_cents"] for _, b in answers] == [1000, 3200, 5300]
    assert [e["leader"] for e in live] == ["ann", "ann", "cat"]
    assert set(live[0]) == {"type", "auction", "price_cents", "leader", "ends_at", "bids", "ts", "seq"}
    async with viewer(api.server, sid, "late", since=live[0]["seq"]) as (_ws, replay):
        assert [(e["price_cents"], e["seq"]) for e in of_type(replay, "bid")] == \
            [(e["price_cents"], e["seq"]) for e in live[1:]]


async def test_redis_down_bids_answer_503_then_resume(settings: Settings, tmp_path: Path) -> None:
    """With Redis stopped a bid is 503 `unavailable` with Retry-After (never a guess); after Redis is
    back (AOF), the same key bids as if the 503 never happened, and earlier bids are all still there."""
    own = EmbeddedRedis(tmp_path / "own-redis").start()
    try:
        async with start_app_server(replace(settings, redis_url=own.url)) as srv, Api(srv) as api:
            a = await setup_auction(api)
            assert (await place(api, a["id"], "ann", 5000, "k"))[0] == 201
            own.stop()
            async with api.session.post(f"{srv.url}/api/auctions/{a['id']}/bids", json={"max_cents": 3000},
                                        headers={"Authorization": f"Bearer {srv.token('ben')}",
                                                 "Idempotency-Key": "k"}) as resp:
                assert resp.status == 503 and (await resp.json())["error"] == "unavailable"
                assert resp.headers.get("Retry-After")
            own.restart()

            async def answered() -> Any:
                st, b = await place(api, a["id"], "ben", 3000, "k")
                return (st, b) if st != 503 else None

            assert await wait_for(answered, timeout=10) == (201, {"status": "outbid", "price_cents": 3200,
                                                                  "ends_at": a["auction"]["ends_at"]})
            st, v = await api.call("GET", f"/api/auctions/{a['id']}")
            assert (v["leader"], v["price_cents"], v["bids"]) == ("ann", 3200, 2)
    finally:
        own.stop()
