"""Helpers of the group-buy tests: a group-buy on a live stream, joins, the money as the built-in test
provider recorded it, and moving a group's expiry to now (the one clock we cannot wait for: group_ttl_s
is at least 60 s)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis.asyncio as aioredis

from commerce import keys
from commerce.payments import TestProvider
from tests.helpers import Api

TIERS = [{"size": 2, "price_cents": 900}, {"size": 3, "price_cents": 800}, {"size": 5, "price_cents": 700}]


async def setup_groupbuy(api: Api, *, stock: int = 20, tiers: list[dict[str, int]] | None = None,
                         ttl: int = 600, host: str = "host1") -> dict[str, Any]:
    ht = api.server.token(host, "host")
    sku = f"SKU-{os.urandom(4).hex()}"
    st, p = await api.call("POST", "/api/products", token=ht, json={"sku": sku, "title": "Tea", "price_cents": 1000})
    assert st == 201, p
    st, s = await api.call("POST", "/api/streams", token=ht, json={"title": "Show"})
    assert st == 201, s
    st, _ = await api.call("POST", f"/api/streams/{s['id']}/start", token=ht)
    assert st == 200
    st, gb = await api.call("POST", f"/api/streams/{s['id']}/groupbuys", token=ht,
                            json={"sku": sku, "stock": stock, "tiers": tiers or TIERS, "group_ttl_s": ttl})
    assert st == 201, gb
    return {"gb": gb, "gb_id": gb["id"], "stream_id": s["id"], "sku": sku, "host_token": ht}


async def _enter(api: Api, path: str, user: str, key: str, method: str, ref: str | None) -> tuple[int, Any]:
    body: dict[str, Any] = {"payment_method": method}
    if ref is not None:
        body["ref"] = ref
    return await api.call("POST", path, token=api.server.token(user), json=body, headers={"Idempotency-Key": key})


async def open_group(api: Api, gb_id: str, user: str, key: str | None = None,
                     method: str = "pm_card_visa", ref: str | None = None) -> tuple[int, Any]:
    return await _enter(api, f"/api/groupbuys/{gb_id}/groups", user, key or f"open-{user}", method, ref)


async def join_group(api: Api, gid: str, user: str, key: str | None = None,
                     method: str = "pm_card_visa", ref: str | None = None) -> tuple[int, Any]:
    return await _enter(api, f"/api/groups/{gid}/members", user, key or f"join-{user}-{gid}", method, ref)


async def expire_now(redis: aioredis.Redis, gid: str) -> None:
    """Move an open group's expiry to now, as if its group_ttl_s had passed."""
    ks = keys.groupbuy_keys(keys.groupbuy_of(gid))
    now = int(time.time() * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(ks[1], "x:" + gid, now)
        pipe.zadd(ks[5], {gid: now}, xx=True)
        await pipe.execute()


async def money(redis: aioredis.Redis, order_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """Per member order, as the provider recorded it: (charges made for it, cents charged, cents
    refunded), summing every refund that moved money."""
    provider = TestProvider(redis)
    charges = await provider.charges()
    refunds = await provider.refunds()
    out = {}
    for oid in order_ids:
        mine = [c for k, c in charges.items() if k.startswith(oid + ":") and c.ok]
        charged = sum(c.amount_cents for c in mine)
        refunded = sum(a if a >= 0 else next(c.amount_cents for c in mine if c.id == cid)
                       for cid, a, _ in refunds if cid in {c.id for c in mine})
        out[oid] = (len(mine), charged, refunded)
    return out


async def refund_count(redis: aioredis.Redis, charge_ids: set[str]) -> dict[str, int]:
    counts = dict.fromkeys(charge_ids, 0)
    for cid, _, _ in await TestProvider(redis).refunds():
        if cid in counts:
            counts[cid] += 1
    return counts
