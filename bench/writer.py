"""Order-writer cost: CPU per order row moved from the Redis stream into SQL, by batch size.

The API process runs the writer beside the request handlers (one core, one GIL), so every
microsecond the writer spends per row comes out of the reserve path during a sale spike
(bench/inventory.py). This measures it alone: --rows order events are XADDed to a sale's stream in
the shape reserve.lua writes them, then `OrderWriter.step` moves them to SQL in batches of each
--batches size. CPU is the whole process (the main thread and aiosqlite's thread).

Run: `python bench/writer.py [--rows 20000] [--batches 10,50,500]` (SQLite in a temp dir; set
DATABASE_URL for another database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from commerce import keys
from commerce.schema import orders
from commerce.writer import OrderWriter
from livesale.db import create_tables, make_engine
from livesale.embedded_redis import EmbeddedRedis


async def fill(redis: aioredis.Redis, sale_id: str, rows: int) -> None:
    now = int(time.time() * 1000)
    await redis.sadd(keys.WRITER_SALES, sale_id)  # type: ignore[misc]
    for start in range(0, rows, 1000):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(rows, start + 1000)):
            pipe.xadd(keys.events(sale_id), {
                "e": "reserved", "o": f"{sale_id}.{i:016x}", "u": f"user{i:05d}", "q": 1, "a": 1000,
                "k": f"key-{i}", "c": now, "x": now + 600_000, "v": 1, "t": now})
        await pipe.execute()


async def run(args: argparse.Namespace, redis_url: str, sql_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    engine = make_engine(sql_url)
    await create_tables(engine)
    print(f"{'batch':>6}{'rows':>8}{'cpu us/row':>12}{'wall us/row':>12}")
    for batch in (int(b) for b in args.batches.split(",")):
        sale_id = f"sa{secrets.token_hex(6)}"
        await fill(redis, sale_id, args.rows)
        writer = OrderWriter(redis, engine, batch=batch)
        await writer.step(block_ms=1)  # groups, prepared statements, first connection: not measured
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = 0
        while True:
            got = await writer.step(block_ms=1)
            if not got:
                break
            done += got
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await redis.srem(keys.WRITER_SALES, sale_id)  # type: ignore[misc]
        async with engine.connect() as conn:
            stored = (await conn.execute(orders.select().where(orders.c.sale_id == sale_id))).all()
        assert len(stored) == args.rows, (len(stored), args.rows)
        print(f"{batch:>6}{done:>8}{cpu / done * 1e6:>12.1f}{wall / done * 1e6:>12.1f}")
    await redis.aclose()
    await engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batches", default="10,50,500")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="livesale-bench-writer-") as tmp:
        srv = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            sql_url = os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{tmp}/writer.db"
            asyncio.run(run(args, srv.url, sql_url))
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
