"""Moderation over HTTP: delete a comment, mute and unmute a user (docs/realtime.md).

Moderators and admins may moderate any stream; a stream's host may moderate their own. A mute holds
on the stream it was made on, in every process (one Redis key per stream and user, optionally
expiring): a host cannot silence a user on other hosts' streams. Muted users' comments there get an
`error` event with code `muted`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from livesale.bus import LOG_PRELUDE, channel, log_key, now_ms, seq_key
from livesale.errors import Forbidden, NotFound, Unprocessable
from livesale.redis_client import LuaScript, redis_errors
from livesale.times import iso_ms
from livesale.web import current_user, guarded, json_response, read_json
from monitoring import metrics as m
from realtime import keys
from realtime.handler import HUB
from realtime.snapshot import log_events

MAX_MUTE_S = 30 * 86400
_DELETE = LuaScript(Path(__file__).with_name("comment_delete.lua"), LOG_PRELUDE)


async def _authorize(request: web.Request) -> str:
    """The stream id, after checking the caller may moderate it (404 before 403 for unknown streams)."""
    hub = request.app[HUB]
    user = current_user(request)
    stream_id = request.match_info["id"]
    with redis_errors():
        source = await hub.snapshot_source(hub.svc, stream_id)
    if source is None:
        raise NotFound(f"no stream {stream_id!r}")
    if not (user.is_("moderator") or source["stream"].get("host") == user.id):
        raise Forbidden("only moderators and the stream's host may moderate it")
    return stream_id


async def delete_comment(request: web.Request) -> web.Response:
    stream_id = await _authorize(request)
    comment_id = request.match_info["comment_id"]
    svc = request.app[HUB].svc
    with redis_errors():
        entries = log_events(await svc.redis.xrevrange(log_key(stream_id), count=svc.bus.log_maxlen * 2))
        found = False
        for _id, data in entries:
            ev: dict[str, Any] = orjson.loads(data)
            if ev.get("id") != comment_id:
                continue
            if ev.get("type") == "comment_deleted":  # deleting twice changes nothing
                return json_response({"id": comment_id, "deleted": True, "seq": ev["seq"]})
            if ev.get("type") == "comment":
                found = True
        if not found:
            raise NotFound(f"no comment {comment_id!r} in this stream's log")
        # Another delete of it may have got here too: the script publishes only the first one.
        prefix = orjson.dumps({"type": "comment_deleted", "id": comment_id})[:-1] + b","
        head = prefix + orjson.dumps({"ts": now_ms()})[1:-1]
        res: Any = await _DELETE(svc.redis, [seq_key(stream_id), log_key(stream_id)],
                                 [channel(stream_id), head, svc.bus.log_maxlen, prefix, svc.bus.log_maxlen * 2])
        published, seq = res
    if published and m.ENABLED:
        m.WS_PUBLISHED.labels("comment_deleted").inc()
    return json_response({"id": comment_id, "deleted": True, "seq": seq})


async def mute(request: web.Request) -> web.Response:
    stream_id = await _authorize(request)
    body = await read_json(request)
    user = body.get("user")
    duration = body.get("duration_s")
    if not isinstance(user, str) or not 1 <= len(user) <= 128:
        raise Unprocessable("user must be a string of 1-128 characters")
    if duration is not None and (type(duration) is not int or not 1 <= duration <= MAX_MUTE_S):
        raise Unprocessable(f"duration_s must be an integer 1-{MAX_MUTE_S} (omit it to mute until unmuted)")
    svc = request.app[HUB].svc
    with redis_errors():
        await svc.redis.set(keys.muted(stream_id, user), b"1", ex=duration)
    until = None if duration is None else iso_ms(now_ms() + duration * 1000)
    return json_response({"user": user, "muted": True, "until": until})


async def unmute(request: web.Request) -> web.Response:
    stream_id = await _authorize(request)
    user = request.match_info["user"]
    svc = request.app[HUB].svc
    with redis_errors():
        await svc.redis.delete(keys.muted(stream_id, user))
    return json_response({"user": user, "muted": False})


def setup(app: web.Application) -> None:
    app.router.add_delete("/api/streams/{id}/comments/{comment_id}", guarded(delete_comment))
    app.router.add_post("/api/streams/{id}/mutes", guarded(mute))
    app.router.add_delete("/api/streams/{id}/mutes/{user}", guarded(unmute))
