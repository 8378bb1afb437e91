"""Reconnecting with `since=`, slow consumers and moderation, over real sockets and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import redis.asyncio as aioredis
import websockets
from prometheus_client import REGISTRY

from livesale.bus import log_key
from livesale.codes import CloseCode
from livesale.services import SERVICES
from realtime import HUB
from tests.helpers import Api, wait_for
from tests.test_realtime_ws import closed_code, collect, of_type, recv_events, send, viewer, ws_url


async def _post(api: Api, sid: str, user: str, texts: list[str]) -> list[int]:
    """Comments posted over a socket by `user`; their seqs, in order."""
    async with viewer(api.server, sid, user) as (ws, _):
        for t in texts:
            await send(ws, {"type": "comment", "text": t})
        got = await collect(ws, lambda ev: len([c for c in of_type(ev, "comment") if c["user"] == user]) >= len(texts))
    return [c["seq"] for c in of_type(got, "comment") if c["user"] == user]


async def test_since_replays_exactly_the_missed_comments(api: Api) -> None:
    """A reconnect with since=<last seq seen> gets the missed comments in order, then likes/stock/viewers, no snapshot."""
    s = await api.setup_sale(stock=4)
    sid = s["stream_id"]
    seen = await _post(api, sid, "amy", ["a1", "a2"])
    missed = await _post(api, sid, "ben", ["b1", "b2", "b3"])
    async with viewer(api.server, sid, "amy", since=seen[-1]) as (ws, first):
        assert [e["type"] for e in first] == ["comment"] * 3 + ["likes", "stock", "viewers"]
        assert [(e["text"], e["seq"]) for e in first[:3]] == list(zip(["b1", "b2", "b3"], missed, strict=True))
        assert first[4] == {"type": "stock", "sale": s["sale_id"], "available": 4}
        await _post(api, sid, "cid", ["live"])
        live = await collect(ws, lambda ev: bool(of_type(ev, "comment")))
        assert [c["text"] for c in of_type(live, "comment")] == ["live"]
    async with viewer(api.server, sid, since=missed[-1] + 1) as (_ws, up_to_date):
        assert [e["type"] for e in up_to_date] == ["likes", "stock", "viewers"]


async def test_since_older_than_the_log_gets_a_fresh_snapshot(api: Api) -> None:
    """When the log no longer holds the gap, the viewer gets a snapshot with recovered: false."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    await _post(api, sid, "amy", [f"m{i}" for i in range(5)])
    r = aioredis.Redis.from_url(api.server.settings.redis_url or "")
    await r.xtrim(log_key(sid), maxlen=2, approximate=False)  # the bounded log rolled over
    await r.aclose()
    async with viewer(api.server, sid, since=1) as (_ws, first):
        assert first[0]["type"] == "snapshot" and first[0]["recovered"] is False
        assert [c["text"] for c in first[0]["recent"]] == ["m3", "m4"]


async def test_a_viewer_that_stops_reading_is_closed_4008_others_keep_up(api: Api) -> None:
    """A viewer that stops reading is closed with 4008; the other viewers receive every comment in order."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    hub = api.server.app[HUB]  # type: ignore[index]
    hub.cfg.outbound_bytes = 16 * 1024
    hub.cfg.slow_close_s = 1.0
    hub.cfg.heartbeat_s = 300.0  # on a loaded machine the spike can outlast a 20 s heartbeat: 4008 must come first
    bus = api.server.app[SERVICES].bus  # type: ignore[index]
    slow_sock = socket.socket()
    slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_sock.connect(("127.0.0.1", api.server.port))
    slow_sock.setblocking(False)
    text = "z" * 280
    slow_closes = REGISTRY.get_sample_value("livesale_ws_slow_consumer_closes_total") or 0.0
    async with contextlib.AsyncExitStack() as stack:
        slow = await stack.enter_async_context(
            websockets.connect(ws_url(api.server, sid), sock=slow_sock, max_queue=1))
        await recv_events(slow)  # snapshot, then it stops reading
        (slow_conn,) = hub.rooms[sid].conns

        async def read_once_closed() -> int | None:
            # It reads again as soon as the server closes it: within the close's grace
            # (docs/limits.md) it gets what was queued for it and the 4008 frame.
            await wait_for(lambda: slow_conn.closed, 60, interval=0.01)
            return await closed_code(slow, 30)

        slow_close = asyncio.create_task(read_once_closed())
        good = [(await stack.enter_async_context(viewer(api.server, sid)))[0] for _ in range(3)]
        received: list[list[int]] = [[] for _ in good]

        async def read(i: int) -> None:
            while True:
                received[i].extend(e["seq"] for e in await recv_events(good[i], 30) if e["type"] == "comment")

        readers = [asyncio.create_task(read(i)) for i in range(len(good))]
        sent: list[int] = []
        while len(hub.rooms[sid].conns) == 4 and len(sent) < 20_000:
            for _ in range(50):
                sent.append(await bus.publish_log(sid, {"type": "comment", "id": "x", "user": "p", "text": text}))
            await asyncio.sleep(0.01)
        assert len(hub.rooms[sid].conns) == 3  # the slow one was dropped
        assert await slow_close == CloseCode.SLOW_CONSUMER
        await wait_for(lambda: all(len(r) >= len(sent) for r in received), 30)
        for t in readers:
            t.cancel()
        assert all(r[: len(sent)] == sent for r in received)
    assert REGISTRY.get_sample_value("livesale_ws_slow_consumer_closes_total") == slow_closes + 1


async def test_moderators_and_the_host_delete_comments(api: Api) -> None:
    """A moderator's delete reaches viewers as comment_deleted and leaves later snapshots; others get 401/403/404."""
    s = await api.setup_sale(host="hosty")
    sid = s["stream_id"]
    tok = api.server.token
    async with viewer(api.server, sid) as (ws, _):
        await _post(api, sid, "troll", ["bad", "worse"])
        comments = of_type(await collect(ws, lambda ev: len(of_type(ev, "comment")) >= 2), "comment")
        path = f"/api/streams/{sid}/comments/{comments[0]['id']}"
        assert (await api.call("DELETE", path))[0] == 401
        assert (await api.call("DELETE", path, token=tok("troll")))[0] == 403
        assert (await api.call("DELETE", path, token=tok("otherhost", "host")))[0] == 403
        assert (await api.call("DELETE", f"/api/streams/{sid}/comments/nope", token=tok("mod", "moderator")))[0] == 404
        assert (await api.call("DELETE", "/api/streams/st-none/comments/x", token=tok("mod", "moderator")))[0] == 404
        st, body = await api.call("DELETE", path, token=tok("mod", "moderator"))
        assert st == 200 and body["deleted"] is True
        st, again = await api.call("DELETE", path, token=tok("mod", "moderator"))
        assert st == 200 and again["seq"] == body["seq"]
        st, _ = await api.call("DELETE", f"/api/streams/{sid}/comments/{comments[1]['id']}", token=tok("hosty", "host"))
        assert st == 200
        deleted = of_type(await collect(ws, lambda ev: len(of_type(ev, "comment_deleted")) >= 2), "comment_deleted")
        assert [d["id"] for d in deleted] == [comments[0]["id"], comments[1]["id"]]
        assert deleted[0]["seq"] == body["seq"]
    async with viewer(api.server, sid) as (_ws, first):
        assert first[0]["recent"] == []


async def test_muted_users_comments_are_refused(api: Api) -> None:
    """A muted user's comment gets `muted` and is not published; bad mute bodies get 422; unmute restores."""
    s = await api.setup_sale(host="hosty")
    sid = s["stream_id"]
    mod = api.server.token("mod", "moderator")
    for bad in ({}, {"user": ""}, {"user": "mal", "duration_s": 0}, {"user": "mal", "duration_s": "5"}):
        assert (await api.call("POST", f"/api/streams/{sid}/mutes", token=mod, json=bad))[0] == 422
    assert (await api.call("POST", f"/api/streams/{sid}/mutes", token=api.server.token("x"), json={"user": "mal"}))[0] == 403
    st, body = await api.call("POST", f"/api/streams/{sid}/mutes", token=mod, json={"user": "mal", "duration_s": 600})
    assert st == 200 and body["muted"] is True and body["until"]
    async with viewer(api.server, sid) as (watch, _), viewer(api.server, sid, "mal") as (mal, _):
        await send(mal, {"type": "comment", "text": "hello?"})
        errs = of_type(await collect(mal, lambda ev: bool(of_type(ev, "error"))), "error")
        assert errs[0]["code"] == "muted"
        st, _ = await api.call("DELETE", f"/api/streams/{sid}/mutes/mal", token=api.server.token("hosty", "host"))
        assert st == 200
        await send(mal, {"type": "comment", "text": "back"})
        got = of_type(await collect(watch, lambda ev: bool(of_type(ev, "comment"))), "comment")
        assert [c["text"] for c in got] == ["back"]  # the muted comment never went out


async def test_a_mute_holds_on_its_own_stream_only(api: Api) -> None:
    """A host mutes a user on their stream: the user can still comment on another host's stream, and
    that host cannot lift (or make) mutes on the first one."""
    a = await api.setup_sale(host="host-a")
    b = await api.setup_sale(host="host-b")
    ta, tb = api.server.token("host-a", "host"), api.server.token("host-b", "host")
    st, _ = await api.call("POST", f"/api/streams/{a['stream_id']}/mutes", token=ta, json={"user": "mal"})
    assert st == 200
    assert (await api.call("DELETE", f"/api/streams/{a['stream_id']}/mutes/mal", token=tb))[0] == 403
    async with viewer(api.server, a["stream_id"], "mal") as (mal_a, _), \
            viewer(api.server, b["stream_id"]) as (watch_b, _), viewer(api.server, b["stream_id"], "mal") as (mal_b, _):
        await send(mal_a, {"type": "comment", "text": "on a"})
        errs = of_type(await collect(mal_a, lambda ev: bool(of_type(ev, "error"))), "error")
        assert errs[0]["code"] == "muted"
        await send(mal_b, {"type": "comment", "text": "on b"})
        got = of_type(await collect(watch_b, lambda ev: bool(of_type(ev, "comment"))), "comment")
        assert [c["text"] for c in got] == ["on b"]
