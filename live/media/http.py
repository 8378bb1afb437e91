"""WHIP (RFC 9725) and WHEP routes, and the stream key (docs/media.md, "HTTP").

The handlers authenticate, find the stream and check the offer (live/media/sdp.py); the backend
(live/media/backend.py) answers it. Every response carries CORS headers exposing Location, so a page
on another origin can publish or play.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from live import keys
from live.api import load_stream
from live.media import sdp
from live.media.backend import MEDIA, Kind
from livesale.auth import require_role
from livesale.codes import ErrorCode
from livesale.errors import BadRequest, Conflict, Forbidden, Unauthorized, Unprocessable, UnsupportedMediaType
from livesale.services import SERVICES, Services
from livesale.web import current_user, guarded, json_response, read_body

KEY_PREFIX = "sk_"  # tells a stream key from a JWT in `Authorization: Bearer`

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Accept-Post",
}
PREFLIGHT = {
    **CORS,
    "Accept-Post": "application/sdp",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "86400",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).hexdigest().encode()


def _is_owner(role: str, user_id: str, stream: dict[str, Any]) -> bool:
    return role == "admin" or (role == "host" and stream["host"] == user_id)


async def _authorize_publisher(request: web.Request, svc: Services, stream: dict[str, Any]) -> None:
    """The stream's host (or an admin) by token, or anyone holding the stream's current key."""
    header = request.headers.get("Authorization") or ""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token.startswith(KEY_PREFIX):
        stored = await svc.redis.hget(keys.meta(stream["id"]), "stream_key")  # type: ignore[misc]
        if stored and token.isascii() and hmac.compare_digest(stored, _key_digest(token)):
            return
        raise Unauthorized("invalid stream key (a newer key replaces an older one)")
    user = current_user(request)  # 401 for a missing, forged or expired token
    if not _is_owner(user.role, user.id, stream):
        raise Forbidden("only the stream's host, or its stream key, may publish")


def _offer_text(request: web.Request, body: bytes) -> sdp.Offer:
    if request.content_type != "application/sdp":
        raise UnsupportedMediaType("send the SDP offer with Content-Type: application/sdp")
    try:
        return sdp.parse(body)
    except sdp.SdpError as exc:
        raise BadRequest(str(exc)) from exc


def _sdp_response(kind: Kind, stream_id: str, session: str, answer: str) -> web.Response:
    return web.Response(status=201, body=answer.encode(), content_type="application/sdp",
                        headers={"Location": f"/{kind.value}/{stream_id}/{session}"})


async def whip_post(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    stream = await load_stream(svc, request.match_info["stream"])
    await _authorize_publisher(request, svc, stream)
    body = await read_body(request)
    offer = _offer_text(request, body)
    if stream["status"] == "ended":
        raise Conflict("the stream has ended", code=ErrorCode.INVALID_STATE)
    try:
        sdp.check_publish(offer)
    except sdp.UnsupportedOffer as exc:
        raise Unprocessable(str(exc), code=ErrorCode.UNSUPPORTED_MEDIA) from exc
    answer = await request.app[MEDIA].publish(stream["id"], body.decode())
    return _sdp_response(Kind.WHIP, stream["id"], answer.session, answer.sdp)


async def whep_post(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    stream = await load_stream(svc, request.match_info["stream"])
    body = await read_body(request)
    offer = _offer_text(request, body)
    try:
        codec = sdp.check_play(offer)
    except sdp.UnsupportedOffer as exc:
        raise Unprocessable(str(exc), code=ErrorCode.UNSUPPORTED_MEDIA) from exc
    answer = await request.app[MEDIA].play(stream["id"], body.decode(), codec)
    return _sdp_response(Kind.WHEP, stream["id"], answer.session, answer.sdp)


async def whip_delete(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    stream = await load_stream(svc, request.match_info["stream"])
    await _authorize_publisher(request, svc, stream)
    await request.app[MEDIA].end_session(Kind.WHIP, stream["id"], request.match_info["session"])
    return web.Response(status=200)


async def whep_delete(request: web.Request) -> web.Response:
    # No credentials: the session id is unguessable, so its URL is the viewer's own capability.
    await request.app[MEDIA].end_session(Kind.WHEP, request.match_info["stream"], request.match_info["session"])
    return web.Response(status=200)


async def preflight(_request: web.Request) -> web.Response:
    return web.Response(status=204, headers=PREFLIGHT)


async def new_stream_key(request: web.Request) -> web.Response:
    """A new stream key for the stream's host; any earlier key stops working."""
    svc = request.app[SERVICES]
    user = current_user(request)
    stream = await load_stream(svc, request.match_info["id"])
    require_role(user, "host")
    if not _is_owner(user.role, user.id, stream):
        raise Forbidden("only the stream's host may control it")
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    await svc.redis.hset(keys.meta(stream["id"]), "stream_key", _key_digest(key))  # type: ignore[misc]
    whip_url = f"{request.scheme}://{request.host}/whip/{stream['id']}"
    return json_response({"stream_key": key, "whip_url": whip_url})


def _with_cors(handler: Handler) -> Handler:
    async def cors_handler(request: web.Request) -> web.StreamResponse:
        resp = await handler(request)
        resp.headers.update(CORS)
        return resp

    return cors_handler


def setup(app: web.Application) -> None:
    for kind, post, delete in ((Kind.WHIP, whip_post, whip_delete), (Kind.WHEP, whep_post, whep_delete)):
        base = f"/{kind.value}/{{stream}}"
        app.router.add_post(base, _with_cors(guarded(post)))
        app.router.add_route("OPTIONS", base, guarded(preflight))
        app.router.add_delete(base + "/{session}", _with_cors(guarded(delete)))
        app.router.add_route("OPTIONS", base + "/{session}", guarded(preflight))
    app.router.add_post("/api/streams/{id}/key", guarded(new_stream_key))
