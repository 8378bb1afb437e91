"""Redis stopped during a sale: buyers get 503 `unavailable` with Retry-After (never a guess), the
server recovers by itself when Redis is back, and nothing is oversold or lost."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import aiohttp

from livesale.config import Settings
from livesale.embedded_redis import EmbeddedRedis
from tests.helpers import Api, start_app_server, wait_for


async def test_redis_outage_gives_503_and_no_oversell(settings: Settings, tmp_path: Path) -> None:
    """Stop Redis mid-sale, see 503s and a failing /readyz, restart it, finish the sale: accepted
    orders == held + sold <= stock, and every 503 retried with its key resolves to one order."""
    own = EmbeddedRedis(tmp_path / "own-redis").start()
    try:
        cfg = replace(settings, redis_url=own.url)
        async with start_app_server(cfg) as srv, Api(srv) as api:
            s = await api.setup_sale(stock=300, per_user_limit=2, hold_s=600)
            sale_id = s["sale_id"]
            rng = random.Random(11)
            outcomes: dict[str, int] = {}
            orders: dict[str, int] = {}
            saw_503 = asyncio.Event()

            async def buyer(i: int) -> None:
                user, key, qty = f"b{i}", f"key{i}", rng.choice((1, 2))
                for _attempt in range(200):
                    st, body = await api.reserve(sale_id, user, key, qty)
                    if st == 503:
                        assert body["error"] == "unavailable"
                        saw_503.set()
                        await asyncio.sleep(0.05)
                        continue
                    outcomes[key] = st
                    if st in (200, 201):
                        orders[body["id"]] = body["quantity"]
                    else:
                        assert st == 409 and body["error"] == "sold_out", body
                    return
                raise AssertionError("never got an answer")

            async def outage() -> None:
                await asyncio.sleep(0.05)
                own.stop()
                await saw_503.wait()
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{srv.url}/api/sales/{sale_id}/orders", json={"quantity": 1},
                                         headers={"Authorization": f"Bearer {srv.token('probe')}",
                                                  "Idempotency-Key": "probe"}) as resp:
                        assert resp.status == 503 and resp.headers["Retry-After"]
                    async with http.get(f"{srv.url}/readyz") as resp:
                        assert resp.status == 503
                await asyncio.sleep(0.5)
                own.restart()

            await asyncio.gather(outage(), *(buyer(i) for i in range(400)))
            assert saw_503.is_set()

            async def ready() -> bool:
                st, _ = await api.call("GET", "/readyz")
                return st == 200

            await wait_for(ready, timeout=10)
            st, sale = await api.call("GET", f"/api/sales/{sale_id}")
            assert st == 200, (st, sale)
            assert sale["available"] + sale["held"] + sale["sold"] == 300
            assert min(sale["available"], sale["held"], sale["sold"]) >= 0
            assert sum(orders.values()) == sale["held"] + sale["sold"] == 300
            st, _ = await api.reserve(sale_id, "late", "late-key")
            assert st == 409
    finally:
        own.stop()


async def test_redis_killed_mid_sale_keeps_every_acknowledged_order(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL Redis while buyers are reserving: after it restarts from its AOF, every order a buyer
    got a 200/201 for still exists, and the counters add up exactly. (A process crash; fsync `always`
    extends this to a machine crash, which a test here cannot stage.)"""
    own = EmbeddedRedis(tmp_path / "killed-redis").start()
    try:
        cfg = replace(settings, redis_url=own.url)
        async with start_app_server(cfg) as srv, Api(srv) as api:
            s = await api.setup_sale(stock=5000, per_user_limit=30, hold_s=600)
            sale_id = s["sale_id"]
            acked: dict[str, int] = {}
            killed, enough = asyncio.Event(), asyncio.Event()

            async def buyer(i: int) -> None:
                for j in range(30):
                    st, body = await api.reserve(sale_id, f"k{i}", f"key{j}")
                    if st in (200, 201):
                        acked[body["id"]] = body["quantity"]
                        if len(acked) == 300:
                            enough.set()
                    elif st == 503:
                        return
                    else:
                        raise AssertionError((st, body))
                    if killed.is_set():
                        return

            async def killer() -> None:
                await enough.wait()
                own.kill()
                killed.set()

            await asyncio.gather(killer(), *(buyer(i) for i in range(100)))
            own.restart()
            import redis.asyncio as aioredis

            from commerce import keys

            r = aioredis.Redis.from_url(own.url)
            statuses = await r.hmget(keys.orders(sale_id), *(f"s:{oid}" for oid in acked))
            assert acked and all(x == b"reserved" for x in statuses)
            a, h, sold = (int(x) for x in await r.hmget(keys.sale(sale_id), "available", "held", "sold"))
            assert a + h + sold == 5000 and h >= sum(acked.values())
            await r.aclose()
    finally:
        own.stop()
