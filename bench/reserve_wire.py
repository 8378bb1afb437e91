"""The reserve batcher's own wire path (commerce.inventory.Reserver) against redis-py's own way of running
the same batches (a pipeline of registered-script calls, errors as values), in one run, on a private
embedded Redis: client CPU and wall time per batch, for batches of 1, 16 and 128 buyers of one sale and
of 128 buyers over 8 sales. Both run the same reserve.lua on sales with stock to spare (every buyer
reserved), so Redis does the same work on both sides; the difference is the client.

    python bench/reserve_wire.py [--batches 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from commerce import inventory, keys  # noqa: E402
from livesale.embedded_redis import EmbeddedRedis  # noqa: E402
from livesale.redis_client import connect  # noqa: E402

SHAPES = [(1, 1), (16, 1), (128, 1), (128, 8)]  # (buyers per batch, sales per batch)


async def _sales(r: Any, prefix: str, n: int, stock: int) -> list[str]:
    ids = [f"sa{prefix}{i:010x}" for i in range(n)]
    for s in ids:
        await r.delete(*keys.sale_keys(s))
        await r.hset(keys.sale(s), mapping={
            "stock": stock, "available": stock, "held": 0, "sold": 0, "limit": 1, "hold_ms": 600_000,
            "duration_ms": 3_600_000, "price_cents": 100, "status": "scheduled", "starts_at": 0, "ends_at": 0,
            "stream": "st0", "sku": "X", "currency": "USD"})
        await inventory.tick(r, s, "start")
    return ids


async def ours(r: Any, sales: list[str], buyers: int, batches: int) -> None:
    rs = inventory.Reserver(r, max_in_flight=1)
    await rs.warm()
    per_sale = buyers // len(sales)
    try:
        for b in range(batches):
            futs = [rs.reserve(s, f"u{b}.{i}", "k", 1) for s in sales for i in range(per_sale)]
            for res in await asyncio.gather(*futs):
                assert res.code == inventory.RESERVED
    finally:
        await rs.close()


async def library(r: Any, sales: list[str], buyers: int, batches: int) -> None:
    script = r.register_script(inventory.RESERVE.source)
    per_sale = buyers // len(sales)
    for b in range(batches):
        pipe = r.pipeline(transaction=False)
        for s in sales:
            args: list[object] = [per_sale]
            for i in range(per_sale):
                args += (f"u{b}.{i}", "k", 1, inventory.new_order_id(s))
            await script(keys.sale_keys(s), args, client=pipe)
        for reply, s in zip(await pipe.execute(raise_on_error=False), sales, strict=True):
            outcomes = [inventory._parse(raw, int(reply[0])) for raw in reply[2:]]
            assert all(o.code == inventory.RESERVED for o in outcomes), s


async def measure(url: str, batches: int, rounds: int) -> None:
    r = connect(url)
    try:
        print(f"{'buyers x sales':>14} {'ours us/batch':>14} {'redis-py us/batch':>18} {'ratio':>6}"
              f"   (client CPU; wall in brackets)")
        for buyers, nsales in SHAPES:
            cpu: dict[str, list[float]] = {"ours": [], "library": []}
            wall: dict[str, list[float]] = {"ours": [], "library": []}
            for _ in range(rounds):  # interleaved
                for name, fn in (("ours", ours), ("library", library)):
                    sales = await _sales(r, "0" if name == "ours" else "1", nsales, buyers * batches)
                    c0, w0 = time.process_time(), time.perf_counter()
                    await fn(r, sales, buyers, batches)
                    cpu[name].append((time.process_time() - c0) / batches * 1e6)
                    wall[name].append((time.perf_counter() - w0) / batches * 1e6)
            o, lib = statistics.median(cpu["ours"]), statistics.median(cpu["library"])
            ow, lw = statistics.median(wall["ours"]), statistics.median(wall["library"])
            print(f"{buyers:>7} x {nsales:<4} {o:>8.0f} [{ow:.0f}] {lib:>11.0f} [{lw:.0f}] {lib / o:>6.2f}x")
    finally:
        await r.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="reserve-wire-bench-") as d:
        redis = EmbeddedRedis(Path(d), appendonly=False).start()
        try:
            asyncio.run(measure(redis.url, args.batches, args.rounds))
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
