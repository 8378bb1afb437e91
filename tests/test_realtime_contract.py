"""Review of the viewer WebSocket against docs/design.md "WebSocket" and "Fan-out rules": real server on
loopback, real `websockets` clients, real Redis."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime

import orjson
import pytest
import redis as syncredis
import websockets

from livesale.bus import log_key
from livesale.codes import CloseCode
from livesale.services import SERVICES
from realtime import handler
from tests.helpers import Api
from tests.test_realtime_ws import closed_code, collect, of_type, recv_events, send, viewer


async def test_a_frame_of_exactly_4096_bytes_is_read_one_byte_more_closes_1009(api: Api) -> None:
    """A frame of 4096 bytes is not "over 4096": it is answered (pong); 4097 bytes close with 1009."""
    s = await api.setup_sale()
    ping = b'{"type":"ping"}'
    async with viewer(api.server, s["stream_id"], "gus") as (ws, _):
        await ws.send(ping + b" " * (4096 - len(ping)), text=True)
        assert of_type(await collect(ws, lambda ev: bool(of_type(ev, "pong"))), "pong")
        await ws.send(ping + b" " * (4097 - len(ping)), text=True)
        assert await closed_code(ws) == CloseCode.MESSAGE_TOO_BIG


async def test_since_that_is_not_an_ascii_integer_gets_a_snapshot(api: Api) -> None:
    """`since` values str.isdigit() accepts but that are not a plain non-negative integer ("²", "١")
    are ignored like any other bad `since`: the viewer gets a snapshot, not a broken socket."""
    s = await api.setup_sale()
    for raw in ("%C2%B2", "%D9%A1", "1%C2%B2"):
        url = f"{api.server.ws_url}/ws/streams/{s['stream_id']}?since={raw}"
        async with websockets.connect(url) as ws:
            first = await recv_events(ws)
            assert [e["type"] for e in first] == ["snapshot"], raw
            await send(ws, {"type": "ping"})
            assert of_type(await collect(ws, lambda ev: bool(of_type(ev, "pong"))), "pong")


async def test_mute_until_is_an_api_time_with_milliseconds(api: Api) -> None:
    """A timed mute's `until` is written like every API time (docs/api.md): UTC, milliseconds and a Z,
    `duration_s` from now."""
    s = await api.setup_sale(host="hosty")
    before = time.time()
    st, body = await api.call("POST", f"/api/streams/{s['stream_id']}/mutes",
                              token=api.server.token("mod", "moderator"), json={"user": "mal", "duration_s": 90})
    assert st == 200, body
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["until"]), body["until"]
    until = datetime.fromisoformat(body["until"].replace("Z", "+00:00")).timestamp()
    assert before + 90 - 0.001 <= until <= time.time() + 90


async def test_a_comment_deleted_by_several_moderators_at_once_is_deleted_once(api: Api) -> None:
    """Deletes of one comment arriving together (two moderators, a double tap) publish one
    comment_deleted; every answer carries its seq (docs/realtime.md: "deleting twice returns the first
    deletion's seq and publishes nothing")."""
    s = await api.setup_sale(host="hosty")
    sid = s["stream_id"]
    async with viewer(api.server, sid, "troll") as (ws, _):
        for i in range(4):
            await send(ws, {"type": "comment", "text": f"bad {i}"})
        comments = of_type(await collect(ws, lambda ev: len(of_type(ev, "comment")) >= 4), "comment")
    redis = api.server.app[SERVICES].redis  # type: ignore[index]
    for c in comments:
        path = f"/api/streams/{sid}/comments/{c['id']}"
        answers = await asyncio.gather(*(api.call("DELETE", path, token=api.server.token(f"mod{i}", "moderator"))
                                         for i in range(8)))
        assert {st for st, _ in answers} == {200}, answers
        log = [orjson.loads(f[b"d"]) for _id, f in await redis.xrange(log_key(sid))]
        deletions = [d["seq"] for d in log if d["type"] == "comment_deleted" and d["id"] == c["id"]]
        assert len(deletions) == 1 and {body["seq"] for _, body in answers} == set(deletions), (deletions, answers)


async def test_a_redis_refusing_writes_for_a_while_stops_nothing_for_good(api: Api, redis_url: str) -> None:
    """While Redis refuses writes (maxmemory reached: OOM), a comment gets `error` `unavailable` and
    the socket stays open; once Redis writes again, comments, likes totals and viewer counts move again."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    c = syncredis.Redis.from_url(redis_url)
    async with viewer(api.server, sid, "una") as (ws, _):
        c.config_set("maxmemory", "1")
        try:
            await send(ws, {"type": "comment", "text": "while full"})
            await send(ws, {"type": "like", "count": 3})
            errors = of_type(await collect(ws, lambda ev: bool(of_type(ev, "error"))), "error")
            assert [e["code"] for e in errors] == ["unavailable"]
            await asyncio.sleep(1.5)  # the hub's likes flush and viewers report run and are refused
        finally:
            c.config_set("maxmemory", "0")
            c.close()
        async with viewer(api.server, sid) as (watch, _):
            await send(ws, {"type": "comment", "text": "back"})
            await send(ws, {"type": "like", "count": 4})
            got = await collect(watch, lambda ev: bool(of_type(ev, "comment")) and any(
                e["type"] == "likes" and e["total"] == 7 for e in ev) and any(
                e["type"] == "viewers" and e["count"] == 2 for e in ev))
            assert [e["text"] for e in of_type(got, "comment")] == ["back"]


async def test_a_bug_while_serving_a_viewer_closes_1011_not_a_silent_socket(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault injected into command handling (an exception we did not foresee) closes that viewer with
    1011 (reconnect with backoff) instead of leaving it on an open socket that says nothing; the room
    keeps serving the others."""
    s = await api.setup_sale()

    async def broken(*_: object) -> None:
        raise RuntimeError("injected")

    async with viewer(api.server, s["stream_id"], "ivy") as (bystander, _):
        monkeypatch.setattr(handler, "_command", broken)
        async with viewer(api.server, s["stream_id"], "ian") as (ws, _):
            await send(ws, {"type": "ping"})
            assert await closed_code(ws) == CloseCode.INTERNAL_ERROR
        monkeypatch.undo()
        await send(bystander, {"type": "ping"})
        assert of_type(await collect(bystander, lambda ev: bool(of_type(ev, "pong"))), "pong")
    assert CloseCode.INTERNAL_ERROR.reconnect
