"""The reserve batcher's own wire path (commerce.inventory.Reserver), against the real Redis: one
batch spanning several sales, an unknown sale, a flushed script cache and a killed connection."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from commerce import inventory, keys
from livesale.redis_client import connect
from tests.helpers import Api


async def _sale_counts(r: aioredis.Redis, sale_id: str) -> tuple[int, int]:
    available, held = await r.hmget(keys.sale(sale_id), "available", "held")  # type: ignore[misc]
    return int(available), int(held)


async def test_one_batch_serves_several_sales_and_an_unknown_one(api: Api, redis_url: str) -> None:
    """Buyers of two sales and of a sale that does not exist, queued in the same loop turn, each get
    their own sale's answer (reserved / limit / sold out / UnknownSale) and the counters match."""
    a = (await api.setup_sale(stock=3, per_user_limit=1))["sale_id"]
    b = (await api.setup_sale(stock=1, per_user_limit=5))["sale_id"]
    r = connect(redis_url)
    rs = inventory.Reserver(r)
    try:
        futs = [rs.reserve(a, f"u{i}", f"k{i}", 1) for i in range(5)]
        futs.append(rs.reserve(a, "u0", "again", 1))  # u0 already holds its one unit
        futs += [rs.reserve(b, "v", f"k{i}", 1) for i in range(3)]
        futs.append(rs.reserve("sa000000000000", "w", "k", 1))
        got = await asyncio.gather(*futs, return_exceptions=True)
        codes_a = [g.code for g in got[:6]]  # type: ignore[union-attr]
        assert codes_a == [inventory.RESERVED] * 3 + [inventory.SOLD_OUT] * 2 + [inventory.LIMIT_REACHED]
        assert [g.code for g in got[6:9]] == [inventory.RESERVED, inventory.SOLD_OUT, inventory.SOLD_OUT]  # type: ignore[union-attr]
        assert isinstance(got[9], inventory.UnknownSale)
        for g, sale in ((got[0], a), (got[6], b)):
            assert g.order_id.startswith(sale + ".") and g.status == "reserved"  # type: ignore[union-attr]
        assert await _sale_counts(r, a) == (0, 3)
        assert await _sale_counts(r, b) == (0, 1)
        ids = {g.order_id for g in got[:9] if g.code == inventory.RESERVED}  # type: ignore[union-attr]
        assert len(ids) == 4
    finally:
        await rs.close()
        await r.aclose()


@pytest.mark.parametrize("fault", ["script flush", "client kill"])
async def test_reserve_survives_a_lost_script_cache_or_connection(api: Api, redis_url: str, fault: str) -> None:
    """After SCRIPT FLUSH (a restarted Redis) or with its pooled connection killed, the next batch
    still reserves exactly once per buyer."""
    sale = (await api.setup_sale(stock=10, per_user_limit=2))["sale_id"]
    r = connect(redis_url)
    admin = connect(redis_url)
    rs = inventory.Reserver(r)
    try:
        first = await rs.reserve(sale, "u1", "k1", 1)
        assert first.code == inventory.RESERVED
        if fault == "script flush":
            await admin.script_flush()
        else:
            killed = await admin.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
        got = await asyncio.gather(*(rs.reserve(sale, f"u{i}", f"k{i}", 1) for i in range(1, 4)))
        assert [g.code for g in got] == [inventory.DUPLICATE, inventory.RESERVED, inventory.RESERVED]
        assert got[0].order_id == first.order_id
        assert await _sale_counts(r, sale) == (7, 3)
    finally:
        await rs.close()
        await r.aclose()
        await admin.aclose()
