"""The oversell verifier: passes on a clean sale after real traffic, fails by name on corrupted state."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import redis.asyncio as aioredis
import sqlalchemy as sa

from livesale.config import Settings
from load import verify
from tests.helpers import Api


async def _traffic(api: Api) -> str:
    """A sale with reserved, paid, cancelled and refused orders, all through the HTTP API."""
    s = await api.setup_sale(stock=6, per_user_limit=2)
    sale_id = s["sale_id"]
    ids = []
    for i in range(4):
        st, order = await api.reserve(sale_id, f"u{i}", f"k{i}", 1 + i % 2)
        assert st == 201, order
        ids.append(order["id"])
    st, _ = await api.reserve(sale_id, "u9", "k9", 2)
    assert st == 409  # sold out: 6 units are held
    st, _ = await api.call("POST", f"/api/orders/{ids[0]}/pay", token=api.server.token("u0"),
                           json={"payment_method": "pm_card_visa"})
    assert st == 200
    st, _ = await api.call("POST", f"/api/orders/{ids[1]}/cancel", token=api.server.token("u1"))
    assert st == 200
    return sale_id


def _cli(settings: Settings, sale_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "live.cli", "verify", "--sale", sale_id, "--redis-url", settings.redis_url or "",
         "--database-url", settings.database_url or "", "--wait", "10"],
        capture_output=True, text=True, timeout=60,
    )


async def test_clean_sale_passes_and_counts_match(api: Api, settings: Settings) -> None:
    """After real reserve/pay/cancel traffic the verifier exits 0 and reports the sale's true numbers."""
    sale_id = await _traffic(api)
    report = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=10)
    assert report.ok, report.text()
    assert (report.stock, report.sold, report.held, report.available) == (6, 1, 3, 2)
    assert report.sql_orders == {"paid": 1, "cancelled": 1, "reserved": 2}
    assert (report.oversold, report.lost, report.duplicates) == (0, 0, 0)
    proc = await asyncio.to_thread(_cli, settings, sale_id)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "oversold 0, lost 0" in proc.stdout


async def test_hand_decremented_available_fails(api: Api, settings: Settings) -> None:
    """Decrementing `available` by hand breaks available+held+sold==stock: exit 1 naming the invariant."""
    sale_id = await _traffic(api)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    await r.hincrby(f"{{sale:{sale_id}}}", "available", -1)
    await r.aclose()
    proc = await asyncio.to_thread(_cli, settings, sale_id)
    assert proc.returncode == 1, proc.stdout
    assert "FAIL invariant" in proc.stdout


async def test_oversold_units_are_counted(api: Api, settings: Settings) -> None:
    """Extra sold units beyond stock (counter and a forged paid order) are reported as oversold."""
    sale_id = await _traffic(api)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    base = f"{{sale:{sale_id}}}"
    await r.hset(f"{base}:orders", mapping={"s:x.1": "paid", "u:x.1": "mallory", "q:x.1": 5, "k:x.1": "kx"})  # 4 units already promised + 5 = 3 beyond stock 6
    await r.hincrby(base, "sold", 5)
    await r.hincrby(f"{base}:users", "mallory", 5)
    await r.aclose()
    report = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=2)
    assert report.oversold == 3, report.text()
    assert any(p.startswith("oversold") for p in report.problems)
    assert any(p.startswith("limit") for p in report.problems)  # mallory holds 5 > limit 2
    assert any(p.startswith("lost") for p in report.problems)  # never went through the writer


async def test_order_missing_from_sql_is_lost(api: Api, settings: Settings) -> None:
    """An order accepted in Redis whose SQL row is gone is reported as lost, after the writer drained."""
    sale_id = await _traffic(api)
    first = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=10)
    assert first.ok, first.text()
    from livesale.db import make_engine

    engine = make_engine(settings.database_url or "")
    async with engine.begin() as conn:
        victim = (await conn.execute(sa.text("SELECT id FROM orders WHERE sale_id = :s AND status = 'paid'"),
                                     {"s": sale_id})).scalar_one()
        await conn.execute(sa.text("DELETE FROM orders WHERE id = :i"), {"i": victim})
    await engine.dispose()
    report = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=10)
    assert report.lost == 1 and not report.ok
    assert victim in " ".join(report.problems)


async def test_duplicate_idempotency_key_is_reported(api: Api, settings: Settings) -> None:
    """A second Redis order for the same (user, key) counts as a duplicate."""
    sale_id = await _traffic(api)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    orders = await r.hgetall(f"{{sale:{sale_id}}}:orders")
    await r.aclose()
    snap_orders = verify.parse_orders(orders)
    any_order = next(iter(snap_orders.values()))
    snap = verify.Snapshot({"stock": 6, "available": 2, "held": 3, "sold": 1, "limit": 2}, {}, snap_orders, 0)
    snap.orders["dup.1"] = verify.Order("dup.1", any_order.user, any_order.key, 1, "cancelled")
    report = verify.judge(snap, [], sale_id)
    assert report.duplicates == 1
    assert any(p.startswith("duplicate") for p in report.problems)


async def test_unknown_sale_exits_2(settings: Settings) -> None:
    """A sale id with no Redis state is a usage error (exit 2), not a pass."""
    proc = await asyncio.to_thread(_cli, settings, "sa000000000000")
    assert proc.returncode == 2 and "no sale" in proc.stderr


async def _sql(settings: Settings, statement: str, **params: object) -> None:
    from livesale.db import make_engine

    engine = make_engine(settings.database_url or "")
    async with engine.begin() as conn:
        await conn.execute(sa.text(statement), params)
    await engine.dispose()


async def test_sql_row_disagreeing_with_redis_is_reported(api: Api, settings: Settings) -> None:
    """An SQL row whose quantity or buyer differs from the order Redis accepted fails as sql_mismatch,
    even when the extra units stay within stock."""
    sale_id = await _traffic(api)
    first = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=10)
    assert first.ok, first.text()
    r = aioredis.Redis.from_url(settings.redis_url or "")
    orders = verify.parse_orders(await r.hgetall(f"{{sale:{sale_id}}}:orders"))
    await r.aclose()
    victim = next(o.id for o in orders.values() if o.status == "reserved")
    await _sql(settings, "UPDATE orders SET quantity = quantity + 1 WHERE id = :i", i=victim)
    report = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=10)
    assert not report.ok and report.oversold == 0, report.text()
    assert any(p.startswith("sql_mismatch") and victim in p for p in report.problems), report.problems
    await _sql(settings, "UPDATE orders SET quantity = quantity - 1, user_id = 'mallory' WHERE id = :i", i=victim)
    report = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=10)
    assert any(p.startswith("sql_mismatch") and victim in p for p in report.problems), report.problems


async def test_sql_order_unknown_to_redis_is_reported(api: Api, settings: Settings) -> None:
    """An SQL order row of the sale that Redis never accepted fails as phantom, even within stock."""
    sale_id = await _traffic(api)
    await _sql(settings, "INSERT INTO orders (id, sale_id, user_id, idempotency_key, quantity, amount_cents, status,"
               " version, created_at, updated_at) VALUES (:i, :s, 'mallory', 'forged', 1, 1000, 'paid', 2,"
               " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)", i=f"{sale_id}.forged", s=sale_id)
    report = await verify.check(settings.redis_url or "", settings.database_url or "", sale_id, wait_s=10)
    assert not report.ok and report.oversold == 0, report.text()
    assert any(p.startswith("phantom") and f"{sale_id}.forged" in p for p in report.problems), report.problems
