"""Auction load: bidders piling in during an auction's last seconds, and the verifier of its outcome.

    python -m load.auction bid --url http://127.0.0.1:8080 --auction au... --bidders 300 --last-s 3
    livesale verify --auction au...   # or python -m load.auction verify; REDIS_URL, DATABASE_URL

`bid` waits until `--last-s` seconds before the auction's end, then every bidder bids again and again
(a fresh Idempotency-Key each time) a little over the last price it saw, up to a cap of its own drawn
at random, until the auction closes or `--duration` runs out. Every accepted bid extends the clock
(docs/auctions.md), so the bidders' caps are what ends the fight. Tokens are minted from
LIVESALE_SECRET, as the swarm does.

`verify` proves from Redis and SQL that the auction closed with the outcome its rules give: the
accepted bids (their maximums are in Redis, in the auction's idempotency records) replayed in the
order Redis took them through the rules restated here give the same answers, the same leader and the
same price; one winner, one `auction` event after every `bid` event, exactly one order (Redis and
SQL) for the winner at that price; none when unsold. Exit 0 when every check passes, 1 otherwise.
`load` does not import `commerce`: the layout and the rules read here are commerce's, restated
(source of truth: commerce/keys.py, commerce/auction_rules.py, commerce/lua/bid.lua).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import sqlalchemy as sa

from livesale.auth import mint
from load import wire

INCREMENTS = ((3000, 100), (5000, 200), (10000, 300), (30000, 500), (100000, 1000), (200000, 2000))
LEADING, OUTBID, RAISED = 0, 1, 2


def increment(price: int) -> int:
    return next((inc for below, inc in INCREMENTS if price < below), 5000)


# --- the bidders ------------------------------------------------------------------------------------


@dataclass
class BidStats:
    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    latency: wire.LagStats = field(default_factory=wire.LagStats)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "outcomes": dict(self.outcomes), "latency_ms": self.latency.summary(),
                "bids_per_s": self.attempts / self.elapsed_s if self.elapsed_s else 0.0, "elapsed_s": self.elapsed_s}


async def bid_swarm(url: str, auction_id: str, secret: str, *, bidders: int = 300, last_s: float = 3.0,
                    duration_s: float = 60.0, cap_cents: tuple[int, int] = (5_000, 500_000), seed: int = 0) -> BidStats:
    """Bidders in the last `last_s` seconds, until the auction closes (bounded by `duration_s`)."""
    rng = random.Random(seed)
    stats = BidStats()
    deadline = time.monotonic() + duration_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async with http.get(f"{url}/api/auctions/{auction_id}") as resp:
            view = await resp.json()
        if view.get("status") != "active":
            raise SystemExit(f"auction {auction_id} is {view.get('status')!r}, not active")
        ends = datetime.fromisoformat(view["ends_at"].replace("Z", "+00:00")).timestamp()
        await asyncio.sleep(max(0.0, ends - time.time() - last_s))
        started = time.monotonic()
        closed = asyncio.Event()

        async def bidder(i: int) -> None:
            user = f"bidder-{seed}-{i}"
            headers = {"Authorization": f"Bearer {mint(secret, user, 'viewer', ttl=int(duration_s) + 3600)}"}
            cap = rng.randint(*cap_cents)
            seen, n = 0, 0
            while not closed.is_set() and time.monotonic() < deadline:
                n += 1
                amount = seen + rng.randint(1, 8) * increment(seen) if seen else rng.randint(100, 3000)
                if amount > cap:
                    return  # this bidder's limit: it stops, as people do
                t0 = time.perf_counter()
                async with http.post(f"{url}/api/auctions/{auction_id}/bids", json={"max_cents": amount},
                                     headers={**headers, "Idempotency-Key": f"{user}-{n}"}) as resp:
                    body = await resp.json(content_type=None)
                stats.latency.add((time.perf_counter() - t0) * 1000)
                stats.attempts += 1
                outcome = body.get("status") if resp.status in (200, 201) else body.get("error", str(resp.status))
                stats.outcomes[str(outcome)] += 1
                if outcome == "auction_not_active":
                    closed.set()
                elif outcome == "bid_too_low":
                    seen = int(body["min_bid_cents"])
                elif outcome in ("leading", "outbid"):
                    seen = int(body["price_cents"])
                    if outcome == "leading":
                        await asyncio.sleep(rng.uniform(0.05, 0.3))  # a leader waits to be outbid
                elif outcome == "already_leading":
                    await asyncio.sleep(rng.uniform(0.05, 0.3))

        await asyncio.gather(*(bidder(i) for i in range(bidders)))
        stats.elapsed_s = time.monotonic() - started
    return stats


# --- the verifier -----------------------------------------------------------------------------------


@dataclass
class Report:
    auction_id: str
    status: str = ""
    winner: str = ""
    price_cents: int = 0
    accepted_bids: int = 0
    order: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def text(self) -> str:
        head = (f"auction {self.auction_id}: {self.status}, winner {self.winner or '-'}, price {self.price_cents}, "
                f"{self.accepted_bids} accepted bids, order {self.order or '-'}")
        return "\n".join([head, *(f"FAIL {f}" for f in self.failures)] or [head]) + ("\nOK" if self.ok else "")


def replay(starting: int, bids: list[tuple[str, int, int, int]]) -> tuple[str, int, int, list[str]]:
    """Replay (user, max, code, price) accepted bids, in Redis's order, through the rules; returns the
    leader, price, leader's max and every disagreement with the answers Redis gave."""
    leader, price, leader_max, bad = "", 0, 0, []
    for user, mx, code, answered in bids:
        if leader == user:  # rule 3: a raise
            got, leader_max = RAISED, max(leader_max, mx)
        elif not leader:
            leader, price, leader_max, got = user, starting, mx, LEADING
        elif mx > leader_max:
            price, leader, leader_max, got = min(mx, leader_max + increment(leader_max)), user, mx, LEADING
        else:
            price, got = min(leader_max, mx + increment(mx)), OUTBID
        if (got, price) != (code, answered):
            bad.append(f"bid {user} max {mx}: rules say {(got, price)}, Redis answered {(code, answered)}")
    return leader, price, leader_max, bad


async def check(redis_url: str, database_url: str, auction_id: str, *, wait_s: float = 10.0) -> Report:
    rep = Report(auction_id)
    r = aioredis.Redis.from_url(redis_url)
    try:
        stream_b = await r.hget("commerce:auctions", auction_id)
        if stream_b is None:
            raise LookupError(f"no auction {auction_id!r} in Redis")
        stream = stream_b.decode()
        base = f"{{stream:{stream}}}:auction:{auction_id}"
        h = {k.decode(): v.decode() for k, v in (await r.hgetall(base)).items()}
        idem = await r.hgetall(base + ":idem")
        log = [orjson.loads(f[b"d"]) for _, f in await r.xrange(f"{{stream:{stream}}}:log")]
        orders = await r.hgetall(f"{{sale:{auction_id}}}:orders")
        order_price = await r.hget(f"{{sale:{auction_id}}}", "price_cents")
    finally:
        await r.aclose()
    rep.status, rep.winner, rep.price_cents = h["status"], h.get("winner", ""), int(h["price"])
    fail = rep.failures.append
    if rep.status not in ("sold", "unsold"):
        fail(f"not closed: {rep.status}")
    bids = []
    for k, v in idem.items():
        user = k.split(b"\0", 1)[0].decode()
        mx, code, price, _ends = (int(x) for x in v.split(b":"))
        bids.append((user, mx, code, price))
    # Prices rise with every accepted bid; a raise keeps the price, after the bid that set it.
    bids.sort(key=lambda b: (b[3], b[2] == RAISED, b[1]))
    rep.accepted_bids = sum(1 for b in bids if b[2] != RAISED)
    leader, price, leader_max, bad = replay(int(h["starting_bid"]), bids)
    rep.failures += bad
    if (leader, price, leader_max) != (h["leader"], int(h["price"]), int(h["leader_max"])):
        fail("the rules replayed give another leader, price or maximum than Redis holds")  # values stay hidden
    if int(h["bids"]) != rep.accepted_bids:
        fail(f"bids counter {h['bids']} != {rep.accepted_bids} accepted")
    sold = bool(leader) and price >= int(h.get("reserve") or 0)
    if rep.status in ("sold", "unsold") and (rep.status == "sold") != sold:
        fail(f"status {rep.status}, but the rules say {'sold' if sold else 'unsold'}")
    if rep.status == "sold" and rep.winner != leader:
        fail(f"winner {rep.winner} is not the leader {leader}")
    mine = [e for e in log if e.get("auction") == auction_id]
    closes = [i for i, e in enumerate(mine) if e["type"] == "auction" and e["status"] in ("sold", "unsold")]
    if len(closes) != 1:
        fail(f"{len(closes)} closing `auction` events in the stream log")
    elif any(e["type"] == "bid" for e in mine[closes[0]:]):
        fail("a `bid` event after the close")
    prices = [e["price_cents"] for e in mine if e["type"] == "bid"]
    if any(b <= a for a, b in zip(prices, prices[1:], strict=False)):
        fail("bid event prices do not rise")
    order_ids = [k[2:].decode() for k in orders if k.startswith(b"s:")]
    if rep.status != "sold":
        if order_ids:
            fail(f"an unsold auction has orders {order_ids}")
        return rep
    rep.order = h["order"]
    if order_ids != [rep.order]:
        fail(f"orders in Redis {order_ids}, expected exactly [{rep.order}]")
    elif orders.get(f"u:{rep.order}".encode(), b"").decode() != rep.winner or int(order_price or -1) != price:
        fail("the order in Redis is not the winner's at the final price")
    engine = _engine(database_url)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            async with engine.connect() as conn:
                rows = (await conn.execute(sa.text(
                    "SELECT id, user_id, amount_cents, quantity FROM orders WHERE sale_id = :a"), {"a": auction_id})).all()
                arow = (await conn.execute(sa.text(
                    "SELECT status, winner, price_cents, order_id FROM auctions WHERE id = :a"), {"a": auction_id})).first()
            want = [(rep.order, rep.winner, price, 1)]
            if [tuple(x) for x in rows] == want and arow is not None and tuple(arow) == ("sold", rep.winner, price, rep.order):
                break
            if time.monotonic() > deadline:
                fail(f"SQL orders {[tuple(x) for x in rows]} / auction {arow and tuple(arow)} != {want}")
                break
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()
    return rep


def _engine(url: str) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(url)


# --- command line -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.auction", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bid", help="bidders in the last seconds of an auction")
    b.add_argument("--url", default="http://127.0.0.1:8080")
    b.add_argument("--auction", required=True)
    b.add_argument("--bidders", type=int, default=300)
    b.add_argument("--last-s", type=float, default=3.0, help="start this long before ends_at")
    b.add_argument("--duration", type=float, default=60.0, help="give up after this many seconds")
    b.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("verify", help="check a closed auction's outcome in Redis and SQL")
    v.add_argument("--auction", required=True)
    v.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    v.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    v.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "bid":
        secret = os.environ.get("LIVESALE_SECRET", "")
        if not secret:
            p.error("LIVESALE_SECRET is needed to mint the bidders' tokens")
        stats = asyncio.run(bid_swarm(a.url, a.auction, secret, bidders=a.bidders, last_s=a.last_s,
                                      duration_s=a.duration, seed=a.seed))
        print(json.dumps(stats.as_dict(), indent=2))
        return 0
    if not a.redis_url or not a.database_url:
        p.error("--redis-url and --database-url (or REDIS_URL, DATABASE_URL) are needed")
    try:
        rep = asyncio.run(check(a.redis_url, a.database_url, a.auction))
    except LookupError as exc:
        print(f"load.auction verify: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"ok": rep.ok, **rep.__dict__}) if a.json else rep.text())
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
