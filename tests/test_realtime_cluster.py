"""Two real `livesale serve` processes on one Redis serve one stream as one room."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from livesale.codes import CloseCode
from livesale.config import Settings
from tests.helpers import Api, LiveServer, server_pair, spawn_server, stop_server
from tests.test_realtime_ws import closed_code, collect, of_type, send, viewer


@pytest.fixture
def two_servers(settings: Settings) -> Iterator[tuple[LiveServer, LiveServer]]:
    with server_pair(settings) as pair:
        yield pair


async def test_comments_likes_and_viewers_cross_processes(two_servers: tuple[LiveServer, LiveServer]) -> None:
    """A viewer on process A sees a comment posted on B, likes sent to both add up, and B's viewers count
    until B dies."""
    a, b = two_servers
    async with Api(a) as api:
        s = await api.setup_sale()
    sid = s["stream_id"]

    def viewers_are(n: int):  # type: ignore[no-untyped-def]
        return lambda ev: bool(of_type(ev, "viewers")) and of_type(ev, "viewers")[-1]["count"] == n

    async with viewer(a, sid) as (on_a, _), viewer(a, sid, "liker") as (liker_a, _):
        async with viewer(b, sid, "bea") as (on_b, _):
            await collect(on_a, viewers_are(3))
            await send(on_b, {"type": "comment", "text": "hello from B"})
            got = of_type(await collect(on_a, lambda ev: bool(of_type(ev, "comment"))), "comment")
            assert [(c["user"], c["text"]) for c in got] == [("bea", "hello from B")]
            await send(liker_a, {"type": "like", "count": 7})
            await send(on_b, {"type": "like", "count": 5})
            likes = await collect(on_a, lambda ev: any(e["total"] == 12 for e in of_type(ev, "likes")))
            assert max(e["total"] for e in of_type(likes, "likes")) == 12
            stop_server(b, signal.SIGKILL)  # B dies without saying goodbye
            await collect(on_a, viewers_are(2), wait=20)


async def test_server_shutdown_closes_viewers_with_4000(settings: Settings) -> None:
    """A `livesale serve` process stopped with SIGTERM tells its viewers 4000 (reconnect with since=)."""
    srv = spawn_server(settings)
    try:
        async with Api(srv) as api:
            s = await api.setup_sale()
        async with viewer(srv, s["stream_id"]) as (ws, first):
            assert first[0]["type"] == "snapshot"
            await asyncio.to_thread(stop_server, srv)
            assert await closed_code(ws) == CloseCode.SERVER_RESTARTING
    finally:
        stop_server(srv)
