"""`livesale verify --groupbuy ID`: after a run, prove from Redis, SQL and the built-in test provider's
records that a group-buy kept its units and its money right (docs/groupbuy.md).

`load` does not import `commerce`; the layout read here is commerce's, restated (source of truth:
commerce/keys.py groupbuy_keys, commerce/schema.py, commerce/lua/gb_*.lua):

- `{gb:ID}` hash: `stock available in_groups sold status tiers ("size:price,...") min_size max_size
  price0`.
- `{gb:ID}:groups` hash: `s:<gid>` open|succeeded|failed, `n:<gid>` members holding a unit, `j:<gid>`
  members charged, `m:<gid>` member order ids (comma-separated), `p:<gid>` price closed at.
- `{gb:ID}:orders` hash: `s:<oid>` pending|joined|paid|refunded|declined, `u:` user, `g:` group, `m:`
  payment method, `ch:` cents charged, `rf:` cents refunded, `a:` cents owed, `cid:` charge id.
- `{gb:ID}:users` hash user -> open group; `{gb:ID}:open` zset, `{gb:ID}:pending` zset, `{gb:ID}:settle` set.
- The built-in test provider: `{testpay}:charges` hash `<order id>:<method>` -> `id:ok:decline:cents`,
  `{testpay}:refund_log` list of `charge id:cents:key`, one entry per refund that moved money.
- SQL `group_orders (id, status, amount_cents, charged_cents, refunded_cents, ...)` and
  `group_payments (order_id, kind charge|refund, amount_cents, state, ...)`.

The money checks need the built-in provider's records; with another provider they are skipped (said
so in the report), and the unit and SQL checks still run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa


def _keys(gb_id: str) -> dict[str, str]:
    base = f"{{gb:{gb_id}}}"
    return {"gb": base, **{k: f"{base}:{k}" for k in ("groups", "users", "orders", "open", "pending", "settle")}}


def tier_price(tiers: list[tuple[int, int]], members: int) -> int | None:
    price = None
    for size, p in tiers:
        if members >= size:
            price = p
    return price


@dataclass
class GroupbuyReport:
    groupbuy_id: str
    stock: int = 0
    available: int = 0
    in_groups: int = 0
    sold: int = 0
    groups: dict[str, int] = field(default_factory=dict)  # status -> count
    tiers_reached: dict[int, int] = field(default_factory=dict)  # price closed at -> groups
    members: dict[str, int] = field(default_factory=dict)  # order status -> count
    charged_cents: int = 0
    refunded_cents: int = 0
    kept_cents: int = 0
    money_checked: bool = False
    unsettled: int = 0  # groups whose money was still moving when the wait ran out
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [
            f"group-buy {self.groupbuy_id}: stock {self.stock} = available {self.available} + in groups "
            f"{self.in_groups} + sold {self.sold}",
            f"groups      {_counts(self.groups)}; closed at price {_counts(self.tiers_reached)}",
            f"members     {_counts(self.members)}",
            (f"money       charged {self.charged_cents}, refunded {self.refunded_cents}, kept {self.kept_cents} "
             f"(cents, from the provider's records)" if self.money_checked else
             "money       not checked: no built-in test provider records"),
        ]
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines.append(f"RESULT      {verdict}")
        lines += [f"  - {p}" for p in self.problems[:30]]
        return "\n".join(lines)


def _counts(c: dict[Any, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))) or "none"


def _d(h: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in h.items()}


async def _settled(redis: aioredis.Redis, k: dict[str, str]) -> bool:
    pipe = redis.pipeline(transaction=False)
    pipe.scard(k["settle"])
    pipe.zcard(k["pending"])
    pipe.hget(k["gb"], "status")
    pipe.zcard(k["open"])
    settle, pending, status, open_groups = await pipe.execute()
    return not settle and not pending and (status != b"ended" or not open_groups)


def judge(gb: dict[str, str], groups: dict[str, str], orders: dict[str, str], users: dict[str, str],
          charges: dict[str, str] | None, refund_log: list[str], sql_members: dict[str, Any],
          sql_payments: dict[tuple[str, str], Any], gb_id: str, settled: bool) -> GroupbuyReport:
    """Every check, on one snapshot (pure: tests feed it states)."""
    r = GroupbuyReport(gb_id, int(gb["stock"]), int(gb["available"]), int(gb["in_groups"]), int(gb["sold"]))
    bad = r.problems
    if r.available + r.in_groups + r.sold != r.stock or min(r.available, r.in_groups, r.sold) < 0:
        bad.append(f"units: available {r.available} + in_groups {r.in_groups} + sold {r.sold} != stock {r.stock}")
    tiers = [(int(s), int(p)) for s, p in (t.split(":") for t in gb["tiers"].split(","))]
    max_size, price0 = tiers[-1][0], int(gb["price0"])
    gids = [k[2:] for k in groups if k.startswith("s:")]
    in_open, sold = 0, 0
    open_users: dict[str, list[str]] = defaultdict(list)
    statuses: Counter[str] = Counter()
    for gid in gids:
        st, n, j = groups["s:" + gid], int(groups["n:" + gid]), int(groups["j:" + gid])
        members = [m for m in groups.get("m:" + gid, "").split(",") if m]
        statuses[st if n or st == "open" else "failed_empty"] += 1  # failed_empty: its leader was declined
        if n > max_size or len(members) != n:
            bad.append(f"group {gid}: {n} members holding units, {len(members)} listed, size {max_size}")
        member_status = Counter(orders.get("s:" + m) for m in members)
        if st == "open":
            in_open += n
            if set(member_status) - {"joined", "pending"}:
                bad.append(f"open group {gid} has members {dict(member_status)}")
            for m in members:
                open_users[orders["u:" + m]].append(gid)
        else:
            price = tier_price(tiers, j)
            expect = "paid" if st == "succeeded" else "refunded"
            if (st == "succeeded") != (price is not None) or int(groups.get("p:" + gid, 0)) != (price or 0):
                bad.append(f"group {gid} {st} with {j} members at price {groups.get('p:' + gid)} (tier: {price})")
            if member_status != Counter({expect: j}) or n != j:
                bad.append(f"{st} group {gid}: members {dict(member_status)}, {j} charged, {n} holding")
            if st == "succeeded":
                sold += j
                r.tiers_reached[int(groups["p:" + gid])] = r.tiers_reached.get(int(groups["p:" + gid]), 0) + 1
    r.groups = dict(statuses)
    if in_open != r.in_groups:
        bad.append(f"in_groups {r.in_groups} but open groups hold {in_open} members")
    if sold != r.sold:
        bad.append(f"sold {r.sold} but succeeded groups have {sold} members")
    for user, held in open_users.items():
        if len(held) > 1:
            bad.append(f"user {user} is in {len(held)} open groups: {held}")
        if users.get(user) != held[0]:
            bad.append(f"user {user}'s open group is {users.get(user)}, but they are a member of {held[0]}")
    oids = [k[2:] for k in orders if k.startswith("s:")]
    r.members = dict(Counter(orders["s:" + o] for o in oids))
    refunded_by_charge: dict[str, int] = defaultdict(int)
    for entry in refund_log:
        cid, cents, _key = entry.split(":", 2)
        refunded_by_charge[cid] += int(cents)
    r.money_checked = charges is not None
    for oid in oids:
        st = orders["s:" + oid]
        ch, rf, owed = int(orders.get("ch:" + oid, 0)), int(orders.get("rf:" + oid, 0)), int(orders.get("a:" + oid, 0))
        charge = _charge(charges, oid, orders.get("m:" + oid, "")) if charges is not None else None
        if st == "declined":
            if charge is not None and charge[1] and refunded_by_charge.get(charge[0], 0) != charge[2] and settled:
                bad.append(f"declined member {oid}: charge {charge[0]} of {charge[2]} kept")
            continue
        if st == "pending":
            continue
        if ch != price0:
            bad.append(f"member {oid} charged {ch}, first tier {price0}")
        if settled and ch - rf != owed:
            bad.append(f"member {oid} ({st}): charged {ch} - refunded {rf} != owed {owed}")
        if charges is not None:
            if charge is None or not charge[1] or charge[2] != ch or charge[0] != orders.get("cid:" + oid):
                bad.append(f"member {oid}: provider charge {charge} does not match the order ({ch}, {orders.get('cid:' + oid)})")
            elif refunded_by_charge.get(charge[0], 0) != rf:
                bad.append(f"member {oid}: provider refunded {refunded_by_charge.get(charge[0], 0)}, order says {rf}")
            r.charged_cents += ch
            r.refunded_cents += refunded_by_charge.get(charge[0] if charge else "", 0)
        if settled and st in ("paid", "refunded"):
            row = sql_members.get(oid)
            if row is None or (row.status, row.charged_cents, row.refunded_cents, row.amount_cents) != (st, ch, rf, owed):
                bad.append(f"member {oid}: SQL row {tuple(row) if row else None} behind Redis ({st}, {ch}, {rf}, {owed})")
            pay = sql_payments.get((oid, "charge"))
            if pay is None or pay.state != "done":
                bad.append(f"member {oid}: SQL charge record {pay.state if pay else None}")
            if ch - owed > 0:
                ref = sql_payments.get((oid, "refund"))
                if ref is None or ref.state != "done" or ref.amount_cents != ch - owed:
                    bad.append(f"member {oid}: SQL refund record {tuple(ref) if ref else None}, due {ch - owed}")
    r.kept_cents = r.charged_cents - r.refunded_cents
    return r


def _charge(charges: dict[str, str] | None, oid: str, method: str) -> tuple[str, bool, int] | None:
    raw = (charges or {}).get(f"{oid}:{method}")
    if raw is None:
        return None
    cid, ok, _decline, *amount = raw.split(":", 3)
    return cid, ok == "1", int(amount[0]) if amount else 0


async def check(redis_url: str, database_url: str, gb_id: str, *, wait_s: float = 20.0) -> GroupbuyReport:
    """Wait (up to wait_s) for every closed group's money to be moved, then judge."""
    k = _keys(gb_id)
    redis = aioredis.Redis.from_url(redis_url)
    engine = None
    try:
        if not await redis.exists(k["gb"]):
            raise LookupError(f"no group-buy {gb_id!r} in Redis")
        deadline = time.monotonic() + wait_s
        settled = await _settled(redis, k)
        while not settled and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            settled = await _settled(redis, k)
        async with redis.pipeline(transaction=True) as pipe:  # one instant of the group-buy's slot
            for name in ("gb", "groups", "orders", "users"):
                pipe.hgetall(k[name])
            pipe.scard(k["settle"])
            gb, groups, orders, users, unsettled = await pipe.execute()
        charges_raw = await redis.hgetall("{testpay}:charges")  # type: ignore[misc]
        refund_log = [e.decode() for e in await redis.lrange("{testpay}:refund_log", 0, -1)]  # type: ignore[misc]
        from livesale.db import make_engine

        engine = make_engine(database_url)
        meta = sa.MetaData()
        async with engine.connect() as conn:
            await conn.run_sync(lambda c: meta.reflect(c, only=["group_orders", "group_payments"]))
            go, gp = meta.tables["group_orders"], meta.tables["group_payments"]
            members = {row.id: row for row in (await conn.execute(
                sa.select(go.c.id, go.c.status, go.c.charged_cents, go.c.refunded_cents, go.c.amount_cents)
                .where(go.c.groupbuy_id == gb_id))).all()}
            pays = {(row.order_id, row.kind): row for row in (await conn.execute(
                sa.select(gp.c.order_id, gp.c.kind, gp.c.state, gp.c.amount_cents)
                .where(gp.c.order_id.like(gb_id + ".%")))).all()}
        report = judge(_d(gb), _d(groups), _d(orders), _d(users), _d(charges_raw) if charges_raw else None,
                       refund_log, members, pays, gb_id, settled)
        report.unsettled = int(unsettled)
        if not settled:
            report.problems.append(f"money still moving after {wait_s:.0f} s ({unsettled} groups to settle)")
        return report
    finally:
        await redis.aclose()
        if engine is not None:
            await engine.dispose()
