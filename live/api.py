"""HTTP handlers for streams: create, start, end, get, pin (docs/design.md "HTTP API")."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from aiohttp import web

import commerce.auctions
import commerce.catalog
import commerce.groupbuys
import commerce.sales
import realtime.state
from live import keys
from live.media.backend import MEDIA
from live.schema import streams
from live.streams import _ALLOWED, StreamStatus, can_pin, transition
from livesale.auth import User, require_role
from livesale.bus import LOG_PRELUDE, channel, log_key, seq_key
from livesale.codes import ErrorCode
from livesale.errors import Conflict, Forbidden, NotFound, Unprocessable
from livesale.redis_client import LuaScript
from livesale.services import SERVICES, Services
from livesale.times import iso_ms
from livesale.web import current_user, guarded, json_response, read_json

_CAS = LuaScript(Path(__file__).with_name("stream_cas.lua"), LOG_PRELUDE)


def iso(ts: float | str | None) -> str | None:
    """Epoch seconds as the API's one time format (docs/api.md): `2026-11-24T17:01:10.460Z`."""
    if ts in (None, b"", ""):
        return None
    return iso_ms(round(float(ts) * 1000))  # type: ignore[arg-type]


async def load_stream(svc: Services, stream_id: str) -> dict[str, Any]:
    """The stream's hot state from Redis, 404 when unknown."""
    async with svc.redis.pipeline(transaction=False) as p:
        p.hgetall(keys.meta(stream_id))
        p.exists(keys.publisher(stream_id))
        raw, publishing = await p.execute()
    if not raw:
        raise NotFound(f"no stream {stream_id!r}")
    d = {k.decode(): v.decode() for k, v in raw.items()}
    return {
        "id": stream_id,
        "status": d["status"],
        "host": d["host"],
        "title": d["title"],
        "created_at": iso(d.get("created_at")),
        "started_at": iso(d.get("started_at")),
        "ended_at": iso(d.get("ended_at")),
        "pinned": orjson.loads(d["pinned"]) if d.get("pinned") else None,
        "video": "live" if publishing else "none",  # a WHIP publisher is connected (docs/media.md)
    }


async def stream_view(svc: Services, stream_id: str) -> dict[str, Any]:
    view = await load_stream(svc, stream_id)
    counters = await realtime.state.stream_counters(svc.redis, stream_id)
    view.update(counters)
    view["sales"] = await commerce.sales.list_for_stream(svc, stream_id)
    return view


async def snapshot_source(svc: Services, stream_id: str) -> dict[str, Any] | None:
    """What the hub puts in a `snapshot` besides its own counters; None for an unknown stream."""
    try:
        st = await load_stream(svc, stream_id)
    except NotFound:
        return None
    return {
        "stream": {k: st[k] for k in ("id", "status", "host", "title", "video")},
        "pinned": st["pinned"],
        "sales": await commerce.sales.list_for_stream(svc, stream_id),
        "auctions": await commerce.auctions.list_for_stream(svc, stream_id),
    }


def _owner(user: User, stream: dict[str, Any]) -> None:
    require_role(user, "host")
    if user.role != "admin" and stream["host"] != user.id:
        raise Forbidden("only the stream's host may control it")


async def create_stream(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    user = current_user(request)
    require_role(user, "host")
    body = await read_json(request)
    title = body.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise Unprocessable("title must be a string of 1-200 characters")
    stream_id = "st" + secrets.token_hex(6)
    now = datetime.now(UTC)
    async with svc.db.begin() as conn:
        await conn.execute(
            streams.insert().values(
                id=stream_id, host=user.id, title=title.strip(), status="scheduled", created_at=now
            )
        )
    await svc.redis.hset(  # type: ignore[misc]
        keys.meta(stream_id),
        mapping={"host": user.id, "title": title.strip(), "status": "scheduled", "created_at": now.timestamp()},
    )
    return json_response(await stream_view(svc, stream_id), 201)


async def _transition(request: web.Request, action: str) -> web.Response:
    svc = request.app[SERVICES]
    user = current_user(request)
    stream_id = request.match_info["id"]
    stream = await load_stream(svc, stream_id)
    _owner(user, stream)
    if action == "end" and stream["status"] == StreamStatus.ENDED.value:
        await _finish_end(svc, stream_id)  # then the 409 below, as for any end of an ended stream
    new = transition(stream["status"], action)  # fast, friendly 409 before touching Redis
    allowed = ",".join(s.value for s in _ALLOWED[action])
    now = datetime.now(UTC)
    field = "started_at" if new is StreamStatus.LIVE else "ended_at"
    event = orjson.dumps({"type": "stream", "status": new.value, "ts": int(now.timestamp() * 1000)})[:-1]
    res: Any = await _CAS(
        svc.redis, [keys.meta(stream_id), seq_key(stream_id), log_key(stream_id)],
        [action, new.value, allowed, field, now.timestamp(), channel(stream_id), event, svc.bus.log_maxlen],
    )
    if not res[0]:
        transition(res[1].decode(), action)  # raises with the state another request just set
    # Requests that raced in Redis may commit here in either order: the status only moves forward.
    status = sa.case((streams.c.status.in_([s.value for s in _ALLOWED[action]]), new.value), else_=streams.c.status)
    async with svc.db.begin() as conn:
        await conn.execute(streams.update().where(streams.c.id == stream_id).values(status=status, **{field: now}))
    if new is StreamStatus.ENDED:
        await commerce.sales.end_for_stream(svc, stream_id)
        await commerce.groupbuys.end_for_stream(svc, stream_id)
        media = request.app.get(MEDIA)
        if media is not None:  # other processes close theirs within a couple of seconds
            await media.end_stream(stream_id)
    return json_response(await stream_view(svc, stream_id))


async def _finish_end(svc: Services, stream_id: str) -> None:
    """What an end does after its Redis step, done again: an end whose request failed after that
    step (Redis or SQL lost, a 503) is retried, finds the stream ended, and completes its SQL record
    and its sales here. Both steps are idempotent."""
    ended_at = await svc.redis.hget(keys.meta(stream_id), "ended_at")  # type: ignore[misc]
    when = datetime.fromtimestamp(float(ended_at), UTC) if ended_at else datetime.now(UTC)
    async with svc.db.begin() as conn:
        await conn.execute(streams.update().where(streams.c.id == stream_id, streams.c.status != "ended")
                           .values(status="ended", ended_at=when))
    await commerce.sales.end_for_stream(svc, stream_id)
    await commerce.groupbuys.end_for_stream(svc, stream_id)


async def start_stream(request: web.Request) -> web.Response:
    return await _transition(request, "start")


async def end_stream(request: web.Request) -> web.Response:
    return await _transition(request, "end")


async def get_stream(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    return json_response(await stream_view(svc, request.match_info["id"]))


async def pin_product(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    user = current_user(request)
    stream_id = request.match_info["id"]
    stream = await load_stream(svc, stream_id)
    _owner(user, stream)
    body = await read_json(request)
    sku = body.get("sku")
    if not isinstance(sku, str) or not sku:
        raise Unprocessable("sku must be a non-empty string")
    if not can_pin(stream["status"]):
        raise Conflict(f"cannot pin on a stream that is {stream['status']}", code=ErrorCode.INVALID_STATE)
    product = await commerce.catalog.get_product(svc, sku)
    # One atomic step: two pins at once leave the meta hash (what snapshots show) holding the product
    # of the last `pin` event live viewers got.
    await svc.bus.publish_log(stream_id, {"type": "pin", "product": product}, meta=("pinned", orjson.dumps(product)))
    return json_response(await stream_view(svc, stream_id))


def setup(app: web.Application) -> None:
    app.router.add_post("/api/streams", guarded(create_stream))
    app.router.add_get("/api/streams/{id}", guarded(get_stream))
    app.router.add_post("/api/streams/{id}/start", guarded(start_stream))
    app.router.add_post("/api/streams/{id}/end", guarded(end_stream))
    app.router.add_post("/api/streams/{id}/pin", guarded(pin_product))
