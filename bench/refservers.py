"""The two reference servers of bench/inventory.py, on the same route, headers and body as ours.

- `ceiling`: a do-nothing aiohttp handler. It reads the body and answers a constant 201 JSON: what
  aiohttp (with uvloop, no access log, like ours) costs per request, the HTTP ceiling.
- `plain`: what most teams write. Per request: PyJWT decode of the bearer token, `request.json()`,
  one EVALSHA of commerce's own reserve script for this one buyer through redis-py (hiredis), and
  `web.json_response`. It answers with the same statuses as ours (201 / 200 / 409 / 422 / 401), so the
  outcome counts of the two runs compare one to one.

- `plain-bid` (bench/auction.py): the same for auction bids: PyJWT, `request.json()`, one EVALSHA of
  commerce's own bid.lua for this one bid, `web.json_response`, with our statuses (201/200/409/422).

Run: `python bench/refservers.py ceiling|plain|plain-bid --port P [--redis URL --secret S]`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import jwt
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from commerce import auctions, inventory, keys
from livesale.bus import channel, log_key, seq_key

_CONSTANT = b'{"id":"sa000000000000.0000000000000000","status":"reserved","quantity":1,"amount_cents":1000}'


async def ceiling_reserve(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_CONSTANT, status=201, content_type="application/json")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _read(request: web.Request, secret: str) -> tuple[Any, str, Any]:
    """What every plain handler does first: PyJWT, the key, `request.json()`; (an error answer, "", None)
    when the token or key is missing."""
    auth = request.headers.get("Authorization", "")
    try:
        claims = jwt.decode(auth.removeprefix("Bearer "), secret, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        return web.json_response({"error": "unauthorized"}, status=401), "", None
    key = request.headers.get("Idempotency-Key")
    if not key:
        return web.json_response({"error": "missing_idempotency_key"}, status=422), "", None
    return claims, key, await request.json()


def plain_app(redis_url: str, secret: str) -> web.Application:
    redis = aioredis.Redis.from_url(redis_url, max_connections=200)
    prices: dict[str, int] = {}

    async def reserve(request: web.Request) -> web.Response:
        claims, key, body = await _read(request, secret)
        if isinstance(claims, web.Response):
            return claims
        qty = body.get("quantity")
        if type(qty) is not int or not 1 <= qty <= 100:
            return web.json_response({"error": "invalid_quantity"}, status=422)
        sale_id = request.match_info["id"]
        if sale_id not in prices:
            prices[sale_id] = int(await redis.hget(keys.sale(sale_id), "price_cents") or 0)  # type: ignore[misc]
        oid = inventory.new_order_id(sale_id)
        res: Any = await inventory.RESERVE(redis, keys.sale_keys(sale_id), [1, claims["sub"], key, qty, oid])
        r = res[2]
        code = int(r[0])
        if code in (inventory.RESERVED, inventory.DUPLICATE):
            order = {"id": r[1].decode(), "status": r[3].decode(), "quantity": int(r[2]),
                     "amount_cents": int(r[2]) * prices[sale_id], "expires_ms": int(r[4])}
            return web.json_response(order, status=201 if code == inventory.RESERVED else 200)
        if code == inventory.IDEM_CONFLICT:
            return web.json_response({"error": "idempotency_conflict"}, status=422)
        return web.json_response({"error": inventory.OUTCOME[code], "available": int(res[0])}, status=409)

    app = web.Application()
    app.router.add_post("/api/sales/{id}/orders", reserve)
    return app


def plain_bid_app(redis_url: str, secret: str) -> web.Application:
    redis = aioredis.Redis.from_url(redis_url, max_connections=200)
    streams: dict[str, str] = {}

    async def bid(request: web.Request) -> web.Response:
        claims, key, body = await _read(request, secret)
        if isinstance(claims, web.Response):
            return claims
        amount = body.get("max_cents")
        if type(amount) is not int or not 1 <= amount <= 10**10:
            return web.json_response({"error": "invalid_amount"}, status=422)
        aid = request.match_info["id"]
        if aid not in streams:
            streams[aid] = (await redis.hget(keys.AUCTIONS, aid) or b"").decode()  # type: ignore[misc]
        st = streams[aid]
        res: Any = await auctions.BID(
            redis, [keys.auction(st, aid), keys.auction_idem(st, aid), seq_key(st), log_key(st)],
            ["", channel(st), 1000, aid, 1, claims["sub"], key, amount])
        try:
            status, answer = auctions.answer(res[0])
        except Exception as exc:  # noqa: BLE001 - a refusal, answered as ours does
            err = getattr(exc, "body", lambda: {"error": "internal"})()
            return web.json_response(err, status=getattr(exc, "status", 500))
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_post("/api/auctions/{id}/bids", bid)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["ceiling", "plain", "plain-bid"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis", default="")
    p.add_argument("--secret", default="")
    args = p.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.kind == "ceiling":
        app = web.Application()
        app.router.add_post("/api/sales/{id}/orders", ceiling_reserve)
    elif args.kind == "plain-bid":
        app = plain_bid_app(args.redis, args.secret)
    else:
        app = plain_app(args.redis, args.secret)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, shutdown_timeout=1)


if __name__ == "__main__":
    main()
