"""The viewer WebSocket end to end: real server on loopback, real `websockets` clients, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from livesale.codes import CloseCode
from realtime import HUB
from realtime.protocol import WordFilter
from tests.helpers import Api, LiveServer


def ws_url(server: LiveServer, stream_id: str, token: str | None = None, since: int | None = None) -> str:
    q = [f"token={token}"] if token else []
    if since is not None:
        q.append(f"since={since}")
    return f"{server.ws_url}/ws/streams/{stream_id}" + ("?" + "&".join(q) if q else "")


async def recv_events(ws: ClientConnection, wait: float = 5.0) -> list[dict[str, Any]]:
    """One frame as a list of events (a frame holds one event or an array of them)."""
    data = orjson.loads(await asyncio.wait_for(ws.recv(), wait))
    return data if isinstance(data, list) else [data]


async def collect(ws: ClientConnection, done: Callable[[list[dict[str, Any]]], bool],
                  wait: float = 10.0) -> list[dict[str, Any]]:
    """Events read until `done(all_so_far)` holds."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(wait):
        while not done(seen):
            seen.extend(await recv_events(ws, wait))
    return seen


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


@contextlib.asynccontextmanager
async def viewer(server: LiveServer, stream_id: str, user: str | None = None, role: str = "viewer",
                 since: int | None = None, **kw: Any) -> AsyncIterator[tuple[ClientConnection, list[dict[str, Any]]]]:
    """A connected viewer and its first frame's events."""
    token = server.token(user, role) if user else None
    async with websockets.connect(ws_url(server, stream_id, token, since), **kw) as ws:
        yield ws, await recv_events(ws)


async def closed_code(ws: ClientConnection, wait: float = 10.0) -> int | None:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(wait):
            while True:
                await ws.recv()
    return info.value.rcvd.code if info.value.rcvd else None


async def send(ws: ClientConnection, obj: Any) -> None:
    await ws.send(orjson.dumps(obj).decode())


async def test_first_frame_is_a_snapshot(api: Api) -> None:
    """The first frame is a snapshot with the stream, its sales' availability, counters, recent comments and seq."""
    s = await api.setup_sale(stock=7)
    async with viewer(api.server, s["stream_id"], "alice") as (ws, first):
        await send(ws, {"type": "comment", "text": "first!"})
        await collect(ws, lambda ev: bool(of_type(ev, "comment")))
    async with viewer(api.server, s["stream_id"]) as (_ws, first):
        assert len(first) == 1 and first[0]["type"] == "snapshot"
        snap = first[0]
        assert snap["stream"]["id"] == s["stream_id"] and snap["stream"]["status"] == "live"
        assert [(x["id"], x["available"], x["status"]) for x in snap["sales"]] == [(s["sale_id"], 7, "active")]
        assert snap["likes"] == 0 and snap["viewers"] >= 0
        assert [c["text"] for c in snap["recent"]] == ["first!"] and snap["recent"][0]["user"] == "alice"
        assert snap["seq"] == snap["recent"][0]["seq"] and "recovered" not in snap


async def test_every_viewer_receives_every_comment_in_order(api: Api) -> None:
    """Comments from several writers reach every viewer, all in the same seq order, none missing."""
    s = await api.setup_sale()
    sid = s["stream_id"]
    writers = ["w0", "w1", "w2"]
    async with contextlib.AsyncExitStack() as stack:
        viewers = [await stack.enter_async_context(viewer(api.server, sid, f"v{i}")) for i in range(6)]
        conns = [await stack.enter_async_context(viewer(api.server, sid, w)) for w in writers]
        for i in range(5):
            for w, (ws, _) in zip(writers, conns, strict=True):
                await send(ws, {"type": "comment", "text": f"{w} says {i}"})
        want = len(writers) * 5
        streams = [of_type(await collect(ws, lambda ev: len(of_type(ev, "comment")) >= want), "comment")
                   for ws, _ in viewers + conns]
    first = streams[0]
    assert len(first) == want
    assert [c["seq"] for c in first] == sorted(c["seq"] for c in first) and len({c["seq"] for c in first}) == want
    for w in writers:  # each writer's comments keep their order
        assert [c["text"] for c in first if c["user"] == w] == [f"{w} says {i}" for i in range(5)]
    for other in streams[1:]:
        assert [(c["id"], c["seq"], c["text"]) for c in other] == [(c["id"], c["seq"], c["text"]) for c in first]


async def test_unknown_stream_is_closed_with_4504(server: LiveServer) -> None:
    """A socket for a stream that does not exist is accepted, then closed with 4504 (do not reconnect)."""
    async with websockets.connect(ws_url(server, "st-nope")) as ws:
        assert await closed_code(ws) == CloseCode.NO_SUCH_STREAM


@pytest.mark.parametrize("token", ["forged", "forged-signature", "expired"])
async def test_bad_tokens_are_closed_with_4501(api: Api, token: str) -> None:
    """Garbage, wrongly signed and expired tokens: accepted, then closed with 4501; nothing is sent before."""
    from livesale.auth import mint

    s = await api.setup_sale()
    tok = {"forged": "not-a-jwt", "forged-signature": mint("another-secret-of-enough-length-000", "eve"),
           "expired": mint(api.server.settings.secret, "eve", ttl=-10)}[token]
    async with websockets.connect(ws_url(api.server, s["stream_id"], tok)) as ws:
        assert await closed_code(ws) == CloseCode.UNAUTHORIZED


async def test_anonymous_viewers_watch_but_cannot_write(api: Api) -> None:
    """Anonymous comments and likes get `unauthenticated` and publish nothing; the viewer still gets comments."""
    s = await api.setup_sale()
    async with viewer(api.server, s["stream_id"]) as (anon, _), viewer(api.server, s["stream_id"], "bob") as (bob, _):
        await send(anon, {"type": "comment", "text": "hi"})
        await send(anon, {"type": "like", "count": 5})
        errs = await collect(anon, lambda ev: len(of_type(ev, "error")) >= 2)
        assert [e["code"] for e in of_type(errs, "error")] == ["unauthenticated", "unauthenticated"]
        await send(bob, {"type": "comment", "text": "from bob"})
        got = of_type(await collect(anon, lambda ev: bool(of_type(ev, "comment"))), "comment")
        assert [c["text"] for c in got] == ["from bob"]
    st, view = await api.call("GET", f"/api/streams/{s['stream_id']}")
    assert st == 200 and view["likes"] == 0


async def test_malformed_and_unknown_frames_get_error_events(api: Api) -> None:
    """Each bad frame gets the documented error event and the socket stays open (ping still answered)."""
    s = await api.setup_sale()
    cases = [("{oops", "invalid_frame"), ('{"type":"dance"}', "unknown_type"),
             ('{"type":"comment","text":"' + "x" * 281 + '"}', "invalid_comment"),
             ('{"type":"comment","text":"  "}', "invalid_comment"), ('{"type":"like","count":99}', "invalid_like"),
             (b"\x00binary", "invalid_frame")]
    async with viewer(api.server, s["stream_id"], "carol") as (ws, _):
        for frame, code in cases:
            await ws.send(frame)
            got = of_type(await collect(ws, lambda ev: bool(of_type(ev, "error"))), "error")
            assert got[0]["code"] == code and got[0]["message"]
        await send(ws, {"type": "ping"})
        assert of_type(await collect(ws, lambda ev: bool(of_type(ev, "pong"))), "pong")


async def test_oversized_frame_closes_1009(api: Api) -> None:
    """A client frame over 4096 bytes closes the socket with 1009."""
    s = await api.setup_sale()
    async with viewer(api.server, s["stream_id"], "dave") as (ws, _):
        await ws.send('{"type":"comment","text":"' + "y" * 4100 + '"}')
        assert await closed_code(ws) == CloseCode.MESSAGE_TOO_BIG


async def test_flood_of_bad_frames_closes_4029(api: Api) -> None:
    """20 bad frames in 10 s are answered with errors; the 21st closes the socket with 4029."""
    s = await api.setup_sale()
    async with viewer(api.server, s["stream_id"], "erin") as (ws, _):
        for _ in range(20):
            await ws.send("nope")
        assert len(of_type(await collect(ws, lambda ev: len(of_type(ev, "error")) >= 20), "error")) == 20
        await send(ws, {"type": "ping"})
        assert of_type(await collect(ws, lambda ev: bool(of_type(ev, "pong"))), "pong")
        await ws.send("nope")
        assert await closed_code(ws) == CloseCode.RATE_LIMITED


async def test_comment_rate_limit_and_blocked_words(api: Api) -> None:
    """A burst of 5 comments passes, the 6th gets `rate_limited`; a blocked word gets `invalid_comment`."""
    s = await api.setup_sale()
    api.server.app[HUB].words = WordFilter(["scam"])  # type: ignore[index]
    async with viewer(api.server, s["stream_id"], "fay") as (ws, _):
        await send(ws, {"type": "comment", "text": "total SCAM"})
        assert of_type(await collect(ws, lambda ev: bool(of_type(ev, "error"))), "error")[0]["code"] == "invalid_comment"
        for i in range(6):
            await send(ws, {"type": "comment", "text": f"c{i}"})
        ev = await collect(ws, lambda ev: len(of_type(ev, "comment")) >= 5 and bool(of_type(ev, "error")))
        assert [c["text"] for c in of_type(ev, "comment")] == [f"c{i}" for i in range(5)]
        assert [e["code"] for e in of_type(ev, "error")] == ["rate_limited"]


async def test_redis_down_at_connect_closes_4000(api: Api, redis_server: Any) -> None:
    """With Redis unreachable a new viewer is accepted, then closed with 4000 (reconnect with backoff)."""
    s = await api.setup_sale()
    redis_server.stop()
    async with websockets.connect(ws_url(api.server, s["stream_id"])) as ws:
        assert await closed_code(ws) == CloseCode.SERVER_RESTARTING


async def test_viewers_keep_receiving_after_redis_restarts(api: Api, redis_server: Any) -> None:
    """After a Redis restart the hub's subscription comes back: a connected viewer gets new comments."""
    s = await api.setup_sale()
    async with viewer(api.server, s["stream_id"]) as (watch, _), viewer(api.server, s["stream_id"], "kim") as (kim, _):
        await asyncio.to_thread(redis_server.kill)
        await asyncio.to_thread(redis_server.restart)
        for i in range(50):  # comments published before the hub has re-subscribed reach nobody live
            await send(kim, {"type": "comment", "text": f"back {i}"})
            with contextlib.suppress(TimeoutError):
                if of_type(await collect(kim, lambda ev: bool(of_type(ev, "comment")), wait=0.5), "comment"):
                    break
            api.server.app[HUB].comment_limit.purge(float("inf"))  # type: ignore[index]
        else:
            raise AssertionError("no comment came through after the restart")
        seen = of_type(await collect(watch, lambda ev: bool(of_type(ev, "comment"))), "comment")
        assert seen[0]["text"].startswith("back")


async def test_expired_token_keeps_watching_but_cannot_write(api: Api) -> None:
    """A token that expires while its socket is open: the viewer still gets events and pongs, but a
    comment or like is answered with `unauthenticated` and reaches nobody."""
    s = await api.setup_sale()
    token = api.server.token("shortlived", ttl=2)
    async with websockets.connect(ws_url(api.server, s["stream_id"], token)) as ws, \
            viewer(api.server, s["stream_id"], "kim") as (kim, _):
        await recv_events(ws)  # snapshot
        await send(ws, {"type": "comment", "text": "before expiry"})
        assert of_type(await collect(kim, lambda ev: bool(of_type(ev, "comment"))), "comment")[0]["user"] == "shortlived"
        await asyncio.sleep(2.2)
        await send(ws, {"type": "comment", "text": "after expiry"})
        await send(ws, {"type": "like", "count": 3})
        errors = of_type(await collect(ws, lambda ev: len(of_type(ev, "error")) >= 2), "error")
        assert [e["code"] for e in errors[:2]] == ["unauthenticated", "unauthenticated"]
        await send(kim, {"type": "comment", "text": "still here"})
        seen = of_type(await collect(ws, lambda ev: bool(of_type(ev, "comment"))), "comment")
        assert [c["text"] for c in seen] == ["still here"]  # watching goes on; its own comment never went out
        await send(ws, {"type": "ping"})
        assert of_type(await collect(ws, lambda ev: bool(of_type(ev, "pong"))), "pong")
