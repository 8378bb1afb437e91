"""Auction bid benchmark (issue 14): a bounded spike of bids over HTTP, ours against a plain handler.

  plain   aiohttp + PyJWT + one EVALSHA of our bid.lua per request (bench/refservers.py `plain-bid`)
  ours    the real `livesale serve` (bids on its lean HTTP path, bids of one loop turn share one script
          call, orjson, uvloop)
  ours @ REF  with --baseline REF: `livesale serve` of that commit, for a before/after in one run

Each phase gets a fresh auction (an hour long, so no bid closes it); wrk (bench/inventory.lua in its
`bid` mode) sends exactly --attempts bids by --users distinct users, amounts rising, over
--connections connections. The server runs alone on core 0, wrk and Redis on core 1, as in
bench/inventory.py, whose helpers this reuses. Rounds interleave; the summary takes medians and
prints ours/plain ratios measured in the same run, of bids/s and of server CPU per bid (what a core of
its own would give: on a shared machine the servers also wait for the core and the disk).

After each phase Redis is read directly: every 201 answer has its idempotency record (plus at most one
per connection for the bids in flight when wrk stopped counting), and the auction's accepted-bid
counter equals the records of accepted (not raised) bids.

Run: `python bench/auction.py [--rounds 3 --attempts 20000 --connections 50 --baseline main]`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import redis as syncredis
from inventory import (  # type: ignore[import-not-found]  # bench/ is on sys.path when run as a script
    GENERATOR_CORE,
    HERE,
    ROOT,
    SERVER_CORE,
    Result,
    Server,
    baseline_checkout,
    baseline_server,
    call,
    cpu_seconds,
    create_show,
    ensure_wrk,
    log,
    pinned,
    run_wrk,
)

from commerce import keys
from livesale.auth import mint
from livesale.embedded_redis import EmbeddedRedis, free_port


def create_auctions(base: str, secret: str, count: int) -> list[str]:
    host, sku, stream = create_show(base, secret)
    ids = []
    for _ in range(count):
        a = call(base, "POST", f"/api/streams/{stream['id']}/auctions", host, {
            "sku": sku, "starting_bid_cents": 1000, "duration_s": 3600, "hold_s": 3600})
        call(base, "POST", f"/api/auctions/{a['id']}/start", host)
        ids.append(a["id"])
    return ids


def check_auction(r: syncredis.Redis, auction_id: str, created: int, connections: int) -> dict[str, int | bool]:
    """wrk stops counting after its quota of answers; the bids still in flight on the other
    connections then were taken too (at most one per connection), unanswered to wrk."""
    stream = r.hget(keys.AUCTIONS, auction_id).decode()  # type: ignore[union-attr]
    records = r.hvals(keys.auction_idem(stream, auction_id))
    accepted = sum(1 for v in records if int(v.split(b":")[1]) in (0, 1))
    bids = int(r.hget(keys.auction(stream, auction_id), "bids") or 0)  # type: ignore[arg-type]
    return {"answered_201": created, "records": len(records), "accepted": accepted, "bids": bids,
            "ok": created <= len(records) <= created + connections and accepted == bids}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attempts", type=int, default=20_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", metavar="GIT_REF",
                   help="also run `livesale serve` from this commit (phase `baseline`): before/after in one run")
    args = p.parse_args()
    wrk = ensure_wrk()
    cores = os.sched_getaffinity(0)
    pin = SERVER_CORE in cores and GENERATOR_CORE in cores
    server_core, gen_core = (SERVER_CORE, GENERATOR_CORE) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {GENERATOR_CORE})
    tmp = Path(tempfile.mkdtemp(prefix="livesale-bench-auction-"))
    secret = secrets.token_urlsafe(32)
    redis_srv = EmbeddedRedis(tmp / "redis").start()
    r = syncredis.Redis.from_url(redis_srv.url)
    servers: list[Server] = []
    try:
        tokens = tmp / "tokens.txt"
        tokens.write_text("".join(mint(secret, f"bidder{i:05d}", "viewer", ttl=3600) + "\n" for i in range(args.users)))
        env = dict(os.environ, REDIS_URL=redis_srv.url, LIVESALE_SECRET=secret, LIVESALE_DATA=str(tmp / "data"),
                   DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'livesale.db'}", PYTHONPATH=str(ROOT))

        baseline = baseline_checkout(args.baseline, tmp) if args.baseline else None

        def make(name: str) -> Server:
            port = free_port()
            if name == "baseline":
                assert baseline is not None
                return baseline_server(baseline, env, server_core, port)
            if name == "plain":
                cmd = [sys.executable, str(HERE / "refservers.py"), "plain-bid", "--port", str(port),
                       "--redis", redis_srv.url, f"--secret={secret}"]
                return Server(name, pinned(server_core, cmd), env, "/healthz", port)
            cmd = [sys.executable, "-m", "live.cli", "serve", "--port", str(port)]
            return Server(name, pinned(server_core, cmd), env, "/readyz", port)

        setup = make("ours").start()
        servers.append(setup)
        results: dict[str, list[Result]] = {"plain": [], "ours": [], **({"baseline": []} if baseline else {})}
        ids = iter(create_auctions(setup.url, secret, len(results) * args.rounds))
        setup.stop()
        bad = 0
        for rnd in range(args.rounds):
            for ph in results:
                aid = next(ids)
                srv = make(ph).start()
                servers.append(srv)
                assert srv.proc is not None and redis_srv.proc is not None
                s0, r0 = cpu_seconds(srv.proc.pid), cpu_seconds(redis_srv.proc.pid)
                w = run_wrk(wrk, srv.url, f"/api/auctions/{aid}/bids", tokens, args, f"{ph}{rnd}", gen_core,
                            mode="bid")
                dur = w["duration_us"] / 1e6
                res = Result(ph, attempts=w["requests"], duration_s=dur, p50_ms=w["p50_us"] / 1000,
                             p99_ms=w["p99_us"] / 1000, socket_errors=sum(w["errors"].values()),
                             server_cpu=(cpu_seconds(srv.proc.pid) - s0) / dur,
                             redis_cpu=(cpu_seconds(redis_srv.proc.pid) - r0) / dur)
                for part in w["statuses"]:
                    for code, n in part.items():
                        res.statuses[int(code)] = res.statuses.get(int(code), 0) + n
                srv.stop()  # then nothing is in flight: the check reads a still auction
                res.checks = check_auction(r, aid, res.statuses.get(201, 0), args.connections)
                bad += not res.checks["ok"]
                results[ph].append(res)
                log(f"round {rnd + 1} {ph}: {res.rate:,.0f} bids/s, p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, "
                    f"CPU server {res.server_cpu:.2f} redis {res.redis_cpu:.2f}, statuses {dict(sorted(res.statuses.items()))}, checks {res.checks}")
        med = {ph: (statistics.median(x.rate for x in rs), statistics.median(x.p99_ms for x in rs),
                    statistics.median(x.cpu_us for x in rs)) for ph, rs in results.items()}
        print(f"auction bids: {args.attempts} attempts by {args.users} users over {args.connections} connections, "
              f"{args.rounds} interleaved rounds (medians){'' if pin else ' (NOT pinned: 1 core)'}")
        names = {"baseline": f"ours @ {args.baseline}"}
        for ph, (rate, p99, cpu_us) in med.items():
            print(f"  {names.get(ph, ph):14s} {rate:10,.0f} bids/s   p99 {p99:6.1f} ms   server CPU {cpu_us:5.1f} us/bid")
        # On a shared machine the servers wait for the core or the disk: the CPU ratios leave that out.
        for ref in ("plain", "baseline"):
            if ref in med:
                print(f"  ours/{names.get(ref, ref)}: {med['ours'][0] / med[ref][0]:.2f}x bids/s; "
                      f"per server CPU second: {med[ref][2] / med['ours'][2]:.2f}x")
        return 1 if bad else 0
    finally:
        for srv in servers:
            srv.stop()
        r.close()
        redis_srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
