"""The asyncio viewer swarm against a real server: what it counts is what the server published."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
import websockets

from livesale.bus import log_key
from livesale.config import Settings
from load.swarm import Swarm, SwarmConfig, merge
from tests.helpers import Api, wait_for


async def _published_comments(settings: Settings, stream_id: str) -> int:
    r = aioredis.Redis.from_url(settings.redis_url or "")
    entries = await r.xrange(log_key(stream_id))
    await r.aclose()
    return sum(1 for _id, f in entries if orjson.loads(next(iter(f.values()))).get("type") == "comment")


@pytest.mark.parametrize("client", ["aiohttp", "websockets"])
async def test_swarm_receives_every_published_comment(api: Api, settings: Settings, client: str) -> None:
    """50 swarm viewers each receive every comment the server published (counted from its stream log),
    each comment's lag is measured, and the peak is 50 connections."""
    s = await api.setup_sale()
    stream = s["stream_id"]
    swarm = Swarm(SwarmConfig(url=api.server.url, stream=stream, viewers=50, duration_s=6, ramp_per_s=200,
                              secret=settings.secret, client=client))
    run = asyncio.create_task(swarm.run())
    await wait_for(swarm.all_connected.is_set, 20)
    async with websockets.connect(f"{api.server.ws_url}/ws/streams/{stream}?token={api.server.token('talker')}") as ws:
        for n in range(5):
            await ws.send(orjson.dumps({"type": "comment", "text": f"comment {n}"}).decode())
        await wait_for(lambda: swarm.stats.events["comment"] >= 5 * 50, 10)
    stats = (await run).as_dict()
    published = await _published_comments(settings, stream)
    assert published == 5
    assert stats["events"]["comment"] == published * 50
    assert stats["events"]["snapshot"] == 50 and stats["peak_connections"] == 50
    assert stats["lag_ms"]["n"] >= published * 50
    assert stats["connect_failures"] == 0 and stats["errors"] == {}


async def test_swarm_comments_reach_every_viewer_and_merge_adds_up(api: Api, settings: Settings) -> None:
    """Comments the swarm itself sends are published and fanned out to all its viewers; merging two
    reports adds their counts."""
    s = await api.setup_sale()
    stream = s["stream_id"]
    swarm = Swarm(SwarmConfig(url=api.server.url, stream=stream, viewers=20, duration_s=4, ramp_per_s=0,
                              secret=settings.secret, comments_per_s=4, likes_per_s=10))
    stats = (await swarm.run()).as_dict()
    published = await _published_comments(settings, stream)
    assert 0 < published <= stats["comments_sent"]
    # The swarm starts chatting once all its viewers are connected, so each sees every comment.
    assert stats["events"]["comment"] == published * 20
    both = merge([stats, stats])
    assert both["events"]["comment"] == 2 * stats["events"]["comment"]
    assert both["lag_ms"]["n"] == 2 * stats["lag_ms"]["n"] and both["peak_connections"] == 40
