"""Discovery (docs/api.md "Discovery"): streams by status, a stream's sales and comment history, a
user's own orders, unpinning.

SQL is the system of record for which streams and orders exist and in what order they are listed;
Redis, where the hot state lives, supplies what each one looks like now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from commerce import auctions, groupbuys
from commerce import keys as commerce_keys
from commerce.sales import sale_view
from commerce.schema import auctions as auctions_table
from commerce.schema import group_orders
from commerce.schema import groupbuys as groupbuys_table
from commerce.schema import orders as orders_table
from commerce.schema import sales as sales_table
from live import paging
from live.api import _owner, load_stream, stream_view
from live.schema import streams
from live.streams import can_pin
from livesale.bus import log_key, meta_key
from livesale.codes import ErrorCode
from livesale.errors import Conflict, NotFound, Unprocessable
from livesale.redis_client import redis_errors
from livesale.services import SERVICES, Services
from livesale.times import iso_ms
from livesale.web import current_user, guarded, json_response
from realtime.snapshot import log_events

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    """Exact epoch microseconds (SQLite hands back naive datetimes; they were written in UTC)."""
    return (dt.replace(tzinfo=dt.tzinfo or UTC) - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + us * _US


# --- GET /api/streams
#
# Paging is a snapshot as of the first page's time T (carried in the cursor): a stream's group (live,
# scheduled, ended) is its status at T, read from its SQL timestamps, and within a group the order is
# by a time that never changes once set (started_at, created_at, ended_at), newest first, then id.
# Every key is fixed, so a stream is never listed twice; a stream created or started after T keeps
# the group it had at T (or is not listed, if it did not exist), so nothing is skipped either.
GROUPS = ("live", "scheduled", "ended")
_DEFAULT_GROUPS = {"": ("live", "scheduled"), "live": ("live",), "scheduled": ("scheduled",), "ended": ("ended",)}
_SORT = {"live": streams.c.started_at, "scheduled": streams.c.created_at, "ended": streams.c.ended_at}


def _as_of(group: str, t: datetime) -> sa.ColumnElement[bool]:
    c = streams.c
    not_ended = sa.or_(c.ended_at.is_(None), c.ended_at > t)
    if group == "live":
        return sa.and_(c.started_at <= t, not_ended)
    if group == "scheduled":
        return sa.and_(c.created_at <= t, sa.or_(c.started_at.is_(None), c.started_at > t), not_ended)
    return c.ended_at <= t


async def _stream_rows(conn: AsyncConnection, status: str, t: datetime, after: tuple[int, datetime, str] | None,
                       n: int) -> list[tuple[int, sa.Row[Any]]]:
    """Up to n (group index, row) pairs after the `after` position (group index, sort key, id)."""
    out: list[tuple[int, sa.Row[Any]]] = []
    for group in _DEFAULT_GROUPS[status]:
        g = GROUPS.index(group)
        if after is not None and g < after[0]:
            continue
        key = _SORT[group]
        q = sa.select(streams).where(_as_of(group, t))
        if after is not None and g == after[0]:
            q = q.where(sa.or_(key < after[1], sa.and_(key == after[1], streams.c.id < after[2])))
        q = q.order_by(key.desc(), streams.c.id.desc()).limit(n - len(out))
        out += [(g, row) for row in (await conn.execute(q)).all()]
        if len(out) >= n:
            break
    return out


def _row_view(row: sa.Row[Any]) -> dict[str, Any]:
    """A stream whose Redis state is gone (a Redis restored from an old backup): what SQL knows."""
    def t(v: datetime | None) -> str | None:
        return iso_ms(to_us(v) // 1000) if v is not None else None
    return {"id": row.id, "status": row.status, "host": row.host, "title": row.title,
            "created_at": t(row.created_at), "started_at": t(row.started_at), "ended_at": t(row.ended_at),
            "pinned": None, "likes": 0, "viewers": 0, "sales": []}


async def _view_or_row(svc: Services, row: sa.Row[Any]) -> dict[str, Any]:
    try:
        return await stream_view(svc, row.id)
    except NotFound:
        return _row_view(row)


async def list_streams(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    q = request.query
    status = q.get("status", "")
    if status not in _DEFAULT_GROUPS or (status == "" and "status" in q):
        raise Unprocessable("status must be live, scheduled or ended")
    n = paging.limit(q, 20)
    cur = paging.decode_cursor(q.get("cursor"), (int, str, int, int, str))
    if cur is None:
        t_us, after = to_us(datetime.now(UTC)), None
    else:
        t_us, cur_status, g, key_us, last_id = cur
        if cur_status != status or not 0 <= g < len(GROUPS) or GROUPS[g] not in _DEFAULT_GROUPS[status]:
            raise Unprocessable("cursor belongs to another status filter; start again without it")
        after = (g, from_us(key_us), last_id)
    async with svc.db.connect() as conn:
        rows = await _stream_rows(conn, status, from_us(t_us), after, n + 1)
    nxt = None
    if len(rows) > n:
        rows = rows[:n]
        g, last = rows[-1]
        nxt = paging.encode_cursor([t_us, status, g, to_us(getattr(last, _SORT[GROUPS[g]].key)), last.id])
    with redis_errors():
        views = await asyncio.gather(*(_view_or_row(svc, row) for _, row in rows))
    return json_response({"streams": views, "next": nxt})


# --- GET /api/streams/{id}/sales


async def _known_stream(svc: Services, stream_id: str) -> None:
    if len(stream_id) > 64 or not await svc.redis.exists(meta_key(stream_id)):
        raise NotFound(f"no stream {stream_id!r}")


async def stream_sales(request: web.Request) -> web.Response:
    """Every sale opened on the stream, any status, oldest first (the order they were created in)."""
    svc = request.app[SERVICES]
    stream_id = request.match_info["id"]
    with redis_errors():
        await _known_stream(svc, stream_id)
    async with svc.db.connect() as conn:
        ids = (await conn.execute(sa.select(sales_table.c.id).where(sales_table.c.stream_id == stream_id)
                                  .order_by(sales_table.c.created_at, sales_table.c.id))).scalars().all()
    with redis_errors():
        pipe = svc.redis.pipeline(transaction=False)
        for sale_id in ids:
            pipe.hgetall(commerce_keys.sale(sale_id))
        hashes = await pipe.execute() if ids else []
        gbs = await groupbuys.list_for_stream(svc, stream_id)
        aucs = await auctions.list_for_stream(svc, stream_id)
    return json_response({"sales": [sale_view(i, h) for i, h in zip(ids, hashes, strict=True) if h],
                          "auctions": aucs, "groupbuys": gbs})


# --- GET /api/streams/{id}/comments


async def comments(request: web.Request) -> web.Response:
    """Accepted comments before seq `before`, newest first, deleted ones left out. The history reaches
    as far back as the stream log keeps (docs/api.md "Discovery")."""
    svc = request.app[SERVICES]
    stream_id = request.match_info["id"]
    n = paging.limit(request.query, 50)
    before = paging.positive_int(request.query, "before")
    with redis_errors():
        await _known_stream(svc, stream_id)
        # The whole log, newest first: a deletion is logged after its comment, possibly many pages later.
        entries = log_events(await svc.redis.xrevrange(log_key(stream_id), count=svc.bus.log_maxlen * 2))
    deleted: set[str] = set()
    out: list[dict[str, Any]] = []
    for _id, data in entries:
        ev = orjson.loads(data)
        kind = ev.get("type")
        if kind == "comment_deleted":
            deleted.add(ev.get("id"))
        elif (kind == "comment" and ev.get("id") not in deleted and (before is None or ev.get("seq", 0) < before)
              and len(out) < n):
            out.append(ev)
    return json_response({"comments": out})


# --- GET /api/me/orders
#
# Each kind of order (flash sale, auction win, group-buy member) is one
# source: a function giving the user's newest orders after a (created_at, id) position. The page is
# the merge of every source's, newest first; order ids are unique across kinds.
OrderSource = Callable[[AsyncConnection, str, tuple[datetime, str] | None, int], Awaitable[list[dict[str, Any]]]]


async def _page(conn: AsyncConnection, q: sa.Select[Any], o: Any, after: tuple[datetime, str] | None,
                n: int) -> list[sa.Row[Any]]:
    """The query's rows newest first, after the (created_at, id) position `after`, at most n."""
    if after is not None:
        q = q.where(sa.or_(o.created_at < after[0], sa.and_(o.created_at == after[0], o.id < after[1])))
    return list((await conn.execute(q.order_by(o.created_at.desc(), o.id.desc()).limit(n))).all())


def _order_rows(kind: str, rows: list[sa.Row[Any]]) -> list[dict[str, Any]]:
    """Rows of `orders` as me/orders items; `kind` names the id's key (`sale` or `auction`)."""
    return [{"kind": kind, "id": r.id, kind: r.sale_id, "stream_id": r.stream_id, "sku": r.sku,
             "status": r.status, "quantity": r.quantity, "amount_cents": r.amount_cents,
             "currency": r.currency, "expires_at": None, "_created": to_us(r.created_at)} for r in rows]


async def _sale_orders(conn: AsyncConnection, user_id: str, after: tuple[datetime, str] | None,
                       n: int) -> list[dict[str, Any]]:
    o, s = orders_table.c, sales_table.c
    q = (sa.select(o.id, o.sale_id, o.quantity, o.amount_cents, o.status, o.created_at, s.stream_id, s.sku,
                   s.currency)
         .select_from(orders_table.outerjoin(sales_table, s.id == o.sale_id))
         .where(o.user_id == user_id, o.sale_id.notlike("au%")))  # auction wins: _auction_orders
    return _order_rows("sale", await _page(conn, q, o, after, n))


async def _auction_orders(conn: AsyncConnection, user_id: str, after: tuple[datetime, str] | None,
                          n: int) -> list[dict[str, Any]]:
    """Auction wins (docs/auctions.md): rows of `orders` whose sale_id is the auction's id."""
    o, a = orders_table.c, auctions_table.c
    q = (sa.select(o.id, o.sale_id, o.quantity, o.amount_cents, o.status, o.created_at, a.stream_id, a.sku,
                   a.currency)
         .select_from(orders_table.join(auctions_table, a.id == o.sale_id))
         .where(o.user_id == user_id))
    return _order_rows("auction", await _page(conn, q, o, after, n))


async def _group_orders(conn: AsyncConnection, user_id: str, after: tuple[datetime, str] | None,
                        n: int) -> list[dict[str, Any]]:
    """A group-buy member's orders (docs/groupbuy.md); the ones whose card was declined are left out."""
    o, g = group_orders.c, groupbuys_table.c
    q = (sa.select(o.id, o.groupbuy_id, o.group_id, o.status, o.amount_cents, o.charged_cents, o.refunded_cents,
                   o.created_at, g.stream_id, g.sku, g.currency)
         .select_from(group_orders.outerjoin(groupbuys_table, g.id == o.groupbuy_id))
         .where(o.user_id == user_id, o.status != "declined"))
    rows = await _page(conn, q, o, after, n)
    return [{"kind": "group", "id": r.id, "groupbuy": r.groupbuy_id, "group": r.group_id, "stream_id": r.stream_id,
             "sku": r.sku, "status": r.status, "quantity": 1, "amount_cents": r.amount_cents,
             "charged_cents": r.charged_cents, "refunded_cents": r.refunded_cents, "currency": r.currency,
             "expires_at": None, "_created": to_us(r.created_at)} for r in rows]


ORDER_SOURCES: list[OrderSource] = [_sale_orders, _auction_orders, _group_orders]


async def _live_status(svc: Services, page: list[dict[str, Any]]) -> None:
    """SQL follows Redis through the order writer: an order's status and hold are read from Redis
    while its sale's keys are there, so a payment shows at once."""
    sale_orders = [o for o in page if o["kind"] in ("sale", "auction")]  # an auction win has a sale's keys
    group_members = [o for o in page if o["kind"] == "group"]
    if not sale_orders and not group_members:
        return
    pipe = svc.redis.pipeline(transaction=False)
    for o in sale_orders:
        pipe.hmget(commerce_keys.orders(o.get("sale") or o["auction"]), "s:" + o["id"], "e:" + o["id"])
    for o in group_members:
        pipe.hmget(commerce_keys.groupbuy_keys(o["groupbuy"])[4], *(f + o["id"] for f in groupbuys.ORDER_FIELDS))
    found = await pipe.execute()
    for o, (s, e) in zip(sale_orders, found, strict=False):
        if s is not None:
            o["status"] = s.decode()
            o["expires_at"] = iso_ms(int(e)) if o["status"] == "reserved" and e else None
    for o, fields in zip(group_members, found[len(sale_orders):], strict=True):
        if fields[0] is not None and fields[0] != b"declined":
            live = groupbuys.member_order_view(o["id"], fields, o["currency"])
            o.update({k: live[k] for k in ("status", "amount_cents", "charged_cents", "refunded_cents")})


async def my_orders(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    user = current_user(request)
    n = paging.limit(request.query, 20)
    cur = paging.decode_cursor(request.query.get("cursor"), (int, str))
    after = (from_us(cur[0]), cur[1]) if cur is not None else None
    async with svc.db.connect() as conn:
        found = [o for source in ORDER_SOURCES for o in await source(conn, user.id, after, n + 1)]
    found.sort(key=lambda o: (o["_created"], o["id"]), reverse=True)
    page, nxt = found[:n], None
    if len(found) > n:
        nxt = paging.encode_cursor([page[-1]["_created"], page[-1]["id"]])
    with redis_errors():
        await _live_status(svc, page)
    for o in page:
        o["created_at"] = iso_ms(o.pop("_created") // 1000)
    return json_response({"orders": page, "next": nxt})


# --- DELETE /api/streams/{id}/pin


async def unpin(request: web.Request) -> web.Response:
    """The host takes the pinned product down; viewers get `pin` {product: null}."""
    svc = request.app[SERVICES]
    user = current_user(request)
    stream_id = request.match_info["id"]
    stream = await load_stream(svc, stream_id)
    _owner(user, stream)
    if not can_pin(stream["status"]):
        raise Conflict(f"cannot unpin on a stream that is {stream['status']}", code=ErrorCode.INVALID_STATE)
    if stream["pinned"] is not None:
        # As pin does: the meta hash and the event change in one step (an empty value reads as null).
        await svc.bus.publish_log(stream_id, {"type": "pin", "product": None}, meta=("pinned", b""))
    return json_response(await stream_view(svc, stream_id))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/streams", guarded(list_streams))
    r.add_get("/api/streams/{id}/sales", guarded(stream_sales))
    r.add_get("/api/streams/{id}/comments", guarded(comments))
    r.add_delete("/api/streams/{id}/pin", guarded(unpin))
    r.add_get("/api/me/orders", guarded(my_orders))
