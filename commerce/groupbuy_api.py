"""Group-buy routes (docs/groupbuy.md) and the group sweeper task."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from commerce import catalog, group_money
from commerce import groupbuys as gbm
from commerce.orders import COMMERCE, METHOD_RE, _buyer, _idempotency_key
from livesale.codes import ErrorCode
from livesale.errors import Conflict, NotFound, Unprocessable
from livesale.services import SERVICES
from livesale.web import json_response, read_json

REF_RE = re.compile(r"^[\x21-\x7e]{1,128}$")  # a user id, as tokens carry them


async def create_groupbuy(request: web.Request, stream: dict[str, Any]) -> web.Response:
    svc = request.app[SERVICES]
    spec = gbm.validate_groupbuy(await read_json(request))
    if stream["status"] == "ended":
        raise Conflict("the stream has ended", code=ErrorCode.INVALID_STATE)
    product = await catalog.get_product(svc, spec["sku"])
    return json_response(await gbm.create_groupbuy(svc, request.match_info["id"], spec, product), 201)


async def get_groupbuy(request: web.Request) -> web.Response:
    return json_response(await gbm.get_groupbuy(request.app[SERVICES], request.match_info["id"]))


async def get_group(request: web.Request) -> web.Response:
    return json_response(await gbm.get_group(request.app[SERVICES], request.match_info["gid"]))


def _join_body(body: dict[str, Any], user: str) -> tuple[str, str | None]:
    method = body.get("payment_method")
    if not isinstance(method, str) or not method:
        raise Unprocessable("payment_method is required, e.g. pm_card_visa")
    if not METHOD_RE.fullmatch(method):
        raise Unprocessable(f"unknown payment_method {method[:100]!r}")
    ref = body.get("ref")
    if ref is not None and (not isinstance(ref, str) or not REF_RE.match(ref)):
        raise Unprocessable("ref must be the sharer's user id (1-128 visible ASCII characters)")
    return method, (None if ref == user else ref)  # sharing with yourself refers no one


async def _join(request: web.Request, gb_id: str, gid: str) -> web.Response:
    svc = request.app[SERVICES]
    user = _buyer(svc, request.headers.get("Authorization"))
    key = _idempotency_key(request.headers.get("Idempotency-Key"))
    method, ref = _join_body(await read_json(request), user.id)
    status, body = await group_money.join(svc, request.app[COMMERCE].provider, gb_id, gid, user.id, key, method, ref)
    return json_response(body, status)


async def open_group(request: web.Request) -> web.Response:
    gb_id = request.match_info["id"]
    if not gbm.GROUPBUY_ID_RE.match(gb_id):
        raise NotFound(f"no group-buy {gb_id!r}")
    return await _join(request, gb_id, "")


async def join_group(request: web.Request) -> web.Response:
    gid = request.match_info["gid"]
    if not gbm.GROUP_ID_RE.match(gid):
        raise NotFound(f"no group {gid!r}")
    return await _join(request, gid[:14], gid)


async def end_groupbuy(request: web.Request, owner_check: Any) -> web.Response:
    svc = request.app[SERVICES]
    gb = await gbm.get_groupbuy(svc, request.match_info["id"])
    await owner_check(svc, request, gb["stream_id"])
    if not await group_money.end_groupbuy(svc, request.app[COMMERCE].provider, gb["id"]):
        raise Conflict("the group-buy has ended already", code=ErrorCode.INVALID_STATE)
    return json_response(await gbm.get_groupbuy(svc, gb["id"]))
