"""Repros from the realtime review: a room dropped under a joining viewer, error replies that are
not bad frames, replies written past the outbound bound, and sockets to unknown streams."""

from __future__ import annotations

import asyncio

import pytest

from realtime import HUB
from realtime import state as rstate
from tests.helpers import Api
from tests.test_realtime_ws import collect, of_type, send, viewer


async def test_rejoin_while_room_is_being_dropped_still_receives_events(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer who joins while the idle room is being dropped must still get the stream's events."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    hub = api.server.app[HUB]
    hub.cfg.unsubscribe_grace_s = 0.0
    real = rstate.report_viewers
    dropping = asyncio.Event()

    async def slow_report(redis, stream_id, proc, count, ttl_ms):  # type: ignore[no-untyped-def]
        if ttl_ms == 0 and stream_id == sid:  # the drop path; widen its one Redis round trip
            dropping.set()
            await asyncio.sleep(0.3)
        return await real(redis, stream_id, proc, count, ttl_ms)

    monkeypatch.setattr(rstate, "report_viewers", slow_report)
    async with viewer(api.server, sid):
        pass
    await asyncio.wait_for(dropping.wait(), 5)
    async with viewer(api.server, sid, "bob") as (ws, first):
        assert first[0]["type"] == "snapshot"
        await asyncio.sleep(0.5)  # the drop's UNSUBSCRIBE would have gone out by now
        await send(ws, {"type": "comment", "text": "anyone there?"})
        got = await collect(ws, lambda ev: bool(of_type(ev, "comment")), wait=3)
        assert of_type(got, "comment")[0]["text"] == "anyone there?"


async def test_join_during_the_drops_unsubscribe_still_receives_events(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer who joins while the drop's UNSUBSCRIBE is in flight gets a room subscribed after it."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    hub = api.server.app[HUB]
    hub.cfg.unsubscribe_grace_s = 0.0
    assert hub._pubsub is not None
    real = hub._pubsub.unsubscribe
    dropping = asyncio.Event()

    async def slow_unsubscribe(*channels):  # type: ignore[no-untyped-def]
        if f"stream:{sid}" in channels:
            dropping.set()
            await asyncio.sleep(0.3)
        return await real(*channels)

    monkeypatch.setattr(hub._pubsub, "unsubscribe", slow_unsubscribe)
    async with viewer(api.server, sid):
        pass
    await asyncio.wait_for(dropping.wait(), 5)
    async with viewer(api.server, sid, "bob") as (ws, first):
        assert first[0]["type"] == "snapshot"
        await asyncio.sleep(0.5)
        await send(ws, {"type": "comment", "text": "anyone there?"})
        got = await collect(ws, lambda ev: bool(of_type(ev, "comment")), wait=3)
        assert of_type(got, "comment")[0]["text"] == "anyone there?"



async def test_anonymous_viewer_tapping_like_is_not_kicked(api: Api) -> None:
    """Likes from an anonymous viewer are well-formed frames: error `unauthenticated`, but no 4029 close."""
    s = await api.setup_sale()
    async with viewer(api.server, s["stream_id"]) as (ws, _):
        for _ in range(25):
            await send(ws, {"type": "like", "count": 1})
        await send(ws, {"type": "ping"})
        got = await collect(ws, lambda ev: bool(of_type(ev, "pong")), wait=5)
        assert all(e["code"] == "unauthenticated" for e in of_type(got, "error"))
