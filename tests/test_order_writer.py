"""The order writer: every accepted order reaches SQL exactly once, even when writers are killed
mid-batch and restarted (SQLite, and PostgreSQL when LIVESALE_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from dataclasses import replace

import redis.asyncio as aioredis
from sqlalchemy import text

from commerce import keys
from livesale.config import Settings
from livesale.db import make_engine
from tests.helpers import Api, spawn_server, stop_server, wait_for


def _writer(settings: Settings, *, delay: float, consumer: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=settings.redis_url or "", DATABASE_URL=settings.sql_url,
               LIVESALE_SECRET=settings.secret, LIVESALE_DATA=str(settings.data_dir),
               LIVESALE_WRITER_CHUNK_DELAY=str(delay), LIVESALE_WRITER_RECLAIM_MS="500",
               LIVESALE_WRITER_CONSUMER=consumer)
    return subprocess.Popen([sys.executable, "-m", "live.cli", "writer"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _pending(r: aioredis.Redis, sale_id: str) -> int:
    info = await r.xpending(keys.events(sale_id), keys.WRITER_GROUP)
    return int(info["pending"])


async def _run_crash_scenario(settings: Settings) -> None:
    srv = spawn_server(settings, extra_env={"LIVESALE_WRITER": "0"})
    r = aioredis.Redis.from_url(settings.redis_url or "")
    engine = make_engine(settings.sql_url)
    try:
        async with Api(srv) as api:
            s = await api.setup_sale(stock=2000, per_user_limit=3, hold_s=600)
            sale_id = s["sale_id"]
            rng = random.Random(3)
            accepted: dict[str, str] = {}

            async def traffic(n: int) -> None:
                res = await asyncio.gather(*(api.reserve(sale_id, f"w{rng.randrange(700)}", f"k{rng.random()}",
                                                         rng.choice((1, 2))) for _ in range(n)))
                for st, b in res:
                    if st == 201:
                        accepted[b["id"]] = b["id"].split(".")[0]
                # Pay or cancel some of them, so later events must overwrite earlier rows.
                for oid in rng.sample(sorted(accepted), min(40, len(accepted))):
                    user = (await r.hget(keys.orders(sale_id), f"u:{oid}")).decode()
                    action = rng.choice(("pay", "cancel"))
                    body = {"payment_method": "pm_card_visa"} if action == "pay" else None
                    await api.call("POST", f"/api/orders/{oid}/{action}", token=srv.token(user), json=body)

            await traffic(600)
            for round_ in range(3):
                w = _writer(settings, delay=0.05, consumer=f"crashy-{round_}")
                try:
                    await wait_for(lambda: _pending(r, sale_id), timeout=20, interval=0.01)
                    await asyncio.sleep(rng.random() * 0.1)
                finally:
                    os.kill(w.pid, signal.SIGKILL)  # mid-batch: entries delivered, not acked
                    w.wait(5)
                assert await _pending(r, sale_id) > 0 or round_ > 0
                await traffic(200)

            # A fresh writer (new consumer) reclaims what the dead ones left and drains the rest.
            w = _writer(settings, delay=0, consumer="survivor")
            try:
                async def drained() -> bool:
                    info = await r.xinfo_groups(keys.events(sale_id))
                    last = (await r.xinfo_stream(keys.events(sale_id)))["last-generated-id"]
                    return info[0]["pending"] == 0 and info[0]["last-delivered-id"] == last
                await wait_for(drained, timeout=30, interval=0.1)
            finally:
                w.send_signal(signal.SIGTERM)
                w.wait(10)

            want = {}
            for oid in accepted:
                st = await r.hget(keys.orders(sale_id), f"s:{oid}")
                want[oid] = st.decode()
            async with engine.connect() as c:
                rows = list(await c.execute(text(
                    "SELECT id, status, quantity FROM orders WHERE sale_id = :s"), {"s": sale_id}))
            got = {row.id: row.status for row in rows}
            assert len(rows) == len(got)  # no duplicate
            assert got == want  # no loss, latest status of each
    finally:
        await r.aclose()
        await engine.dispose()
        stop_server(srv)


async def test_writer_killed_mid_batch_loses_nothing_sqlite(settings: Settings) -> None:
    """SIGKILLed writers (three times, mid-transaction) then a restart: SQL holds exactly the accepted
    orders, each once, with its latest status (SQLite)."""
    await _run_crash_scenario(settings)


async def test_writer_killed_mid_batch_loses_nothing_postgres(settings: Settings, postgres_url: str) -> None:
    """The same crash scenario against PostgreSQL (the production SQL path)."""
    await _run_crash_scenario(replace(settings, database_url=postgres_url))


async def test_replayed_events_never_move_an_order_backwards(settings: Settings) -> None:
    """Committing the same events twice, or an older event after a newer one, leaves the newest state."""
    from commerce.writer import OrderWriter
    from livesale.db import create_tables

    engine = make_engine(settings.sql_url)
    await create_tables(engine)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    w = OrderWriter(r, engine, consumer="t")
    base = {b"o": b"sa000000000001.0000000000000001", b"u": b"u", b"k": b"k", b"q": b"1", b"a": b"100",
            b"c": b"1700000000000", b"t": b"1700000000000", b"x": b"1700000060000"}
    reserved = {**base, b"e": b"reserved", b"v": b"1"}
    paid = {**base, b"e": b"paid", b"v": b"2"}
    sid = "sa000000000001"
    await r.xadd(keys.events(sid), reserved)  # a real stream so XACK has something to ack
    for batch in ([(sid, b"0-1", reserved), (sid, b"0-2", paid)], [(sid, b"0-1", reserved)],
                  [(sid, b"0-2", paid), (sid, b"0-1", reserved)]):
        await w.commit(batch)
        async with engine.connect() as c:
            rows = list(await c.execute(text("SELECT status, version FROM orders")))
        assert [(x.status, x.version) for x in rows] == [("paid", 2)]
    await r.aclose()
    await engine.dispose()




async def test_finished_sale_leaves_redis_and_orders_read_from_sql(settings: Settings) -> None:
    """Once a sale has ended, has no holds and is fully in SQL, its order keys expire after the
    retention period; the buyer still reads the order (from SQL) and the sale keeps its counters."""
    from tests.helpers import start_app_server

    cfg = replace(settings, sale_retention_s=1)
    async with start_app_server(cfg) as srv, Api(srv) as api:
        s = await api.setup_sale(stock=3)
        st, o = await api.reserve(s["sale_id"], "zed", "k")
        tok = srv.token("zed")
        st, _ = await api.call("POST", f"/api/orders/{o['id']}/pay", token=tok, json={"payment_method": "pm_card_visa"})
        assert st == 200
        st, _ = await api.call("POST", f"/api/sales/{s['sale_id']}/end", token=s["host_token"])
        assert st == 200
        r = aioredis.Redis.from_url(cfg.redis_url or "")

        async def gone() -> bool:
            return not await r.exists(keys.orders(s["sale_id"]), keys.idem(s["sale_id"]), keys.events(s["sale_id"]))

        await wait_for(gone, timeout=15, interval=0.2)
        await r.aclose()
        st, got = await api.call("GET", f"/api/orders/{o['id']}", token=tok)
        assert st == 200 and got["status"] == "paid" and got["amount_cents"] == 1000
        st, _ = await api.call("GET", f"/api/orders/{o['id']}", token=srv.token("other"))
        assert st == 404
        st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
        assert (sale["status"], sale["sold"], sale["available"]) == ("ended", 1, 2)
