"""`livesale verify --sale ID`: after a run, prove from Redis and SQL that a sale neither oversold nor
lost an order. Exit 0 when every check passes, 1 when one fails (each failure is named), 2 for bad
usage or an unknown sale.

`load` must not import `commerce` (docs/design.md: load talks to the server over HTTP/WebSocket and reads
Redis/SQL). The layout read here is commerce's, restated (source of truth: commerce/keys.py,
commerce/schema.py, commerce/lua/*.lua):

- `{sale:ID}` hash: `stock available held sold limit ...` (integers as strings).
- `{sale:ID}:users` hash: user id -> units reserved + paid (what the per-user limit counts).
- `{sale:ID}:orders` hash: `s:<oid>` status (reserved|paid|cancelled|expired), `u:<oid>` user,
  `q:<oid>` quantity, `k:<oid>` idempotency key. Orders are never deleted from it.
- `{sale:ID}:events` stream of order events, consumer group `order-writer` (the SQL writer).
- SQL table `orders (id, sale_id, user_id, idempotency_key, quantity, amount_cents, status, version)`.

The Redis side is read in one MULTI (all keys share the `{sale:ID}` slot), together with the writer
group's position, so "every event up to this snapshot is in SQL" can be judged exactly: the writer
acks only after its SQL commit. SQL is read after that, so a row may be *newer* than the snapshot
(a hold expired meanwhile: `reserved` in Redis, `expired` in SQL); only SQL being *behind* counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from redis import exceptions as rx

WRITER_GROUP = "order-writer"
LIVE = ("reserved", "paid")  # statuses that hold units
# An order moves reserved -> one terminal status; SQL may be ahead of a Redis snapshot, never behind.
RANK = {"reserved": 1, "paid": 2, "cancelled": 2, "expired": 2}


def _k(sale_id: str) -> dict[str, str]:
    base = f"{{sale:{sale_id}}}"
    return {"sale": base, "users": f"{base}:users", "orders": f"{base}:orders", "events": f"{base}:events"}


@dataclass
class Order:
    id: str
    user: str
    key: str
    quantity: int
    status: str


@dataclass
class Snapshot:
    """The Redis side of one sale at one instant."""

    sale: dict[str, int]
    users: dict[str, int]
    orders: dict[str, Order]
    backlog: int  # order events not yet committed to SQL


@dataclass
class Report:
    sale_id: str
    stock: int = 0
    available: int = 0
    held: int = 0
    sold: int = 0
    limit: int = 0
    redis_orders: dict[str, int] = field(default_factory=dict)  # status -> count
    sql_orders: dict[str, int] = field(default_factory=dict)
    sql_units: dict[str, int] = field(default_factory=dict)
    oversold: int = 0
    lost: int = 0
    duplicates: int = 0
    limit_violations: int = 0
    backlog: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [
            f"sale {self.sale_id}: stock {self.stock}, sold {self.sold}, held {self.held}, "
            f"available {self.available} (per-user limit {self.limit})",
            "orders in redis: " + _counts(self.redis_orders),
            "orders in sql:   " + _counts(self.sql_orders)
            + f" ({sum(self.sql_units.get(s, 0) for s in LIVE)} units reserved+paid)",
            f"oversold {self.oversold}, lost {self.lost}, duplicates {self.duplicates}, "
            f"limit violations {self.limit_violations}, writer backlog {self.backlog}",
        ]
        lines += [f"FAIL {p}" for p in self.problems] or ["OK"]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def parse_orders(h: dict[bytes, bytes]) -> dict[str, Order]:
    fields: dict[str, dict[str, str]] = defaultdict(dict)
    for k, v in h.items():
        prefix, _, oid = _s(k).partition(":")
        fields[oid][prefix] = _s(v)
    return {
        oid: Order(oid, f.get("u", ""), f.get("k", ""), int(f.get("q", "0")), f.get("s", ""))
        for oid, f in fields.items()
        if "s" in f
    }


def judge(snap: Snapshot, sql: list[Order], sale_id: str) -> Report:
    """Every check, without I/O: the Redis snapshot against itself and against the SQL rows."""
    s = snap.sale
    r = Report(sale_id, s.get("stock", 0), s.get("available", 0), s.get("held", 0), s.get("sold", 0),
               s.get("limit", 0), backlog=snap.backlog)
    p = r.problems
    r.redis_orders = dict(Counter(o.status for o in snap.orders.values()))
    r.sql_orders = dict(Counter(o.status for o in sql))
    units: Counter[str] = Counter()
    for o in sql:
        units[o.status] += o.quantity
    r.sql_units = dict(units)

    # Inventory arithmetic: available + held + sold == stock, none negative.
    if r.available + r.held + r.sold != r.stock:
        p.append(f"invariant: available {r.available} + held {r.held} + sold {r.sold} != stock {r.stock}")
    for name in ("available", "held", "sold"):
        if getattr(r, name) < 0:
            p.append(f"negative: {name} is {getattr(r, name)}")
    redis_units = {st: sum(o.quantity for o in snap.orders.values() if o.status == st) for st in LIVE}
    if redis_units["reserved"] != r.held:
        p.append(f"held_mismatch: held {r.held} but reserved orders hold {redis_units['reserved']} units")
    if redis_units["paid"] != r.sold:
        p.append(f"sold_mismatch: sold {r.sold} but paid orders hold {redis_units['paid']} units")

    # Oversold: more units promised (counter, Redis orders or SQL rows) than there is stock.
    promised = max(r.held + r.sold, sum(redis_units.values()), sum(units[st] for st in LIVE), r.stock - r.available)
    r.oversold = max(0, promised - r.stock)
    if r.oversold:
        p.append(f"oversold: {r.oversold} units beyond stock {r.stock}")

    # One order per (user, idempotency key), in Redis and in SQL.
    for where, orders in (("redis", list(snap.orders.values())), ("sql", sql)):
        seen = Counter((o.user, o.key) for o in orders)
        dups = sum(n - 1 for n in seen.values() if n > 1)
        if dups:
            r.duplicates += dups
            p.append(f"duplicate: {dups} extra orders for one (user, idempotency key) in {where}")

    # Per-user limit, from the orders themselves and from the counter the scripts check.
    per_user: Counter[str] = Counter()
    for o in snap.orders.values():
        if o.status in LIVE:
            per_user[o.user] += o.quantity
    over = sorted(u for u, n in per_user.items() if n > r.limit)
    r.limit_violations = len(over)
    if over:
        p.append(f"limit: {len(over)} users over the per-user limit {r.limit} (e.g. {over[0]!r})")
    wrong = sorted(u for u in set(per_user) | set(snap.users) if per_user[u] != snap.users.get(u, 0))
    if wrong:
        p.append(f"user_count_mismatch: {len(wrong)} users' counters disagree with their orders (e.g. {wrong[0]!r})")

    # Lost: accepted in Redis, absent from SQL (or SQL behind Redis) once the writer has caught up.
    if snap.backlog:
        p.append(f"writer_backlog: {snap.backlog} order events still not in SQL; lost orders cannot be judged")
    else:
        by_id = {o.id: o for o in sql}
        lost = [oid for oid in snap.orders if oid not in by_id]
        r.lost = len(lost)
        if lost:
            p.append(f"lost: {len(lost)} orders accepted in Redis are missing from SQL (e.g. {lost[0]})")
        behind = [o.id for o in snap.orders.values() if o.id in by_id
                  and (RANK.get(by_id[o.id].status, 0) < RANK.get(o.status, 0)
                       or (RANK.get(o.status) == 2 and by_id[o.id].status != o.status))]
        if behind:
            p.append(f"status_mismatch: {len(behind)} orders differ between Redis and SQL (e.g. {behind[0]})")
        # The rest of a row never changes after the reserve: any difference is the writer's error, and
        # units moved within stock show up nowhere else.
        differ = [o.id for o in snap.orders.values() if o.id in by_id
                  and (by_id[o.id].user, by_id[o.id].key, by_id[o.id].quantity) != (o.user, o.key, o.quantity)]
        if differ:
            p.append(f"sql_mismatch: {len(differ)} orders' SQL rows differ from Redis in user, key or quantity "
                     f"(e.g. {differ[0]})")
        phantom = [o.id for o in sql if o.id not in snap.orders]
        if phantom:
            p.append(f"phantom: {len(phantom)} SQL orders of this sale were never accepted in Redis (e.g. {phantom[0]})")
    return r


class UnknownSale(Exception):
    pass


async def snapshot(redis: aioredis.Redis, sale_id: str) -> Snapshot:
    k = _k(sale_id)
    pipe = redis.pipeline(transaction=True)
    pipe.hgetall(k["sale"])
    pipe.hgetall(k["users"])
    pipe.hgetall(k["orders"])
    pipe.xinfo_groups(k["events"])
    pipe.xinfo_stream(k["events"])
    sale, users, orders, groups, stream = await pipe.execute(raise_on_error=False)
    if isinstance(sale, Exception):
        raise sale
    if not sale:
        raise UnknownSale(sale_id)
    sale_i = {}
    for name, v in sale.items():
        try:
            sale_i[_s(name)] = int(v)
        except ValueError:
            continue
    return Snapshot(sale_i, {_s(u): int(n) for u, n in users.items()}, parse_orders(orders),
                    await _backlog(redis, k["events"], groups, stream))


async def _backlog(redis: aioredis.Redis, events: str, groups: Any, stream: Any) -> int:
    if isinstance(stream, rx.ResponseError):  # no stream: no order event was ever written
        return 0
    if isinstance(stream, Exception):
        raise stream
    length = int(stream["length"])
    group = None if isinstance(groups, Exception) else next(
        (g for g in groups if _s(g["name"]) == WRITER_GROUP), None)
    if group is None:
        return length  # the writer has not read this sale at all yet
    pending = int(group.get("pending") or 0)
    last, newest = _s(group["last-delivered-id"]), _s(stream["last-generated-id"])
    if last == newest:
        return pending
    # Redis 6.2 has no group `lag`; count what the group has not been given yet.
    rest = await redis.xrange(events, f"({last}", newest)
    return pending + len(rest or [])


async def sql_orders(engine: Any, sale_id: str) -> list[Order]:
    q = sa.text("SELECT id, user_id, idempotency_key, quantity, status FROM orders WHERE sale_id = :s")
    async with engine.connect() as conn:
        rows = (await conn.execute(q, {"s": sale_id})).all()
    return [Order(r.id, r.user_id, r.idempotency_key, int(r.quantity), r.status) for r in rows]


async def check(redis_url: str, database_url: str, sale_id: str, *, wait_s: float = 15.0) -> Report:
    """Wait (at most `wait_s`) for the order writer to drain this sale, then judge it."""
    from livesale.db import make_engine

    redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10)
    engine = make_engine(database_url)
    try:
        deadline = time.monotonic() + wait_s
        snap = await snapshot(redis, sale_id)
        while snap.backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            snap = await snapshot(redis, sale_id)
        return judge(snap, await sql_orders(engine, sale_id), sale_id)
    finally:
        await redis.aclose()
        await engine.dispose()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livesale verify", description="Check a sale for oversell and lost orders, "
                                "a group-buy's units and money, or an auction's outcome.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sale", help="sale id (sa...)")
    what.add_argument("--groupbuy", help="group-buy id (gb...): units, groups and money (load/groupbuy_verify.py)")
    what.add_argument("--auction", help="auction id (au...): winner, price by the rules, the one order (load/auction.py)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="default: $REDIS_URL")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                   help="SQLAlchemy URL; default: $DATABASE_URL, else the SQLite file in $LIVESALE_DATA")
    p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the order writer (default 15)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.redis_url:
        print("livesale verify: no Redis: pass --redis-url or set REDIS_URL", file=sys.stderr)
        return 2
    db_url = args.database_url
    if not db_url:
        from livesale.config import Settings

        db_url = Settings.from_env(secret="unused").sql_url  # no secret file created for a read-only check
    if args.auction:
        from load import auction

        try:
            au_report = asyncio.run(auction.check(args.redis_url, db_url, args.auction, wait_s=args.wait))
        except LookupError as exc:
            print(f"livesale verify: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"ok": au_report.ok, **asdict(au_report)}) if args.json else au_report.text())
        return 0 if au_report.ok else 1
    if args.groupbuy:
        from load import groupbuy_verify

        try:
            gb_report = asyncio.run(groupbuy_verify.check(args.redis_url, db_url, args.groupbuy, wait_s=args.wait))
        except LookupError as exc:
            print(f"livesale verify: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(asdict(gb_report)) if args.json else gb_report.text())
        return 0 if gb_report.ok else 1
    try:
        report = asyncio.run(check(args.redis_url, db_url, args.sale, wait_s=args.wait))
    except UnknownSale:
        print(f"livesale verify: no sale {args.sale!r} in Redis", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict()) if args.json else report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
