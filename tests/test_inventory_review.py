"""Inventory scripts and the reserve batcher against the real Redis: cases found by review."""
from __future__ import annotations

import asyncio
import time

import redis as syncredis
import redis.asyncio as aioredis

from commerce import inventory, keys
from livesale.redis_client import connect
from tests.helpers import Api


async def _sale(r: aioredis.Redis, sale_id: str, *, stock: int = 5, limit: int = 5, hold_ms: int = 60_000) -> None:
    now = int(time.time() * 1000)
    await r.hset(keys.sale(sale_id), mapping={
        "stream": "st1", "sku": "S", "title": "T", "price_cents": 100, "currency": "USD", "stock": stock,
        "available": stock, "held": 0, "sold": 0, "limit": limit, "hold_ms": hold_ms, "duration_ms": 600_000,
        "status": "active", "starts_at": now - 1000, "ends_at": now + 600_000})

async def test_cancel_of_a_lapsed_hold_expires_it(redis_url: str) -> None:
    """pay.lua expires a hold past its expiry ("expired here and then"); cancel.lua does not: an order
    whose hold has lapsed (sweeper not yet by) is reported 200 `cancelled` instead of 409 / `expired`."""
    r = connect(redis_url)
    sid = "sa000000000001"
    await _sale(r, sid, hold_ms=60_000)
    res = inventory.Reserver(r)
    o = await res.reserve(sid, "u1", "k1", 1)
    assert o.code == inventory.RESERVED
    # Make the hold lapse without a sweeper running (as if hold_s had passed).
    await r.hset(keys.orders(sid), "e:" + o.order_id, int(time.time() * 1000) - 1)
    await r.zadd(keys.holds(sid), {o.order_id: int(time.time() * 1000) - 1})
    c = await inventory.cancel(r, o.order_id, "u1")
    status = (await r.hget(keys.orders(sid), "s:" + o.order_id)).decode()
    await res.close()
    await r.aclose()
    assert c[0] == -2 and status == "expired", (c, status)


async def test_orphaned_idempotency_entry_answers_and_leaves_no_buyer_waiting(redis_url: str) -> None:
    """An idempotency entry whose order is gone used to give a reply Reserver could not parse ({5, oid}
    with no quantity); the exception escaped Reserver._send after its try block and every later buyer
    of the batch (here: another sale's) was never answered. Now the entry means the sale is over."""
    r = connect(redis_url)
    a, b = "sa00000000000a", "sa00000000000b"
    await _sale(r, a)
    await _sale(r, b)
    # An idempotency entry whose order fields are gone (e.g. the retention EXPIREs of the sale's keys
    # landing in different milliseconds): reserve.lua answers {5, oid} with no quantity.
    await r.hset(keys.idem(a), "u1\0k1", f"{a}.0000000000000000")
    res = inventory.Reserver(r)
    f1 = res.reserve(a, "u1", "k1", 1)
    f2 = res.reserve(b, "u2", "k2", 1)
    await asyncio.sleep(0)
    tasks = list(res._tasks)  # keep them, to retrieve their exception (else GC logs it mid-pytest)
    done, pending = await asyncio.wait({f1, f2}, timeout=2)
    for f in pending:
        f.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await res.close()
    await r.aclose()
    assert not pending, "a buyer of another sale never got an answer"
    assert f1.result().code == inventory.NOT_ACTIVE
    assert f2.result().code == inventory.RESERVED


async def test_reserve_when_redis_refuses_writes(api: Api, redis_url: str) -> None:
    s = await api.setup_sale(stock=5)
    c = syncredis.Redis.from_url(redis_url)
    c.config_set("maxmemory", "1")
    try:
        st, body = await api.reserve(s["sale_id"], "oona", "k1", 1)
    finally:
        c.config_set("maxmemory", "0")
        c.close()
    assert st == 503 and body["error"] == "unavailable", (st, body)
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"]) == (5, 0)  # nothing changed
    st, body = await api.reserve(s["sale_id"], "oona", "k1", 1)  # and it serves again once Redis writes
    assert st == 201, body
