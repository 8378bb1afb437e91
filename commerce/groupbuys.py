"""Group-buys (拼團, docs/groupbuy.md): creation, tiers, the public views of group-buys, groups and
members' orders, and the Redis scripts of a group's life (join, confirm, release, close).

Money (the charge at joining, the refunds at closing) and the sweeper live in commerce/group_money.py.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from commerce import keys
from commerce.schema import groupbuys as groupbuys_table
from livesale.codes import ErrorCode
from livesale.errors import NotFound, Unprocessable
from livesale.redis_client import LuaScript, redis_errors
from livesale.services import Services
from livesale.times import iso_ms

_LUA = Path(__file__).with_name("lua")
_PRELUDE = (_LUA / "gb_common.lua").read_text()
JOIN = LuaScript(_LUA / "gb_join.lua", _PRELUDE)
CONFIRM = LuaScript(_LUA / "gb_confirm.lua", _PRELUDE)
RELEASE = LuaScript(_LUA / "gb_release.lua", _PRELUDE)
CLOSE = LuaScript(_LUA / "gb_close.lua", _PRELUDE)

GROUPBUY_ID_RE = re.compile(r"^gb[0-9a-f]{12}$")
GROUP_ID_RE = re.compile(r"^gb[0-9a-f]{12}-[0-9a-f]{10}$")
MEMBER_ID_RE = re.compile(r"^gb[0-9a-f]{12}\.[0-9a-f]{16}$")
MAX_TIERS = 10
MAX_GROUP_SIZE = 1000
MAX_PRICE = 100_000_000_00
Tiers = list[tuple[int, int]]


def validate_tiers(raw: Any) -> Tiers:
    """[{size, price_cents}...]: 1-10 tiers, sizes rising from at least 2, prices falling, every
    price at least 1 cent (a member is charged the first tier's price when joining)."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TIERS:
        raise Unprocessable(f"tiers must be a list of 1 to {MAX_TIERS} {{size, price_cents}} objects",
                            code=ErrorCode.INVALID_TIERS)
    tiers: Tiers = []
    for t in raw:
        size = t.get("size") if isinstance(t, dict) else None
        price = t.get("price_cents") if isinstance(t, dict) else None
        if type(size) is not int or not 2 <= size <= MAX_GROUP_SIZE:
            raise Unprocessable(f"each tier's size must be an integer from 2 to {MAX_GROUP_SIZE}",
                                code=ErrorCode.INVALID_TIERS)
        if type(price) is not int or not 1 <= price <= MAX_PRICE:
            raise Unprocessable(f"each tier's price_cents must be an integer from 1 to {MAX_PRICE}",
                                code=ErrorCode.INVALID_TIERS)
        if tiers and (size <= tiers[-1][0] or price >= tiers[-1][1]):
            raise Unprocessable("tier sizes must rise and their prices fall", code=ErrorCode.INVALID_TIERS)
        tiers.append((size, price))
    return tiers


def validate_groupbuy(body: dict[str, Any]) -> dict[str, Any]:
    sku = body.get("sku")
    if not isinstance(sku, str) or not sku:
        raise Unprocessable("sku must be a non-empty string")
    stock = body.get("stock")
    if type(stock) is not int or not 1 <= stock <= 10_000_000:
        raise Unprocessable("stock must be an integer from 1 to 10000000")
    ttl = body.get("group_ttl_s")
    if type(ttl) is not int or not 60 <= ttl <= 86400:
        raise Unprocessable("group_ttl_s must be an integer from 60 to 86400")
    return {"sku": sku, "stock": stock, "group_ttl_s": ttl, "tiers": validate_tiers(body.get("tiers"))}


def encode_tiers(tiers: Tiers) -> str:
    return ",".join(f"{s}:{p}" for s, p in tiers)


def decode_tiers(raw: bytes | str) -> Tiers:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return [(int(s), int(p)) for s, p in (t.split(":") for t in text.split(","))]


def tier_price(tiers: Tiers, members: int) -> int | None:
    """Mirror of tier_price in lua/gb_common.lua: the price of the largest tier `members` reaches."""
    price = None
    for size, p in tiers:
        if members >= size:
            price = p
    return price


def _str(h: dict[bytes, bytes], name: str, default: str = "") -> str:
    v = h.get(name.encode())
    return v.decode() if v is not None else default


def groupbuy_view(gb_id: str, h: dict[bytes, bytes]) -> dict[str, Any]:
    tiers = decode_tiers(h[b"tiers"])
    return {
        "id": gb_id,
        "stream_id": _str(h, "stream"),
        "sku": _str(h, "sku"),
        "title": _str(h, "title"),
        "currency": _str(h, "currency"),
        "status": _str(h, "status"),
        "stock": int(h[b"stock"]),
        "available": int(h[b"available"]),
        "in_groups": int(h[b"in_groups"]),
        "sold": int(h[b"sold"]),
        "tiers": [{"size": s, "price_cents": p} for s, p in tiers],
        "group_ttl_s": int(h[b"ttl_ms"]) // 1000,
        "created_at": iso_ms(int(h[b"created"])),
    }


async def load_groupbuy(svc: Services, gb_id: str) -> dict[bytes, bytes]:
    if not GROUPBUY_ID_RE.match(gb_id):
        raise NotFound(f"no group-buy {gb_id!r}")
    with redis_errors():
        h = await svc.redis.hgetall(keys.groupbuy(gb_id))  # type: ignore[misc]
    if not h:
        raise NotFound(f"no group-buy {gb_id!r}")
    return h  # type: ignore[no-any-return]


async def get_groupbuy(svc: Services, gb_id: str) -> dict[str, Any]:
    return groupbuy_view(gb_id, await load_groupbuy(svc, gb_id))


async def create_groupbuy(svc: Services, stream_id: str, spec: dict[str, Any], product: dict[str, Any]) -> dict[str, Any]:
    gb_id = "gb" + secrets.token_hex(6)
    now = datetime.now(UTC)
    tiers: Tiers = spec["tiers"]
    async with svc.db.begin() as conn:
        await conn.execute(groupbuys_table.insert().values(
            id=gb_id, stream_id=stream_id, sku=spec["sku"], currency=product["currency"], stock=spec["stock"],
            tiers=encode_tiers(tiers), group_ttl_s=spec["group_ttl_s"], created_at=now))
    mapping = {
        "stream": stream_id, "sku": spec["sku"], "title": product["title"], "currency": product["currency"],
        "stock": spec["stock"], "available": spec["stock"], "in_groups": 0, "sold": 0, "status": "active",
        "ttl_ms": spec["group_ttl_s"] * 1000, "tiers": encode_tiers(tiers), "min_size": tiers[0][0],
        "max_size": tiers[-1][0], "price0": tiers[0][1], "created": int(now.timestamp() * 1000),
    }
    pipe = svc.redis.pipeline(transaction=True)
    pipe.hset(keys.groupbuy(gb_id), mapping=mapping)
    # On a cluster the sets live in other slots: the group-buy's hash first, then the sets (docs/cluster.md).
    sets = svc.redis.pipeline(transaction=False) if svc.bus.sharded else pipe
    sets.sadd(keys.stream_groupbuys(stream_id), gb_id)
    sets.sadd(keys.OPEN_GROUPBUYS, gb_id)
    await pipe.execute()
    if sets is not pipe:
        await sets.execute()
    return await get_groupbuy(svc, gb_id)


async def list_for_stream(svc: Services, stream_id: str) -> list[dict[str, Any]]:
    """The stream's group-buys, oldest first (GET /api/streams/{id}/sales lists them under `groupbuys`)."""
    ids = [i.decode() for i in await svc.redis.smembers(keys.stream_groupbuys(stream_id))]  # type: ignore[misc]
    pipe = svc.redis.pipeline(transaction=False)
    for gb_id in ids:
        pipe.hgetall(keys.groupbuy(gb_id))
    views = [groupbuy_view(i, h) for i, h in zip(ids, await pipe.execute(), strict=True) if h]
    return sorted(views, key=lambda v: (v["created_at"], v["id"]))


def group_view(gid: str, g: list[bytes | None], tiers: Tiers) -> dict[str, Any]:
    """g: HMGET of s, l, j, x, p (keys.groupbuy_keys: groups)."""
    status, leader, members, expires, closed_price = g
    assert status is not None and leader is not None and members is not None and expires is not None
    joined = int(members)
    st = status.decode()
    if st == "open":
        # Before the smallest tier the members pay the first tier's price (what they were charged).
        price = tier_price(tiers, max(joined, tiers[0][0]))
    else:
        price = int(closed_price or 0)
    nxt = next(({"size": s, "price_cents": p} for s, p in tiers if s > joined), None) if st == "open" else None
    return {
        "id": gid,
        "groupbuy": keys.groupbuy_of(gid),
        "leader": leader.decode(),
        "members": joined,
        "size": tiers[-1][0],
        "status": st,
        "price_cents": price,
        "next_tier": nxt,
        "expires_at": iso_ms(int(expires)),
        "share_path": f"/g/{gid}",
    }


GROUP_FIELDS = ("s:", "l:", "j:", "x:", "p:")


async def _fields_and(svc: Services, some_id: str, hash_no: int, fields: tuple[str, ...],
                      gb_field: str) -> tuple[list[bytes | None], bytes | None]:
    """One read of a group's or member's fields (in groupbuy_keys()[hash_no]) and one group-buy field."""
    ks = keys.groupbuy_keys(keys.groupbuy_of(some_id))
    with redis_errors():
        pipe = svc.redis.pipeline(transaction=False)
        pipe.hmget(ks[hash_no], *(f + some_id for f in fields))
        pipe.hget(ks[0], gb_field)
        got, value = await pipe.execute()
    return got, value


async def get_group(svc: Services, gid: str) -> dict[str, Any]:
    if not GROUP_ID_RE.match(gid):
        raise NotFound(f"no group {gid!r}")
    g, tiers = await _fields_and(svc, gid, 1, GROUP_FIELDS, "tiers")
    if g[0] is None or tiers is None:
        raise NotFound(f"no group {gid!r}")
    return group_view(gid, g, decode_tiers(tiers))


ORDER_FIELDS = ("s:", "u:", "g:", "c:", "ch:", "rf:", "a:", "r:")


def member_order_view(oid: str, o: list[bytes | None], currency: str) -> dict[str, Any]:
    """A member's order (GET /api/orders/{id}): `amount_cents` is what the member pays in the end
    (the first tier's price until the group closes), `charged_cents - refunded_cents` equals it once
    the close's refund is made (`refund_pending` until then)."""
    status, _user, gid, created, charged, refunded, amount, ref = (v.decode() if v is not None else "" for v in o)
    ch, rf, a = int(charged or 0), int(refunded or 0), int(amount or 0)
    return {
        "id": oid,
        "kind": "group",
        "groupbuy": keys.groupbuy_of(oid),
        "group": gid,
        "status": status,
        "quantity": 1,
        "amount_cents": a,
        "charged_cents": ch,
        "refunded_cents": rf,
        "refund_pending": status in ("paid", "refunded") and ch - rf != a,
        "currency": currency,
        "ref": ref or None,
        "expires_at": None,
        "created_at": iso_ms(int(created or 0)),
    }


async def get_member_order(svc: Services, oid: str, user_id: str, admin: bool) -> dict[str, Any]:
    """The member's own order (404 for anyone else but an admin, as for every order)."""
    o, currency = await _fields_and(svc, oid, 4, ORDER_FIELDS, "currency")
    if o[0] is None or ((o[1] or b"").decode() != user_id and not admin):
        raise NotFound(f"no order {oid!r}")
    return member_order_view(oid, o, (currency or b"").decode())


def new_order_id(gb_id: str) -> str:
    return f"{gb_id}.{secrets.token_hex(8)}"


def new_group_id(gb_id: str) -> str:
    return f"{gb_id}-{secrets.token_hex(5)}"


@dataclass
class Figures:
    """A group-buy's order figures for stream stats (docs/api.md "Stream analytics", docs/groupbuy.md):
    a member's order counts once charged (joined), is paid when its group succeeded (at the tier
    price: its GMV); `refunded_cents` is what went back on those paid orders (the differences; a failed
    group's refunds are no paid order's)."""

    orders: int = 0
    paid_orders: int = 0
    gmv_cents: int = 0
    refunded_cents: int = 0
    in_groups: int = 0  # units in open groups: the figures can still move
    buyers: set[str] = field(default_factory=set)
    referrals: Counter[str] = field(default_factory=Counter)
    joined_ms: list[int] = field(default_factory=list)
    paid_ms: list[tuple[int, int]] = field(default_factory=list)  # (closed ms, cents) per paid order


async def figures(svc: Services, gb_id: str) -> Figures:
    """Read from Redis at once (one HGETALL of the members and one of the groups): the stats of a
    group-buy move with its joins and closes, and the join path does no extra work for them."""
    ks = keys.groupbuy_keys(gb_id)
    pipe = svc.redis.pipeline(transaction=False)
    pipe.hgetall(ks[4])
    pipe.hgetall(ks[1])
    pipe.hget(ks[0], "in_groups")
    raw_orders, raw_groups, in_groups = await pipe.execute()
    orders = {k.decode(): v.decode() for k, v in raw_orders.items()}
    closed = {k.decode()[3:]: int(v) for k, v in raw_groups.items() if k.startswith(b"cl:")}
    f = Figures(in_groups=int(in_groups or 0))
    for name, status in orders.items():
        if not name.startswith("s:") or status in ("pending", "declined"):
            continue
        oid = name[2:]
        f.orders += 1
        f.joined_ms.append(int(orders["c:" + oid]))
        if orders.get("r:" + oid):
            f.referrals[orders["r:" + oid]] += 1
        if status == "paid":
            amount = int(orders["a:" + oid])
            f.paid_orders += 1
            f.gmv_cents += amount
            f.refunded_cents += int(orders.get("rf:" + oid, 0))
            f.buyers.add(orders["u:" + oid])
            f.paid_ms.append((closed.get(orders["g:" + oid], 0), amount))
    return f


async def end_for_stream(svc: Services, stream_id: str) -> None:
    """A stream that ends ends its group-buys: no new groups or joins; every process's group sweeper
    closes their open groups by size within a tick (docs/groupbuy.md)."""
    for gb_id in await svc.redis.smembers(keys.stream_groupbuys(stream_id)):  # type: ignore[misc]
        await svc.redis.hset(keys.groupbuy(gb_id.decode()), "status", "ended")  # type: ignore[misc]
