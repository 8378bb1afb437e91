"""Selling a limited stock to a crowd: no oversell, limits held, one order per key, under real
concurrency (a `livesale serve` subprocess, real Redis, thousands of simultaneous HTTP requests)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import redis.asyncio as aioredis

from commerce import keys
from livesale.config import Settings
from tests.helpers import Api, LiveServer, spawn_server, stop_server, wait_for


async def _sample_invariant(r: aioredis.Redis, sale_id: str, stock: int, stop: asyncio.Event) -> int:
    """Reads the sale hash in a tight loop; returns how many samples held the invariant."""
    samples = 0
    while not stop.is_set():
        a, h, s = (int(x) for x in await r.hmget(keys.sale(sale_id), "available", "held", "sold"))
        assert a >= 0 and h >= 0 and s >= 0, (a, h, s)
        assert a + h + s == stock, (a, h, s)
        samples += 1
        await asyncio.sleep(0.002)
    return samples


async def test_5000_attempts_2000_users_500_units(settings: Settings) -> None:
    """5,000 concurrent reserves by 2,000 users for 500 units, limit 2: exactly 500 units reserved or
    sold, nobody over the limit, the invariant holds in samples taken during the run, SQL agrees."""
    srv: LiveServer = spawn_server(settings)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        async with Api(srv) as api:
            s = await api.setup_sale(stock=500, per_user_limit=2, hold_s=600)
            sale_id = s["sale_id"]
            rng = random.Random(7)
            attempts = [(f"u{rng.randrange(2000)}", f"key-{i}", rng.choice((1, 1, 2))) for i in range(5000)]
            tokens = {u: srv.token(u) for u, _, _ in attempts}
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample_invariant(r, sale_id, 500, stop))
            conn = aiohttp.TCPConnector(limit=400)
            results: list[tuple[str, int, int, dict]] = []
            async with aiohttp.ClientSession(connector=conn) as http:
                async def one(user: str, key: str, qty: int) -> None:
                    async with http.post(f"{srv.url}/api/sales/{sale_id}/orders", json={"quantity": qty},
                                         headers={"Authorization": f"Bearer {tokens[user]}",
                                                  "Idempotency-Key": key}) as resp:
                        results.append((user, qty, resp.status, await resp.json()))
                        # Some buyers pay right away, while others are still reserving.
                        if resp.status == 201 and rng.random() < 0.3:
                            order = await resp.json()
                            async with http.post(f"{srv.url}/api/orders/{order['id']}/pay",
                                                 json={"payment_method": "pm_card_visa"},
                                                 headers={"Authorization": f"Bearer {tokens[user]}"}) as p:
                                assert p.status == 200, await p.text()

                await asyncio.gather(*(one(*a) for a in attempts))
            stop.set()
            samples = await sampler
            assert samples > 10

            statuses = Counter(st for _, _, st, _ in results)
            assert set(statuses) <= {201, 409}, statuses
            codes = Counter(b["error"] for _, _, st, b in results if st == 409)
            assert set(codes) <= {"sold_out", "limit_reached"}, codes
            won = [(u, q, b) for u, q, st, b in results if st == 201]
            assert sum(q for _, q, _ in won) == 500
            per_user = Counter()
            for u, q, _ in won:
                per_user[u] += q
            assert max(per_user.values()) <= 2
            assert len({b["id"] for _, _, b in won}) == len(won)

            st, sale = await api.call("GET", f"/api/sales/{sale_id}")
            assert sale["available"] == 0 and sale["held"] + sale["sold"] == 500
            users_hash = {k.decode(): int(v) for k, v in (await r.hgetall(keys.users(sale_id))).items()}
            assert users_hash == dict(per_user)

            # Every accepted order reaches SQL exactly once.
            from sqlalchemy import text

            from livesale.db import make_engine

            engine = make_engine(settings.sql_url)

            async def sql_orders() -> list:
                async with engine.connect() as c:
                    return list(await c.execute(text(
                        "SELECT id, user_id, quantity, status FROM orders WHERE sale_id = :s"), {"s": sale_id}))

            await wait_for(lambda: _count_is(sql_orders, len(won)), timeout=20)
            rows = await sql_orders()
            assert {row.id for row in rows} == {b["id"] for _, _, b in won}
            assert sum(row.quantity for row in rows) == 500
            await engine.dispose()
    finally:
        await r.aclose()
        stop_server(srv)


async def _count_is(fetch, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await fetch()) == n


async def test_20_retries_of_one_key_at_the_same_instant(api: Api) -> None:
    """20 simultaneous requests with one Idempotency-Key make one order: one 201, nineteen 200s, same id."""
    s = await api.setup_sale(stock=50, per_user_limit=5)
    res = await asyncio.gather(*(api.reserve(s["sale_id"], "bob", "same-key", 2) for _ in range(20)))
    assert sorted(st for st, _ in res) == [200] * 19 + [201]
    assert len({b["id"] for _, b in res}) == 1
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"]) == (48, 2)


async def test_same_key_other_quantity_is_a_conflict(api: Api) -> None:
    """Reusing a key with another quantity is 422 idempotency_conflict and takes no stock."""
    s = await api.setup_sale(stock=10, per_user_limit=5)
    st, first = await api.reserve(s["sale_id"], "carol", "k", 1)
    assert st == 201
    st, body = await api.reserve(s["sale_id"], "carol", "k", 2)
    assert st == 422 and body["error"] == "idempotency_conflict"
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"]) == (9, 1)


async def test_keys_are_scoped_per_user(api: Api) -> None:
    """Two users with the same Idempotency-Key get two different orders."""
    s = await api.setup_sale(stock=10)
    st1, a = await api.reserve(s["sale_id"], "u1", "shared")
    st2, b = await api.reserve(s["sale_id"], "u2", "shared")
    assert (st1, st2) == (201, 201) and a["id"] != b["id"]


async def test_many_sales_in_one_batch_stay_separate(api: Api) -> None:
    """Concurrent buyers of three sales (batched together in one pipeline) each hit their own stock."""
    sales = [await api.setup_sale(stock=n, per_user_limit=1) for n in (3, 5, 7)]
    res = await asyncio.gather(*(api.reserve(s["sale_id"], f"u{i}", f"k{i}")
                                 for s in sales for i in range(20)))
    wins = Counter()
    for (st, b) in res:
        if st == 201:
            wins[b["sale"]] += 1
    assert [wins[s["sale_id"]] for s in sales] == [3, 5, 7]
