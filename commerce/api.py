"""Commerce routes and background tasks (reserve batcher, bid batcher, stock notices, sweeper, order
writer)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import web

from commerce import auctions, catalog, groupbuy_api, orders, sales
from commerce.auctions import AUCTIONS, Auctions
from commerce.group_money import GroupSweeper
from commerce.orders import COMMERCE, Commerce
from commerce.payments import load_provider
from commerce.settlement import Reconciler
from commerce.sweeper import Sweeper
from commerce.writer import OrderWriter
from livesale.auth import require_role
from livesale.bus import meta_key
from livesale.codes import ErrorCode
from livesale.errors import Conflict, Forbidden, NotFound
from livesale.services import SERVICES, Services
from livesale.web import current_user, guarded, json_response, parse_json_object, read_json


async def _stream_owner(svc: Services, request: web.Request, stream_id: str) -> dict[str, Any]:
    user = current_user(request)
    require_role(user, "host")
    meta = await svc.redis.hmget(meta_key(stream_id), "host", "status")  # type: ignore[misc]
    if meta[0] is None:
        raise NotFound(f"no stream {stream_id!r}")
    if user.role != "admin" and meta[0].decode() != user.id:
        raise Forbidden("only the stream's host may open sales on it")
    return {"host": meta[0].decode(), "status": meta[1].decode()}


async def _new_on_stream(request: web.Request, validate: Callable[[dict[str, Any]], dict[str, Any]]
                         ) -> tuple[Services, str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The checks before a sale or an auction is opened on a stream, in order: its host, the body,
    a stream that has not ended, the product. Returns (svc, stream id, stream, spec, product)."""
    svc = request.app[SERVICES]
    stream_id = request.match_info["id"]
    stream = await _stream_owner(svc, request, stream_id)
    spec = validate(await read_json(request))
    if stream["status"] == "ended":
        raise Conflict("the stream has ended", code=ErrorCode.INVALID_STATE)
    return svc, stream_id, stream, spec, await catalog.get_product(svc, spec["sku"])


async def create_sale(request: web.Request) -> web.Response:
    svc, stream_id, _, spec, product = await _new_on_stream(request, sales.validate_sale)
    return json_response(await sales.create_sale(svc, stream_id, spec, product), 201)


async def _sale_owner(request: web.Request) -> tuple[Services, str]:
    svc = request.app[SERVICES]
    sale = await sales.get_sale(svc, request.match_info["id"])
    await _stream_owner(svc, request, sale["stream_id"])
    return svc, sale["id"]


async def start_sale(request: web.Request) -> web.Response:
    svc, sale_id = await _sale_owner(request)
    return json_response(await sales.transition(svc, sale_id, "start"))


async def end_sale(request: web.Request) -> web.Response:
    svc, sale_id = await _sale_owner(request)
    return json_response(await sales.transition(svc, sale_id, "end"))


async def get_sale(request: web.Request) -> web.Response:
    return json_response(await sales.get_sale(request.app[SERVICES], request.match_info["id"]))


async def create_auction(request: web.Request) -> web.Response:
    _, stream_id, stream, spec, product = await _new_on_stream(request, auctions.validate_auction)
    return json_response(await request.app[AUCTIONS].create(stream_id, stream["host"], spec, product), 201)


async def start_auction(request: web.Request) -> web.Response:
    svc, auc = request.app[SERVICES], request.app[AUCTIONS]
    info = await auc.info(request.match_info["id"])
    stream = await _stream_owner(svc, request, info.stream)
    if stream["status"] == "ended":
        raise Conflict("the stream has ended", code=ErrorCode.INVALID_STATE)
    return json_response(await auc.start(info.id))


async def get_auction(request: web.Request) -> web.Response:
    return json_response(await request.app[AUCTIONS].view(request.match_info["id"]))


async def bid(request: web.Request) -> web.Response:
    """POST /api/auctions/{id}/bids through aiohttp: checks in the order of docs/auctions.md, then one
    bid.lua step. The route normally runs on `fast_bid` (livesale.fasthttp); aiohttp serves the requests
    outside the fast path's subset, and all of them with LIVESALE_FAST_PATH=0. Both answer alike."""
    svc = request.app[SERVICES]
    user = orders.buyer(svc, request.headers.get("Authorization"))
    key = orders.idempotency_key(request.headers.get("Idempotency-Key"))
    amount = auctions.max_cents(await read_json(request))
    status, body = await request.app[AUCTIONS].bid(request.match_info["id"], user.id, key, amount)
    return json_response(body, status)


def fast_bid(app: web.Application, auction_id: str, authorization: str | None, key: str | None,
             body: bytes, reply: Callable[[tuple[int, bytes] | BaseException], None]) -> None:
    """The bid route on livesale.fasthttp: the checks of `bid`, made at once (a refusal raises), then
    the bid, whose outcome is answered through `reply` straight from the bid batch's result loop."""
    user = orders.buyer(app[SERVICES], authorization)
    key = orders.idempotency_key(key)
    amount = auctions.max_cents(parse_json_object(body))
    auc = app[AUCTIONS]
    info = auc.cached(auction_id)
    if info is None:  # this process' first bid on the auction: look it up first
        task = asyncio.ensure_future(_bid_encoded(auc, auction_id, user.id, key, amount))
        task.add_done_callback(functools.partial(orders.reply_from, reply))
        return
    auc.submit(info, user.id, key, amount, functools.partial(_reply_from_script, reply))


async def _bid_encoded(auc: Auctions, auction_id: str, user: str, key: str, amount: int) -> tuple[int, bytes]:
    status, body = await auc.bid(auction_id, user, key, amount)
    return status, orjson.dumps(body)


def _reply_from_script(reply: Callable[[tuple[int, bytes] | BaseException], None], r: Any) -> None:
    if isinstance(r, BaseException):
        reply(r)
        return
    try:
        status, body = auctions.answer(r)
    except Exception as err:  # noqa: BLE001 - a refusal, or a reply we cannot read: the bidder waits on `reply`
        reply(err)
    else:
        reply((status, orjson.dumps(body)))


async def create_groupbuy(request: web.Request) -> web.Response:
    stream = await _stream_owner(request.app[SERVICES], request, request.match_info["id"])
    return await groupbuy_api.create_groupbuy(request, stream)


async def end_groupbuy(request: web.Request) -> web.Response:
    return await groupbuy_api.end_groupbuy(request, _stream_owner)


async def _background(app: web.Application) -> AsyncIterator[None]:
    svc = app[SERVICES]
    com = Commerce(svc, load_provider(svc.settings.payment_provider, svc.redis))
    app[COMMERCE] = com
    auc = app[AUCTIONS] = Auctions(svc)
    com.stock.start()
    await com.reserver.warm()
    sweeper = Sweeper(svc, com.stock.note, svc.settings.sweep_interval_s, auctions=auc.sweep)
    writer = OrderWriter.from_settings(svc.redis, svc.db, svc.settings)
    writer.busy = com.reserver.taking_orders
    reconciler = Reconciler(svc, com.provider, svc.settings.settle_grace_s, svc.settings.settle_interval_s)
    tasks = [asyncio.create_task(sweeper.run(), name="sweeper"),
             asyncio.create_task(reconciler.run(), name="reconciler"),
             asyncio.create_task(GroupSweeper(svc, com.provider, svc.settings.sweep_interval_s).run(),
                                 name="group_sweeper")]
    if svc.settings.run_writer:
        tasks.append(asyncio.create_task(writer.run(), name="writer"))
    yield
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await com.reserver.close()
    await auc.close_batcher()
    await com.stock.stop()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_background)
    r = app.router
    r.add_post("/api/products", guarded(catalog.create_product))
    r.add_get("/api/products/{sku}", guarded(catalog.get_product_handler))
    r.add_post("/api/streams/{id}/sales", guarded(create_sale))
    r.add_post("/api/sales/{id}/orders", guarded(orders.reserve))  # first: the router tries /api/sales/* in order
    r.add_get("/api/sales/{id}", guarded(get_sale))
    r.add_post("/api/sales/{id}/start", guarded(start_sale))
    r.add_post("/api/sales/{id}/end", guarded(end_sale))
    r.add_get("/api/orders/{id}", guarded(orders.get_order))
    r.add_post("/api/orders/{id}/pay", guarded(orders.pay))
    r.add_post("/api/orders/{id}/cancel", guarded(orders.cancel))
    r.add_post("/api/streams/{id}/auctions", guarded(create_auction))
    r.add_post("/api/auctions/{id}/bids", guarded(bid))
    r.add_post("/api/auctions/{id}/start", guarded(start_auction))
    r.add_get("/api/auctions/{id}", guarded(get_auction))
    r.add_post("/api/streams/{id}/groupbuys", guarded(create_groupbuy))
    r.add_get("/api/groupbuys/{id}", guarded(groupbuy_api.get_groupbuy))
    r.add_post("/api/groupbuys/{id}/end", guarded(end_groupbuy))
    r.add_post("/api/groupbuys/{id}/groups", guarded(groupbuy_api.open_group))
    r.add_get("/api/groups/{gid}", guarded(groupbuy_api.get_group))
    r.add_post("/api/groups/{gid}/members", guarded(groupbuy_api.join_group))
