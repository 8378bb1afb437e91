"""Lua scripts through redis-py's script objects (livesale.redis_client.LuaScript) on a plain Redis and
on a cluster, and the reserve batcher's own wire path against redis-py's pipelined script path."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from commerce import inventory, keys
from livesale.redis_client import connect, is_cluster

STOCK, LIMIT = 12, 3
SALES = ["sa0000000000a1", "sa0000000000b2"]


async def _sale(r: aioredis.Redis, sale_id: str) -> None:
    await r.hset(keys.sale(sale_id), mapping={  # type: ignore[misc]
        "stock": STOCK, "available": STOCK, "held": 0, "sold": 0, "limit": LIMIT, "hold_ms": 600_000,
        "duration_ms": 3_600_000, "price_cents": 100, "status": "scheduled", "starts_at": 0, "ends_at": 0,
        "stream": "st0", "sku": "X", "currency": "USD"})
    t = await inventory.tick(r, sale_id, "start")
    assert t is not None and t.status == "active"


@pytest.mark.parametrize("kind", ["plain", "cluster"])
async def test_scripts_load_again_after_the_script_cache_is_lost(kind: str, request: pytest.FixtureRequest) -> None:
    """A restarted Redis (SCRIPT FLUSH on every master): the next call of each script loads it again
    and runs, through LuaScript (redis-py's script object) and through the batcher; on a cluster the
    variant that runs is the cluster one."""
    url = request.getfixturevalue("cluster_url" if kind == "cluster" else "redis_url")
    r = connect(url)
    rs = inventory.Reserver(r)
    try:
        await _sale(r, SALES[0])
        for round_ in range(2):
            await r.script_flush()  # on a cluster, redis-py sends it to every master
            res = await rs.reserve(SALES[0], "ann", f"k{round_}", 1)
            assert res.code == inventory.RESERVED
            await r.script_flush()  # on a cluster, redis-py sends it to every master
            assert await inventory.pay(r, res.order_id, "ann", charge="ch") == [0, b"paid"]
            await r.script_flush()  # on a cluster, redis-py sends it to every master
            t = await inventory.tick(r, SALES[0])
            assert t is not None and (t.sold, t.held) == (round_ + 1, 0)
        sha = inventory.TICK.cluster_sha if kind == "cluster" else inventory.TICK.sha
        assert await r.script_exists(sha) == [True]  # on a cluster: on every master
        assert is_cluster(r) == (kind == "cluster")
    finally:
        await rs.close()
        await r.aclose()


async def _library_reserve(r: aioredis.Redis, script: Any, batch: list[tuple[str, str, str, int]]) -> list[Any]:
    """What redis-py's own path for one batch is: a pipeline of one registered-script call per sale
    (the script takes a sale's buyers together), run with errors as values."""
    pipe = r.pipeline(transaction=False)
    by_sale: dict[str, list[tuple[str, str, int]]] = {}
    for sale_id, user, key, qty in batch:
        by_sale.setdefault(sale_id, []).append((user, key, qty))
    for sale_id, buyers in by_sale.items():
        args: list[object] = [len(buyers)]
        for user, key, qty in buyers:
            args += (user, key, qty, inventory.new_order_id(sale_id))
        await script(keys.sale_keys(sale_id), args, client=pipe)
    replies = await pipe.execute(raise_on_error=False)
    out: dict[tuple[str, int], Any] = {}
    for (sale_id, buyers), reply in zip(by_sale.items(), replies, strict=True):
        for i in range(len(buyers)):
            out[(sale_id, i)] = inventory._parse(reply[2 + i], int(reply[0]))
    seen: dict[str, int] = {}
    ordered = []
    for sale_id, *_ in batch:
        ordered.append(out[(sale_id, seen.get(sale_id, 0))])
        seen[sale_id] = seen.get(sale_id, 0) + 1
    return ordered


def _shape(results: list[inventory.Reservation], ids: dict[str, int]) -> list[tuple[Any, ...]]:
    """The outcomes with each order id replaced by the index of the order it names (ids are random)."""
    out = []
    for res in results:
        oid = ids.setdefault(res.order_id, len(ids)) if res.order_id else None
        out.append((res.code, oid, res.quantity, res.status, res.available))
    return out


async def test_reserver_wire_path_answers_as_redis_pys_script_path(redis_url: str) -> None:
    """The batcher writes EVALSHA by hand and reads replies off its own connections (for speed, see
    commerce/inventory.py). The same random batches, through it on one pair of sales and through
    redis-py's pipeline of registered-script calls on an identical pair, get the same answers and
    leave the same counters, with the script cache flushed now and then on the way."""
    r = connect(redis_url)
    rs = inventory.Reserver(r)
    script = r.register_script(inventory.RESERVE.source)
    ours, theirs = SALES, ["sa0000000000c3", "sa0000000000d4"]
    rnd = random.Random(17)
    try:
        for s in ours + theirs:
            await _sale(r, s)
        ids_ours: dict[str, int] = {}
        ids_theirs: dict[str, int] = {}
        for step in range(60):
            batch = [(rnd.randrange(2), rnd.choice("abcde"), rnd.choice(["k1", "k2", "k3"]), rnd.randint(1, 3))
                     for _ in range(rnd.randint(1, 12))]
            if step % 15 == 7:
                await r.script_flush()
            got = await asyncio.gather(*(rs.reserve(ours[i], u, k, q) for i, u, k, q in batch))
            want = await _library_reserve(r, script, [(theirs[i], u, k, q) for i, u, k, q in batch])
            assert _shape(list(got), ids_ours) == _shape(want, ids_theirs), step
            if step % 10 == 9:  # some orders paid, to vary what a retried key finds
                for res in [*got[:2], *want[:2]]:
                    if res.code == inventory.RESERVED:
                        await inventory.pay(r, res.order_id, await _owner(r, res.order_id), charge="c")
        for a, b in zip(ours, theirs, strict=True):
            fields = ("available", "held", "sold")
            assert await r.hmget(keys.sale(a), *fields) == await r.hmget(keys.sale(b), *fields)  # type: ignore[misc]
            assert await r.hgetall(keys.users(a)) == await r.hgetall(keys.users(b))  # type: ignore[misc]
            assert await r.xlen(keys.events(a)) == await r.xlen(keys.events(b))
    finally:
        await rs.close()
        await r.aclose()


async def _owner(r: aioredis.Redis, order_id: str) -> str:
    user = await r.hget(keys.orders(keys.sale_of_order(order_id)), "u:" + order_id)  # type: ignore[misc]
    return user.decode()  # type: ignore[no-any-return]
