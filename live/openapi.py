"""`GET /api/openapi.json`: the HTTP API as OpenAPI 3.1 (docs/api.md is the prose; this is the machine
form). Kept by hand in one place; tests/test_openapi.py fails when a route is registered that this does
not describe, or this describes one that is not registered, and runs schemathesis against a real server
to check that every answer matches it."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from livesale.codes import ErrorCode
from livesale.web import guarded, json_bytes_response

_ERROR = {"$ref": "#/components/schemas/Error"}
_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_ORDER_STATUS = {"enum": ["reserved", "paid", "cancelled", "expired", "joined", "refunded"]}
_TITLE = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S", "description": "not only spaces"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


# Why each status is answered, by status; an operation lists the ones it can give.
_WHY = {
    400: "the body is not JSON or not an object (`bad_request`)",
    401: "a token is missing, forged or expired (`unauthorized`, docs/auth.md)",
    402: "the card was declined (`card_declined`); the hold stays",
    403: "the token's role or owner may not do this (`forbidden`)",
    404: "no such resource (`not_found`; also another user's order)",
    409: "the resource's state forbids it (`invalid_state`, `conflict`, ...)",
    413: "the body is over 64 KiB (`payload_too_large`)",
    415: "the body's Content-Type is not the one this route takes (`unsupported_media_type`)",
    422: "a field, header or query parameter is invalid (`validation_error`, ...)",
    503: "Redis or SQL cannot serve (`unavailable`, with `Retry-After`)",
}


def _errors(*statuses: int, why: dict[int, str] | None = None) -> dict[str, Any]:
    out = {}
    for status in (*statuses, 503):
        out[str(status)] = {"description": (why or {}).get(status, _WHY[status]), **_json(_ERROR)}
    return out


def _op(summary: str, responses: dict[str, Any], *, role: str | None = None, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if tags:
        op["tags"] = list(tags)
    if role is not None:
        op["security"] = [{"bearer": []}]
        op["x-role"] = role  # the role whose token the operation takes (admin may do anything)
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size")
_CURSOR = _query("cursor", {"type": "string", "minLength": 1, "maxLength": 512},
                 "the `next` of the previous page (opaque)")
_PAGE = {"next": {"type": ["string", "null"]}}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string", "enum": sorted(c.value for c in ErrorCode)}, "message": _STR},
                  {"available": _INT, "order": _STR, "status": _STR}),
    "Product": _obj({"id": _STR, "sku": _STR, "title": _STR, "price_cents": _INT, "currency": _STR,
                     "image_url": {"type": ["string", "null"]}}),
    "Sale": _obj({
        "id": _STR, "stream_id": _STR, "sku": _STR, "title": _STR, "price_cents": _INT, "currency": _STR,
        "status": {"enum": ["scheduled", "active", "ended"]}, "stock": _INT, "available": _INT,
        "held": _INT, "sold": _INT, "per_user_limit": _INT, "duration_s": _INT, "hold_s": _INT,
        "starts_at": _TIME_OR_NULL, "ends_at": _TIME_OR_NULL}),  # null until a scheduled sale has a start
    "StreamState": _obj({
        "id": _STR, "status": {"enum": ["scheduled", "live", "ended"]}, "host": _STR, "title": _STR,
        "created_at": _TIME_OR_NULL, "started_at": _TIME_OR_NULL, "ended_at": _TIME_OR_NULL,
        "pinned": {"oneOf": [_ref("Product"), {"type": "null"}]}, "video": {"enum": ["live", "none"]}}),
    "Stream": {"allOf": [_ref("StreamState"), _obj({
        "viewers": _INT, "likes": _INT, "sales": {"type": "array", "items": _ref("Sale")}})]},
    # A flash sale's order names its `sale`, an auction winner's its `auction`, a group-buy member's its
    # `groupbuy` and `group` (docs/auctions.md, docs/groupbuy.md).
    "Order": _obj({"id": _STR, "status": _ORDER_STATUS, "quantity": _INT, "amount_cents": _INT,
                   "expires_at": _TIME_OR_NULL, "created_at": _TIME},
                  {"sale": _STR, "auction": _STR, "groupbuy": _STR, "group": _STR, "kind": _STR,
                   "charged_cents": _INT, "refunded_cents": _INT, "refund_pending": {"type": "boolean"},
                   "currency": _STR, "ref": {"type": ["string", "null"]}}),
    "MyOrder": _obj({"kind": {"enum": ["sale", "auction", "group"]}, "id": _STR, "stream_id": _STR, "sku": _STR,
                     "status": _ORDER_STATUS, "quantity": _INT, "amount_cents": _INT, "currency": _STR,
                     "created_at": _TIME},
                    {"expires_at": _TIME_OR_NULL, "sale": _STR, "auction": _STR, "groupbuy": _STR, "group": _STR,
                     "charged_cents": _INT, "refunded_cents": _INT}),
    "Auction": _obj({
        "id": _STR, "stream_id": _STR, "sku": _STR, "title": _STR, "currency": _STR,
        "status": {"enum": ["scheduled", "active", "closing", "sold", "unsold"]}, "starting_bid_cents": _INT,
        "price_cents": _INT, "min_bid_cents": {"type": ["integer", "null"]}, "leader": {"type": ["string", "null"]},
        "bids": _INT, "started_at": _TIME_OR_NULL, "ends_at": _TIME_OR_NULL, "duration_s": _INT,  # null until started "extend_window_s": _INT,
        "extend_to_s": _INT, "sudden_death": {"type": "boolean"}, "reserve_met": {"type": "boolean"},
        "hold_s": _INT, "created_at": _TIME},
        {"winner": _STR, "order": {"type": ["string", "null"]},
         "reserve_cents": {"type": "integer", "description": "only in the host's create and start answers"}}),
    "GroupBuy": _obj({
        "id": _STR, "stream_id": _STR, "sku": _STR, "title": _STR, "currency": _STR,
        "status": {"enum": ["active", "ended"]}, "stock": _INT, "available": _INT, "in_groups": _INT, "sold": _INT,
        "tiers": {"type": "array", "items": _obj({"size": _INT, "price_cents": _INT})}, "group_ttl_s": _INT,
        "created_at": _TIME}),
    "Group": _obj({
        "id": _STR, "groupbuy": _STR, "leader": _STR, "members": _INT, "size": _INT,
        "status": {"enum": ["open", "succeeded", "failed"]}, "price_cents": _INT,
        "next_tier": {"oneOf": [_obj({"size": _INT, "price_cents": _INT}), {"type": "null"}]},
        "expires_at": _TIME, "share_path": _STR}),
    "Comment": _obj({"type": {"const": "comment"}, "id": _STR, "user": _STR, "text": _STR, "ts": _INT,
                     "seq": _INT}),
    "Stats": _obj({k: v for k, v in {
        "stream_id": _STR, "status": _STR, "started_at": _TIME_OR_NULL, "ended_at": _TIME_OR_NULL,
        "provisional": {"type": "boolean"}, "viewers_now": _INT, "viewers_peak": _INT, "views": _INT,
        "unique_viewers": _INT, "avg_watch_s": {"type": "number"}, "comments": _INT, "likes": _INT,
        "orders": _INT, "paid_orders": _INT, "units_sold": _INT, "buyers": _INT, "gmv_cents": _INT,
        "refunded_cents": _INT, "conversion": {"type": "number"}, "gpm_cents": _INT,
        "products": {"type": "array", "items": {"type": "object"}},
        "series": {"type": "array", "items": {"type": "object"}}, "updated_at": _TIME}.items()}),
}

_STREAM = _json(_ref("Stream"))
_SALE = _json(_ref("Sale"))
_ORDER = _json(_ref("Order"))
_SDP = {"content": {"application/sdp": {"schema": _STR}}}
_LOCATION = {"Location": {"schema": _STR, "description": "the session's URL, for DELETE"}}
_PREFLIGHT = {"204": {"description": "CORS preflight: `Accept-Post: application/sdp`, `Location` exposed"}}

_SALE_BODY = _obj({
    "sku": {"type": "string", "minLength": 1}, "price_cents": {"type": "integer", "minimum": 0, "maximum": 10**10},
    "stock": {"type": "integer", "minimum": 1, "maximum": 10**7},
    "per_user_limit": {"type": "integer", "minimum": 1, "maximum": 100},
    "duration_s": {"type": "integer", "minimum": 1, "maximum": 604800},
    "hold_s": {"type": "integer", "minimum": 1, "maximum": 86400}},
    {"starts_at": {"type": ["string", "null"], "format": "date-time",
                   "description": "from 2000-01-01 to 2999-12-31; absent or null: start with POST .../start"}})

_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": True,
                "schema": {"type": "string", "pattern": "^[!-~]{1,200}$"},
                "description": "scoped to (sale, user): a retry with the same key answers the same order"}


_BID = _json(_obj({"status": {"enum": ["leading", "outbid"]}, "price_cents": _INT, "ends_at": _TIME}))
_JOINED = _json(_obj({"group": _STR, "member": _STR, "charged_cents": _INT, "status": {"const": "joined"}}))
_JOIN_BODY = _obj({"payment_method": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,100}$"}},
                  {"ref": {"type": ["string", "null"]}})
_JOIN_WHY = {402: "the card was declined (`card_declined`); nothing is held",
             409: "`group_full`, `group_closed`, `already_in_group`, `sold_out` or `groupbuy_not_active`",
             422: "`validation_error`, `missing_idempotency_key` or `idempotency_conflict`"}
_HTML = {"description": "an HTML page", "content": {"text/html": {"schema": _STR}}}
_HTML_404 = {"description": "no such stream: an HTML page saying so", "content": {"text/html": {"schema": _STR}}}


def _media(kind: str) -> dict[str, Any]:
    who = ("the stream's host token, or its stream key (`POST /api/streams/{id}/key`)" if kind == "whip"
           else "anonymous allowed")
    base = f"/{kind}/{{stream}}"
    post_errors = (_errors(400, 401, 403, 404, 409, 415, 422) if kind == "whip"
                   else _errors(400, 404, 409, 415, 422))
    if kind == "whep":
        post_errors["503"] = {"description": "`unavailable`, or `at_capacity` past the viewer cap (`Retry-After`)",
                              **_json(_ERROR)}
    post = _op(f"{kind.upper()}: an SDP offer in, the answer out ({who}; docs/media.md)",
               {"201": {"description": "the SDP answer", "headers": _LOCATION, **_SDP}, **post_errors},
               role="host" if kind == "whip" else None, tags=("media",))
    post["requestBody"] = {"required": True, **_SDP}
    delete = _op("end the session (the same credentials as the POST that made it)",
                 {"200": {"description": "the session ended"}, **_errors(401, 403, 404)}, tags=("media",))
    return {base: {"post": post, "options": _op("CORS preflight", _PREFLIGHT, tags=("media",))},
            base + "/{session}": {"delete": delete, "options": _op("CORS preflight", _PREFLIGHT, tags=("media",))}}


PATHS: dict[str, dict[str, Any]] = {
    "/api/openapi.json": {"get": _op("this document", {"200": _json({"type": "object"}) | {
        "description": "OpenAPI 3.1"}}, tags=("service",))},
    "/api/products": {"post": _op("create a product", {
        "201": {"description": "the product", **_json(_ref("Product"))},
        **_errors(400, 401, 403, 409, 413, 422)}, role="host", tags=("products",),
        body=_obj({"sku": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}, "title": _TITLE,
                   "price_cents": {"type": "integer", "minimum": 0, "maximum": 10**10}},
                  {"currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                   "image_url": {"type": ["string", "null"], "maxLength": 500}}))},
    "/api/products/{sku}": {"get": _op("a product (public)", {
        "200": {"description": "the product", **_json(_ref("Product"))}, **_errors(404)}, tags=("products",))},
    "/api/streams": {
        "post": _op("create a stream", {"201": {"description": "the stream", **_STREAM},
                                        **_errors(400, 401, 403, 413, 422)},
                    role="host", body=_obj({"title": _TITLE}),
                    tags=("streams",)),
        "get": _op("live and scheduled streams, or those of one status (public; newest first)", {
            "200": {"description": "a page", **_json(_obj({"streams": {"type": "array", "items": _ref("Stream")},
                                                            **_PAGE}))}, **_errors(422)},
            params=[_query("status", {"enum": ["live", "scheduled", "ended"]}, "only streams of this status"),
                    _LIMIT, _CURSOR], tags=("streams",))},
    "/api/streams/{id}": {"get": _op("a stream (public)", {"200": {"description": "the stream", **_STREAM},
                                                             **_errors(404)}, tags=("streams",))},
    "/api/streams/{id}/start": {"post": _op("go live", {"200": {"description": "the stream", **_STREAM},
                                                       **_errors(401, 403, 404, 409)}, role="host", tags=("streams",))},
    "/api/streams/{id}/end": {"post": _op("end the stream (and its sales)", {
        "200": {"description": "the stream", **_STREAM}, **_errors(401, 403, 404, 409)}, role="host",
        tags=("streams",))},
    "/api/streams/{id}/pin": {
        "post": _op("pin a product", {"200": {"description": "the stream", **_STREAM},
                                      **_errors(400, 401, 403, 404, 409, 413, 422)},
                    role="host", body=_obj({"sku": {"type": "string", "minLength": 1}}), tags=("streams",)),
        "delete": _op("unpin", {"200": {"description": "the stream, `pinned: null`", **_STREAM},
                                **_errors(401, 403, 404, 409)}, role="host", tags=("streams",))},
    "/api/streams/{id}/key": {"post": _op("a new stream key for WHIP (the earlier one stops working)", {
        "200": {"description": "the key", **_json(_obj({"stream_key": _STR, "whip_url": _STR}))},
        **_errors(401, 403, 404, 409)}, role="host", tags=("media",))},
    "/api/streams/{id}/sales": {
        "post": _op("open a flash sale", {"201": {"description": "the sale", **_SALE},
                                          **_errors(400, 401, 403, 404, 409, 413, 422)},
                    role="host", body=_SALE_BODY, tags=("sales",)),
        "get": _op("every sale, auction and group-buy of the stream, oldest first (public)", {
            "200": {"description": "the sales", **_json(_obj(
                {"sales": {"type": "array", "items": _ref("Sale")}},
                {"auctions": {"type": "array", "items": _ref("Auction")},
                 "groupbuys": {"type": "array", "items": _ref("GroupBuy")}}))},
            **_errors(404)}, tags=("sales",))},
    "/api/streams/{id}/comments": {"get": _op("comments, newest first (public)", {
        "200": {"description": "a page", **_json(_obj({"comments": {"type": "array", "items": _ref("Comment")}}))},
        **_errors(404, 422)}, params=[_query("before", {"type": "integer", "minimum": 1}, "only `seq` below this"),
                                      _LIMIT], tags=("realtime",))},
    "/api/streams/{id}/comments/{comment_id}": {"delete": _op("delete a comment (host of the stream, moderator)", {
        "200": {"description": "deleted", **_json(_obj({"id": _STR, "deleted": {"const": True}, "seq": _INT}))},
        **_errors(401, 403, 404)}, role="moderator", tags=("realtime",))},
    "/api/streams/{id}/mutes": {"post": _op("mute a user in the stream (host of the stream, moderator)", {
        "200": {"description": "muted", **_json(_obj({"user": _STR, "muted": {"const": True}, "until": _TIME_OR_NULL}))},
        **_errors(400, 401, 403, 404, 413, 422)}, role="moderator", tags=("realtime",),
        body=_obj({"user": {"type": "string", "minLength": 1, "maxLength": 128}},
                  {"duration_s": {"type": ["integer", "null"], "minimum": 1, "maximum": 30 * 86400,
                                  "description": "absent or null: until unmuted"}}))},
    "/api/streams/{id}/mutes/{user}": {"delete": _op("unmute", {
        "200": {"description": "unmuted", **_json(_obj({"user": _STR, "muted": {"const": False}}))},
        **_errors(401, 403, 404)}, role="moderator", tags=("realtime",))},
    "/api/streams/{id}/stats": {"get": _op("the stream's analytics (its host, admin; docs/api.md)", {
        "200": {"description": "the figures", **_json(_ref("Stats"))}, **_errors(401, 403, 404)},
        role="host", tags=("streams",))},
    "/api/sales/{id}": {"get": _op("a sale (public)", {"200": {"description": "the sale", **_SALE},
                                                        **_errors(404)}, tags=("sales",))},
    "/api/sales/{id}/start": {"post": _op("start a scheduled sale", {
        "200": {"description": "the sale", **_SALE}, **_errors(401, 403, 404, 409)}, role="host", tags=("sales",))},
    "/api/sales/{id}/end": {"post": _op("end a sale early", {
        "200": {"description": "the sale", **_SALE}, **_errors(401, 403, 404, 409)}, role="host", tags=("sales",))},
    "/api/sales/{id}/orders": {"post": _op("reserve units (held for `hold_s` until paid)", {
        "201": {"description": "a new order", **_ORDER},
        "200": {"description": "the order this Idempotency-Key made before", **_ORDER},
        **_errors(400, 401, 403, 404, 409, 413, 422, why={
            409: "`sold_out` (with `available`), `limit_reached` or `sale_not_active`",
            422: "`invalid_quantity`, `missing_idempotency_key`, `validation_error`, or `idempotency_conflict` "
                 "(with `order`)"})},
        role="viewer", body=_obj({"quantity": {"type": "integer", "minimum": 1, "maximum": 100}}),
        params=[_IDEMPOTENCY], tags=("orders",))},
    "/api/orders/{id}": {"get": _op("an order (its buyer, admin)", {
        "200": {"description": "the order", **_ORDER}, **_errors(401, 404)}, role="viewer", tags=("orders",))},
    "/api/orders/{id}/pay": {"post": _op("pay a reserved order", {
        "200": {"description": "the paid order", **_ORDER},
        **_errors(400, 401, 402, 404, 409, 413, 422, why={409: "`order_not_pending` (with `status`)"})},
        role="viewer", body=_obj({"payment_method": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,100}$"}}),
        tags=("orders",))},
    "/api/orders/{id}/cancel": {"post": _op("cancel a reserved order (units return)", {
        "200": {"description": "the cancelled order", **_ORDER},
        **_errors(401, 404, 409, why={409: "`order_not_pending` (with `status`)"})}, role="viewer",
        tags=("orders",))},
    "/api/me/orders": {"get": _op("the caller's orders, newest first", {
        "200": {"description": "a page", **_json(_obj({"orders": {"type": "array", "items": _ref("MyOrder")},
                                                        **_PAGE}))}, **_errors(401, 422)},
        role="viewer", params=[_LIMIT, _CURSOR], tags=("orders",))},
    "/api/streams/{id}/auctions": {"post": _op("open an auction (docs/auctions.md)", {
        "201": {"description": "the auction (`scheduled`, with `reserve_cents`)", **_json(_ref("Auction"))},
        **_errors(400, 401, 403, 404, 409, 413, 422)}, role="host", tags=("auctions",), body=_obj({
            "sku": {"type": "string", "minLength": 1},
            "starting_bid_cents": {"type": "integer", "minimum": 100, "maximum": 10**10},
            "duration_s": {"type": "integer", "minimum": 5, "maximum": 3600},
            "hold_s": {"type": "integer", "minimum": 1, "maximum": 86400}}, {
            "extend_window_s": {"type": "integer", "minimum": 0, "maximum": 3600},
            "extend_to_s": {"type": "integer", "minimum": 1, "maximum": 3600},
            "sudden_death": {"type": "boolean"},
            "reserve_cents": {"type": "integer", "minimum": 0, "maximum": 10**10}}))},
    "/api/auctions/{id}": {"get": _op("an auction (public; never a maximum or the reserve)", {
        "200": {"description": "the auction", **_json(_ref("Auction"))}, **_errors(404)}, tags=("auctions",))},
    "/api/auctions/{id}/start": {"post": _op("start a scheduled auction", {
        "200": {"description": "the auction (with `reserve_cents`)", **_json(_ref("Auction"))},
        **_errors(401, 403, 404, 409)}, role="host", tags=("auctions",))},
    "/api/auctions/{id}/bids": {"post": _op("bid a maximum (proxy bidding, anti-snipe: docs/auctions.md)", {
        "201": {"description": "accepted", **_BID}, "200": {"description": "this Idempotency-Key's first answer", **_BID},
        **_errors(400, 401, 403, 404, 409, 413, 422, why={
            409: "`auction_not_active`, `bid_too_low` (with `min_bid_cents`) or `already_leading`",
            422: "`invalid_amount`, `missing_idempotency_key`, `validation_error` or `idempotency_conflict`"})},
        role="viewer", body=_obj({"max_cents": {"type": "integer", "minimum": 1, "maximum": 10**10}}),
        params=[_IDEMPOTENCY], tags=("auctions",))},
    "/api/streams/{id}/groupbuys": {"post": _op("open a group-buy (docs/groupbuy.md)", {
        "201": {"description": "the group-buy (`active`)", **_json(_ref("GroupBuy"))},
        **_errors(400, 401, 403, 404, 409, 413, 422)}, role="host", tags=("group-buys",), body=_obj({
            "sku": {"type": "string", "minLength": 1},
            "stock": {"type": "integer", "minimum": 1, "maximum": 10**7},
            "tiers": {"type": "array", "minItems": 1, "maxItems": 10, "items": _obj({
                "size": {"type": "integer", "minimum": 2, "maximum": 1000},
                "price_cents": {"type": "integer", "minimum": 1}}),
                "description": "sizes strictly rising, prices strictly falling (422 `invalid_tiers` otherwise)"},
            "group_ttl_s": {"type": "integer", "minimum": 60, "maximum": 86400}}))},
    "/api/groupbuys/{id}": {"get": _op("a group-buy (public)", {
        "200": {"description": "the group-buy", **_json(_ref("GroupBuy"))}, **_errors(404)}, tags=("group-buys",))},
    "/api/groupbuys/{id}/end": {"post": _op("end a group-buy (its open groups close)", {
        "200": {"description": "the group-buy, `ended`", **_json(_ref("GroupBuy"))},
        **_errors(401, 403, 404, 409)}, role="host", tags=("group-buys",))},
    "/api/groupbuys/{id}/groups": {"post": _op("open a group and join it as its leader (charged the first tier)", {
        "201": {"description": "joined", **_JOINED}, "200": {"description": "this Idempotency-Key's first answer", **_JOINED},
        **_errors(400, 401, 402, 403, 404, 409, 413, 422, why=_JOIN_WHY)},
        role="viewer", body=_JOIN_BODY, params=[_IDEMPOTENCY], tags=("group-buys",))},
    "/api/groups/{gid}": {"get": _op("a group (public)", {
        "200": {"description": "the group", **_json(_ref("Group"))}, **_errors(404)}, tags=("group-buys",))},
    "/api/groups/{gid}/members": {"post": _op("join a group (charged the first tier)", {
        "201": {"description": "joined", **_JOINED}, "200": {"description": "this Idempotency-Key's first answer", **_JOINED},
        **_errors(400, 401, 402, 403, 404, 409, 413, 422, why=_JOIN_WHY)},
        role="viewer", body=_JOIN_BODY, params=[_IDEMPOTENCY], tags=("group-buys",))},
    "/": {"get": _op("landing page (docs/pages.md)", {"200": _HTML}, tags=("pages",))},
    "/s/{stream}": {"get": _op("the viewer page", {"200": _HTML, "404": _HTML_404}, tags=("pages",))},
    "/host/{stream}": {"get": _op("the host console", {"200": _HTML, "404": _HTML_404}, tags=("pages",))},
    "/g/{group}": {"get": _op("a group-buy's join card", {"200": _HTML}, tags=("pages",))},
    "/assets/{path}": {"get": _op("the pages' stylesheet, icons and modules (`ETag`; `If-None-Match` → 304)", {
        "200": {"description": "the file", "content": {t: {"schema": _STR} for t in (
            "text/css", "text/javascript", "image/svg+xml")}},
        "304": {"description": "not modified"}, "404": {"description": "no such file", **_json(_ERROR)}},
        tags=("pages",))},
    "/dev/token": {"post": _op("a token for the pages' sign-in: only under `livesale demo` (404 under `serve`)", {
        "200": {"description": "a token", **_json(_obj({"token": _STR, "user": _STR,
                                                         "role": {"enum": ["viewer", "host", "moderator"]},
                                                         "expires_in": _INT}))},
        "404": {"description": "not `livesale demo`", **_json(_ERROR)}, **_errors(400, 413, 422)},
        body=_obj({"user": {"type": "string", "minLength": 1, "maxLength": 64}},
                  {"role": {"enum": ["viewer", "host", "moderator"]}}), tags=("pages",))},
    "/ws/streams/{id}": {"get": _op(
        "the stream's WebSocket (docs/realtime.md): `?token=` signs in, `?since=` resumes; a request that "
        "is not a WebSocket upgrade is refused", {
            "101": {"description": "switching to the WebSocket protocol"},
            "400": {"description": "not a WebSocket upgrade", **_json(_ERROR)},
            **_errors()},
        params=[_query("token", _STR, "a JWT (docs/auth.md); anonymous viewers may only watch"),
                _query("since", _STR, "the last `seq` seen, to resume")], tags=("realtime",))},
    **_media("whip"),
    **_media("whep"),
    "/metrics": {"get": _op("Prometheus metrics (docs/monitoring)", {
        "200": {"description": "the text exposition format", "content": {"text/plain": {"schema": _STR}}}},
        tags=("service",))},
    "/healthz": {"get": _op("200 while the process runs", {
        "200": {"description": "alive", **_json(_obj({"status": {"const": "ok"}}))}}, tags=("service",))},
    "/readyz": {"get": _op("200 when Redis and SQL answer", {
        "200": {"description": "ready", **_json(_obj({"status": {"const": "ready"}}))}, **_errors()},
        tags=("service",))},
}

for _path, _item in PATHS.items():
    _names = [seg[1:-1] for seg in _path.split("/") if seg.startswith("{")]
    if _names:
        _item["parameters"] = [{"name": n, "in": "path", "required": True, "schema": _STR} for n in _names]


def operation_id(method: str, path: str) -> str:
    """`post /api/sales/{id}/orders` -> `post_api_sales_id_orders`: every operation's operationId."""
    words = "".join(c if c.isalnum() else " " for c in path).split()
    return "_".join([method, *words]) if words else method + "_root"


for _path, _item in PATHS.items():
    for _method, _op_item in _item.items():
        if _method != "parameters":
            _op_item["operationId"] = operation_id(_method, _path)

# OpenAPI links: where the ids in an answer lead (a client's next calls; schemathesis follows them in
# tests/test_openapi.py's stateful run). (method, path, status) -> link name -> (method, path of the
# operation it leads to, its parameters as runtime expressions, a request body or None).
_Link = tuple[str, str, dict[str, str], dict[str, Any] | None]
_ID = {"id": "$response.body#/id"}
_CARD = {"payment_method": "pm_card_visa"}
_ORDER_NEXT: dict[str, _Link] = {
    "GetOrder": ("get", "/api/orders/{id}", _ID, None),
    "PayOrder": ("post", "/api/orders/{id}/pay", _ID, _CARD),
    "CancelOrder": ("post", "/api/orders/{id}/cancel", _ID, None),
    "GetSale": ("get", "/api/sales/{id}", {"id": "$response.body#/sale"}, None),
}
_SALE_NEXT: dict[str, _Link] = {
    "GetSale": ("get", "/api/sales/{id}", _ID, None),
    "Reserve": ("post", "/api/sales/{id}/orders", _ID, None),
    "EndSale": ("post", "/api/sales/{id}/end", _ID, None),
    "GetStreamSales": ("get", "/api/streams/{id}/sales", {"id": "$response.body#/stream_id"}, None),
}
_STREAM_NEXT: dict[str, _Link] = {
    "GetStream": ("get", "/api/streams/{id}", _ID, None),
    "OpenSale": ("post", "/api/streams/{id}/sales", _ID, None),
    "OpenAuction": ("post", "/api/streams/{id}/auctions", _ID, None),
    "OpenGroupBuy": ("post", "/api/streams/{id}/groupbuys", _ID, None),
}
LINKS: dict[tuple[str, str, str], dict[str, _Link]] = {
    ("post", "/api/streams", "201"): {**_STREAM_NEXT, "StartStream": ("post", "/api/streams/{id}/start", _ID, None)},
    ("post", "/api/streams/{id}/start", "200"): {**_STREAM_NEXT,
                                                 "EndStream": ("post", "/api/streams/{id}/end", _ID, None)},
    ("post", "/api/streams/{id}/sales", "201"): {**_SALE_NEXT,
                                                 "StartSale": ("post", "/api/sales/{id}/start", _ID, None)},
    ("post", "/api/sales/{id}/start", "200"): _SALE_NEXT,
    ("post", "/api/sales/{id}/orders", "201"): {**_ORDER_NEXT, "ReserveAgain": (
        "post", "/api/sales/{id}/orders", {"id": "$response.body#/sale"}, None)},
    ("post", "/api/sales/{id}/orders", "200"): _ORDER_NEXT,
    ("post", "/api/orders/{id}/pay", "200"): _ORDER_NEXT,
    ("post", "/api/orders/{id}/cancel", "200"): _ORDER_NEXT,
    ("post", "/api/streams/{id}/auctions", "201"): {
        "GetAuction": ("get", "/api/auctions/{id}", _ID, None),
        "StartAuction": ("post", "/api/auctions/{id}/start", _ID, None)},
    ("post", "/api/auctions/{id}/start", "200"): {
        "GetAuction": ("get", "/api/auctions/{id}", _ID, None),
        "Bid": ("post", "/api/auctions/{id}/bids", _ID, None)},
    ("post", "/api/streams/{id}/groupbuys", "201"): {
        "GetGroupBuy": ("get", "/api/groupbuys/{id}", _ID, None),
        "OpenGroup": ("post", "/api/groupbuys/{id}/groups", _ID, _CARD),
        "EndGroupBuy": ("post", "/api/groupbuys/{id}/end", _ID, None)},
    ("post", "/api/groupbuys/{id}/groups", "201"): {
        "GetGroup": ("get", "/api/groups/{gid}", {"gid": "$response.body#/group"}, None),
        "JoinGroup": ("post", "/api/groups/{gid}/members", {"gid": "$response.body#/group"}, _CARD),
        "GetMemberOrder": ("get", "/api/orders/{id}", {"id": "$response.body#/member"}, None)},
}
for (_method, _path, _status), _links in LINKS.items():
    PATHS[_path][_method]["responses"][_status]["links"] = {
        name: {"operationId": operation_id(m, target), "parameters": params, **({"requestBody": body} if body else {})}
        for name, (m, target, params, body) in _links.items()}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "livesale", "version": "0.1.0",
                 "description": "Live-stream selling: streams, flash sales, orders, the WebSocket hub, WHIP/WHEP. "
                                "Errors are `{\"error\": code, \"message\": text}`; an unknown path is 404 "
                                "`not_found`, a wrong method 405 `method_not_allowed` with `Allow`. GET routes "
                                "also answer HEAD. An integer field takes a JSON integer only: `1.0` is refused "
                                "like `\"1\"` (JSON Schema would call it an integer). The prose: docs/api.md, docs/auth.md, docs/realtime.md."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "paths": PATHS,
    }


def setup(app: web.Application) -> None:
    body = orjson.dumps(document())

    async def serve(_request: web.Request) -> web.Response:
        return json_bytes_response(body)

    app.router.add_get("/api/openapi.json", guarded(serve))
