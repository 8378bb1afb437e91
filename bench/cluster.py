"""What the Redis Cluster path costs per reserve (docs/cluster.md, docs/scaling.md).

One `livesale serve` (pinned to core 0, as bench/inventory.py pins it) takes a flash-sale spike from wrk
(core 1), on one Redis node (`single`) and on a 3-master cluster (`cluster`), in interleaved rounds, both
without AOF (EmbeddedCluster runs without it; the comparison is of the client paths, not of fsync).
Printed per phase: attempts/s, server CPU us per attempt, Redis CPU us per attempt (summed over every
master), and the invariant read back. Ratios are cluster / single in the same run.

    .venv/bin/python bench/cluster.py [--rounds 3] [--attempts 30000] [--stock 6000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import inventory as inv  # noqa: E402  (bench/inventory.py: wrk, server and CPU helpers)

from livesale.auth import mint  # noqa: E402
from livesale.embedded_redis import EmbeddedCluster, EmbeddedRedis, free_port  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--attempts", type=int, default=30_000)
    p.add_argument("--stock", type=int, default=6_000)
    p.add_argument("--users", type=int, default=12_000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=2)
    args = p.parse_args()
    wrk = inv.ensure_wrk()
    cores = os.sched_getaffinity(0)
    pin = inv.SERVER_CORE in cores and inv.GENERATOR_CORE in cores
    server_core, gen_core = (inv.SERVER_CORE, inv.GENERATOR_CORE) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {inv.GENERATOR_CORE})  # this driver and its Redis children off core 0
    tmp = Path(tempfile.mkdtemp(prefix="livesale-bench-cluster-"))
    secret = secrets.token_urlsafe(32)
    tokens = tmp / "tokens.txt"
    tokens.write_text("".join(mint(secret, f"user{i:05d}", "viewer", ttl=3600) + "\n" for i in range(args.users)))
    single = EmbeddedRedis(tmp / "single", appendonly=False).start()
    cluster = EmbeddedCluster(tmp / "cluster").start()
    urls = {"single": single.url, "cluster": cluster.url}
    redis_pids = {"single": [single.proc.pid if single.proc else 0],
                  "cluster": [n.proc.pid if n.proc else 0 for n in cluster.nodes]}
    rows: dict[str, list[tuple[float, float, float]]] = {"single": [], "cluster": []}
    try:
        for rnd in range(args.rounds):
            for name in ("single", "cluster"):
                db = tmp / f"{name}{rnd}.db"
                env = dict(os.environ, REDIS_URL=urls[name], LIVESALE_SECRET=secret, LIVESALE_DATA=str(tmp / "data"),
                           DATABASE_URL=f"sqlite+aiosqlite:///{db}", PYTHONPATH=str(HERE.parent))
                port = free_port()
                cmd = [sys.executable, "-m", "live.cli", "serve", "--port", str(port)]
                srv = inv.Server(name, inv.pinned(server_core, cmd), env, "/readyz", port).start()
                try:
                    sale_id = inv.create_sales(srv.url, secret, 1, args.stock, args.limit)[0]
                    assert srv.proc is not None
                    s0 = inv.cpu_seconds(srv.proc.pid)
                    r0 = sum(inv.cpu_seconds(pid) for pid in redis_pids[name])
                    w = inv.run_wrk(wrk, srv.url, f"/api/sales/{sale_id}/orders", tokens, args, f"{name}{rnd}", gen_core)
                    n = w["requests"]
                    server_us = (inv.cpu_seconds(srv.proc.pid) - s0) / n * 1e6
                    redis_us = (sum(inv.cpu_seconds(pid) for pid in redis_pids[name]) - r0) / n * 1e6
                    rate = n / (w["duration_us"] / 1e6)
                    sold = inv.sql_orders(db, sale_id, args.stock)
                finally:
                    srv.stop()
                rows[name].append((rate, server_us, redis_us))
                inv.log(f"round {rnd + 1} {name}: {rate:,.0f} attempts/s, server {server_us:.1f} us/att, "
                        f"redis {redis_us:.1f} us/att, statuses {w.get('statuses')}, orders in SQL {sold}/{args.stock}")
                if sold != args.stock:
                    raise SystemExit(f"{name}: {sold} orders in SQL for {args.stock} units")
    finally:
        cluster.stop()
        single.stop()
    med = {k: tuple(statistics.median(col) for col in zip(*v, strict=True)) for k, v in rows.items()}
    print(f"\nmedian of {args.rounds} rounds   attempts/s   server us/att   redis us/att (all masters)")
    for k, (rate, s_us, r_us) in med.items():
        print(f"{k:<24}{rate:>12,.0f}{s_us:>16.1f}{r_us:>16.1f}")
    (rs, ss, rr), (rc, sc, rcl) = med["single"], med["cluster"]
    print(f"{'cluster / single':<24}{rc / rs:>12.2f}{sc / ss:>16.2f}{rcl / rr:>16.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
