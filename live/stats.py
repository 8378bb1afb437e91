"""`GET /api/streams/{id}/stats`: the host's live figures of a stream, with the definitions of
docs/api.md "Stream analytics".

Two sources, both global across processes and both off the hot paths:
- the audience (viewers, views, unique viewers, watch time, comments, likes) is what every process's
  hub adds to Redis once per viewers tick (realtime/analytics.py);
- the orders of sales and auction wins are folded, when stats are read, from each one's order-event
  stream, which the inventory scripts append to in the same atomic step as every reserve, pay, cancel
  and expiry (stats_fold.lua): the figures are the orders' own history, and a purchase does no extra
  work; a group-buy's are read from its own records (commerce.groupbuys.figures).
While the stream is live (or a hold can still be paid, an auction still close, a group still fill)
the figures are provisional; after that they are computed once more and kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from aiohttp import web

from commerce import groupbuys
from commerce import keys as commerce_keys
from commerce.schema import auctions as auctions_table
from commerce.schema import groupbuys as groupbuys_table
from commerce.schema import orders as orders_table
from commerce.schema import sales as sales_table
from live import keys
from livesale.errors import Forbidden, NotFound
from livesale.redis_client import LuaScript, redis_errors
from livesale.services import SERVICES, Services
from livesale.times import iso_ms
from livesale.web import current_user, guarded, json_bytes_response
from realtime import state
from realtime.analytics import minute_of

_FOLD = LuaScript(Path(__file__).with_name("stats_fold.lua"))
FOLD_BATCH = 5000  # events per fold call: bounds how long one call holds Redis
# After the end, every process's hub has flushed its last tick (viewers_interval_s) well within this.
SETTLE_MS = 3000


@dataclass
class SaleFigures:
    kind: str
    id: str
    sku: str
    orders: int = 0
    paid_orders: int = 0
    units_sold: int = 0
    gmv_cents: int = 0
    refunded_cents: int = 0  # a paid sale or auction order is never refunded; group-buys' differences (docs/api.md)
    held: int = 0  # units still on hold: they may yet be paid
    buyers: set[str] = field(default_factory=set)
    minutes: dict[str, int] = field(default_factory=dict)  # "<minute>:o" orders, "<minute>:g" GMV

    def product(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "sku": self.sku, "orders": self.orders,
                "paid_orders": self.paid_orders, "units_sold": self.units_sold, "gmv_cents": self.gmv_cents}


def compose(aud: dict[str, Any], sales: list[SaleFigures], started_ms: int | None, ended_ms: int | None,
            now_ms: int) -> dict[str, Any]:
    """Every figure from the audience and order figures (pure; the definitions of docs/api.md)."""
    unique = int(aud["unique_viewers"])
    views = int(aud["views"])
    length_s = ((ended_ms or now_ms) - started_ms) / 1000 if started_ms else 0.0
    buyers: set[str] = set().union(*(s.buyers for s in sales))
    gmv = sum(s.gmv_cents for s in sales)
    minutes = dict(aud["minutes"])
    for s in sales:
        for k, v in s.minutes.items():
            minutes[k] = minutes.get(k, 0) + v
    series = []
    if started_ms:
        for m in range(minute_of(started_ms), minute_of(ended_ms or now_ms) + 1):
            series.append({
                "minute": iso_ms(m * 60_000), "viewers_max": minutes.get(f"{m}:v", 0),
                "comments": minutes.get(f"{m}:c", 0), "likes": minutes.get(f"{m}:l", 0),
                "orders": minutes.get(f"{m}:o", 0), "gmv_cents": minutes.get(f"{m}:g", 0),
            })
    return {
        "viewers_now": aud["viewers_now"],
        "viewers_peak": max(aud["viewers_peak"], aud["viewers_now"]),
        "views": views,
        "unique_viewers": unique,
        "avg_watch_s": round(min(aud["watch_ms"] / 1000 / unique, length_s), 1) if unique else 0.0,
        "comments": aud["comments"],
        "likes": aud["likes"],
        "orders": sum(s.orders for s in sales),
        "paid_orders": sum(s.paid_orders for s in sales),
        "units_sold": sum(s.units_sold for s in sales),
        "buyers": len(buyers),
        "gmv_cents": gmv,
        "refunded_cents": sum(s.refunded_cents for s in sales),
        "conversion": round(len(buyers) / unique, 4) if unique else 0,
        "gpm_cents": gmv * 1000 // views if views else 0,
        "products": [s.product() for s in sales],
        "series": series,
    }


async def _fold(svc: Services, sale_id: str) -> bool:
    """Fold the sale's new order events; False when its events are gone from Redis unfolded."""
    fold_keys = [commerce_keys.events(sale_id), keys.sale_figures(sale_id), keys.sale_buyers(sale_id),
                 keys.sale_minutes(sale_id)]
    while int(await _FOLD(svc.redis, fold_keys, [FOLD_BATCH])) == FOLD_BATCH:  # type: ignore[call-overload]
        pass
    if await svc.redis.hexists(keys.sale_figures(sale_id), "cursor"):  # type: ignore[misc]
        return True
    return bool(await svc.redis.exists(commerce_keys.events(sale_id)))


async def _sale_figures(svc: Services, sale_id: str, sku: str) -> SaleFigures:
    figs = SaleFigures("sale", sale_id, sku)
    if not await _fold(svc, sale_id):
        # A sale whose events left Redis (retention) before any stats were read: SQL has every order.
        return await _sql_sale_figures(svc, figs)
    async with svc.redis.pipeline(transaction=False) as p:
        p.hgetall(keys.sale_figures(sale_id))
        p.smembers(keys.sale_buyers(sale_id))
        p.hgetall(keys.sale_minutes(sale_id))
        p.hget(commerce_keys.sale(sale_id), "held")
        h, buyers, minutes, held = await p.execute()
    f = {k.decode(): v for k, v in h.items()}
    figs.orders, figs.paid_orders = int(f.get("orders", 0)), int(f.get("paid_orders", 0))
    figs.units_sold, figs.gmv_cents = int(f.get("units_sold", 0)), int(f.get("gmv_cents", 0))
    figs.held = int(held or 0)
    figs.buyers = {b.decode() for b in buyers}
    figs.minutes = {k.decode(): int(v) for k, v in minutes.items()}
    return figs


async def _auction_figures(svc: Services, auction_id: str, sku: str, status: str) -> SaleFigures:
    """An auction as a product: its winner's order is a sale-shaped order on `{sale:<auction id>}` keys
    (docs/auctions.md), folded like a sale's. An auction not yet closed may still make an order."""
    figs = await _sale_figures(svc, auction_id, sku)
    figs.kind = "auction"
    if status in ("scheduled", "active"):
        figs.held += 1
    return figs


async def _groupbuy_figures(svc: Services, gb_id: str, sku: str) -> tuple[SaleFigures, Counter[str]]:
    """A group-buy as a product of the stats (docs/groupbuy.md), and its referrals per sharer."""
    g = await groupbuys.figures(svc, gb_id)
    figs = SaleFigures("groupbuy", gb_id, sku, orders=g.orders, paid_orders=g.paid_orders,
                       units_sold=g.paid_orders, gmv_cents=g.gmv_cents, refunded_cents=g.refunded_cents,
                       held=g.in_groups, buyers=g.buyers)
    for ms in g.joined_ms:
        key = f"{minute_of(ms)}:o"
        figs.minutes[key] = figs.minutes.get(key, 0) + 1
    for ms, cents in g.paid_ms:
        key = f"{minute_of(ms)}:g"
        figs.minutes[key] = figs.minutes.get(key, 0) + cents
    return figs, g.referrals


async def _sql_sale_figures(svc: Services, figs: SaleFigures) -> SaleFigures:
    o = orders_table.c
    async with svc.db.connect() as conn:
        rows = (await conn.execute(sa.select(o.user_id, o.quantity, o.amount_cents, o.status, o.created_at,
                                             o.updated_at).where(o.sale_id == figs.id))).all()
    for r in rows:
        figs.orders += 1
        key = f"{minute_of(_ms(r.created_at))}:o"
        figs.minutes[key] = figs.minutes.get(key, 0) + 1
        if r.status == "paid":  # a paid order's last transition (updated_at) is its payment
            figs.paid_orders += 1
            figs.units_sold += r.quantity
            figs.gmv_cents += r.amount_cents
            figs.buyers.add(r.user_id)
            key = f"{minute_of(_ms(r.updated_at))}:g"
            figs.minutes[key] = figs.minutes.get(key, 0) + r.amount_cents
    return figs


def _ms(dt: Any) -> int:
    return int(dt.replace(tzinfo=dt.tzinfo or UTC).timestamp() * 1000)


def _epoch_ms(raw: bytes | None) -> int | None:
    return round(float(raw) * 1000) if raw else None


async def stream_stats(svc: Services, stream_id: str) -> dict[str, Any]:
    """The stats object of a known stream (see the module docstring)."""
    status, started, ended = await svc.redis.hmget(  # type: ignore[misc]
        keys.meta(stream_id), "status", "started_at", "ended_at")
    started_ms, ended_ms = _epoch_ms(started), _epoch_ms(ended)
    async with svc.db.connect() as conn:
        sale_rows = (await conn.execute(sa.select(sales_table.c.id, sales_table.c.sku)
                                        .where(sales_table.c.stream_id == stream_id)
                                        .order_by(sales_table.c.created_at, sales_table.c.id))).all()
        auction_rows = (await conn.execute(sa.select(auctions_table.c.id, auctions_table.c.sku, auctions_table.c.status)
                                           .where(auctions_table.c.stream_id == stream_id)
                                           .order_by(auctions_table.c.created_at, auctions_table.c.id))).all()
        gb_rows = (await conn.execute(sa.select(groupbuys_table.c.id, groupbuys_table.c.sku)
                                      .where(groupbuys_table.c.stream_id == stream_id)
                                      .order_by(groupbuys_table.c.created_at, groupbuys_table.c.id))).all()
    aud, sales, auctions, gbs = await asyncio.gather(
        state.audience(svc.redis, stream_id),
        asyncio.gather(*(_sale_figures(svc, r.id, r.sku) for r in sale_rows)),
        asyncio.gather(*(_auction_figures(svc, r.id, r.sku, r.status) for r in auction_rows)),
        asyncio.gather(*(_groupbuy_figures(svc, r.id, r.sku) for r in gb_rows)))
    sales = [*sales, *auctions, *(figs for figs, _ in gbs)]
    referrals: Counter[str] = Counter()
    for _, refs in gbs:
        referrals.update(refs)
    now = int(time.time() * 1000)
    out = {"stream_id": stream_id, "status": status.decode(), "provisional": True,
           "started_at": iso_ms(started_ms), "ended_at": iso_ms(ended_ms)}
    out.update(compose(aud, list(sales), started_ms, ended_ms, now))
    out["referrals"] = dict(referrals.most_common())  # group-buy members per sharer (docs/groupbuy.md)
    out["updated_at"] = iso_ms(now)
    settled = ended_ms is not None and now >= ended_ms + SETTLE_MS and not any(s.held for s in sales)
    out["provisional"] = not settled
    return out


async def get_stats(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    user = current_user(request)
    stream_id = request.match_info["id"]
    with redis_errors():
        host = await svc.redis.hget(keys.meta(stream_id), "host") if len(stream_id) <= 64 else None  # type: ignore[misc]
        if host is None:
            raise NotFound(f"no stream {stream_id!r}")
        if not (user.role == "admin" or (user.role == "host" and host.decode() == user.id)):
            raise Forbidden("only the stream's host (or an admin) may read its stats")
        final = await svc.redis.get(keys.final_stats(stream_id))
        if final is not None:
            return json_bytes_response(_with_viewers_now(final, await state.audience(svc.redis, stream_id)))
        stats = await stream_stats(svc, stream_id)
        body = orjson.dumps(stats)
        if not stats["provisional"]:
            # Final: nothing can move these figures any more (the stream ended, its ticks are in, no
            # hold can still be paid). Kept, so they stay exactly these; the first writer wins.
            await svc.redis.set(keys.final_stats(stream_id), body, nx=True)
            body = await svc.redis.get(keys.final_stats(stream_id)) or body
    return json_bytes_response(body)


def _with_viewers_now(final: bytes, aud: dict[str, Any]) -> bytes:
    """Final figures are kept as they were, but for viewers_now: who is connected now (to the ended
    stream's page) is a fact of now."""
    stats = orjson.loads(final)
    stats["viewers_now"] = aud["viewers_now"]
    return orjson.dumps(stats)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/streams/{id}/stats", guarded(get_stats))
