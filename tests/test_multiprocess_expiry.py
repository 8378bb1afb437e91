"""Hold expiry and the sale clock run in every process at once, and still act once."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis.asyncio as aioredis

from commerce import keys
from livesale.config import Settings
from tests.helpers import Api, spawn_server, stop_server, wait_for


async def test_two_processes_sweeping_expire_each_hold_once(settings: Settings) -> None:
    """Two `livesale serve` processes sweep the same sale: 60 lapsed holds give exactly 60 `expired`
    order events, the units all come back once, and the sale's end is announced once."""
    a = spawn_server(settings)
    b = spawn_server(settings)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        async with Api(a) as api_a, Api(b) as api_b:
            s = await api_a.setup_sale(stock=100, per_user_limit=1, hold_s=1, duration_s=3)
            sale_id = s["sale_id"]
            for i in range(60):
                st, _ = await (api_a if i % 2 else api_b).reserve(sale_id, f"p{i}", "k")
                assert st == 201

            async def all_back() -> bool:
                st, sale = await api_b.call("GET", f"/api/sales/{sale_id}")
                return sale["available"] == 100 and sale["status"] == "ended"

            await wait_for(all_back, timeout=10, interval=0.1)
            from livesale.bus import log_key

            async def ended_events() -> list:
                # GET computes `ended` from the clock; the sweeper announces it on its next tick.
                log = await r.xrange(log_key(s["stream_id"]))
                return [f for _, f in log if b'"type":"sale"' in f[b"d"] and b'"status":"ended"' in f[b"d"]]

            await wait_for(ended_events, timeout=5, interval=0.1)
            await asyncio.sleep(0.5)  # a few more ticks of both sweepers: still announced once
            assert len(await ended_events()) == 1
            events = await r.xrange(keys.events(sale_id))
            kinds = Counter(f[b"e"].decode() for _, f in events)
            assert kinds == {"reserved": 60, "expired": 60}
            expired_orders = Counter(f[b"o"] for _, f in events if f[b"e"] == b"expired")
            assert set(expired_orders.values()) == {1}
    finally:
        await r.aclose()
        stop_server(a)
        stop_server(b)
