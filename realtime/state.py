"""Global per-stream counters kept in Redis by the hub (likes total, viewers over all processes)."""

from __future__ import annotations

import time
from pathlib import Path

import redis.asyncio as aioredis

from livesale.bus import channel, now_ms
from livesale.redis_client import LuaScript
from realtime import keys

_LIKES = LuaScript(Path(__file__).with_name("likes_flush.lua"))
_VIEWERS = LuaScript(Path(__file__).with_name("viewers_report.lua"))


async def stream_counters(redis: aioredis.Redis, stream_id: str) -> dict[str, int]:
    async with redis.pipeline(transaction=False) as p:
        p.get(keys.likes(stream_id))
        p.hgetall(keys.viewer_procs(stream_id))
        likes, procs = await p.execute()
    return {"likes": int(likes or 0), "viewers": live_total(procs, time.time() * 1000)}


def live_total(procs: dict[bytes, bytes], now_ms_: float) -> int:
    total = 0
    for v in procs.values():
        count, _, expires = v.partition(b":")
        if expires.isdigit() and int(expires) >= now_ms_ and count.isdigit():
            total += int(count)
    return total


async def add_likes(redis: aioredis.Redis, stream_id: str, n: int) -> int:
    return int(await _LIKES(redis, [keys.likes(stream_id)], [n, channel(stream_id), now_ms()]))  # type: ignore[call-overload]


async def report_viewers(redis: aioredis.Redis, stream_id: str, proc: str, count: int, ttl_ms: int) -> int:
    now = now_ms()
    return int(await _VIEWERS(  # type: ignore[call-overload]
        redis, [keys.viewer_procs(stream_id), keys.viewers_total(stream_id)],
        [proc, count, now + ttl_ms, now, channel(stream_id)],
    ))
