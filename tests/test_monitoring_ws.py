"""WebSocket series scraped from a real server with real `websockets` viewers: connections, comments
published and fanned out, publish->send lag, client errors."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tests.helpers import Api, wait_for
from tests.metrics_scrape import Samples, delta, scrape, value

VIEWERS = 3


async def _events_until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Frames read until one holds an event of `kind`; all events read."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not any(e["type"] == kind for e in seen):
            data = orjson.loads(await ws.recv())
            seen.extend(data if isinstance(data, list) else [data])
    return seen


async def test_viewers_comments_and_errors_move_the_ws_series(api: Api) -> None:
    """3 viewers add 3 connections; one comment is published once, sent 3 times and lag-timed once;
    an anonymous comment counts one `unauthenticated` client error; closing brings connections back."""
    s = await api.setup_sale(stock=2)
    url = f"{api.server.ws_url}/ws/streams/{s['stream_id']}"

    async def samples() -> Samples:
        return await scrape(api.session, api.server.url)

    before = await samples()
    async with contextlib.AsyncExitStack() as stack:
        socks = [await stack.enter_async_context(websockets.connect(f"{url}?token={api.server.token(f'v{i}')}"))
                 for i in range(VIEWERS)]
        anon = await stack.enter_async_context(websockets.connect(url))
        for ws in [*socks, anon]:
            await _events_until(ws, "snapshot")
        joined = await samples()
        assert delta(before, joined, "livesale_ws_connections") == VIEWERS + 1

        await socks[0].send(orjson.dumps({"type": "comment", "text": "how much is shipping?"}).decode())
        for ws in [*socks, anon]:
            got = [e for e in await _events_until(ws, "comment") if e["type"] == "comment"]
            assert [e["text"] for e in got] == ["how much is shipping?"]
        await anon.send(orjson.dumps({"type": "comment", "text": "hi"}).decode())
        err = [e for e in await _events_until(anon, "error") if e["type"] == "error"]
        assert err[0]["code"] == "unauthenticated"
        after = await samples()

    assert delta(before, after, "livesale_ws_events_published_total", type="comment") == 1
    assert delta(before, after, "livesale_ws_events_sent_total", type="comment") == VIEWERS + 1
    assert delta(before, after, "livesale_ws_publish_lag_seconds_count") == 1
    assert delta(before, after, "livesale_ws_client_errors_total", code="unauthenticated") == 1
    assert delta(before, after, "livesale_ws_events_dropped_total", type="comment", reason="slow_consumer") == 0

    async def all_left() -> bool:
        return value(await samples(), "livesale_ws_connections") == value(before, "livesale_ws_connections")

    await wait_for(all_left, 10)
