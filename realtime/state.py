"""Global per-stream counters kept in Redis by the hub (likes total, viewers over all processes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from livesale.bus import channel, meta_key, now_ms
from livesale.redis_client import LuaScript
from realtime import keys
from realtime.analytics import Report

_LIKES = LuaScript(Path(__file__).with_name("likes_flush.lua"))
_PROC_TOTAL = Path(__file__).with_name("proc_total.lua").read_text()
_VIEWERS = LuaScript(Path(__file__).with_name("viewers_report.lua"), _PROC_TOTAL)
_ANALYTICS = LuaScript(Path(__file__).with_name("analytics_report.lua"), _PROC_TOTAL)


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


def _analytics_keys(stream_id: str) -> list[str]:
    return [keys.analytics(stream_id), keys.analytics_procs(stream_id), keys.analytics_uniques(stream_id),
            keys.analytics_minutes(stream_id), meta_key(stream_id)]


async def report_analytics(redis: aioredis.Redis, stream_id: str, proc: str, report: Report,
                           ttl_ms: int) -> tuple[int, str]:
    """Add one tick's audience figures of this process (analytics_report.lua); returns (viewers now,
    the stream's status)."""
    now = now_ms()
    minutes = sorted(set(report.comments) | set(report.likes))
    args: list[object] = [proc, report.open, now + ttl_ms, now, report.views, report.watch_ms, len(minutes)]
    for m in minutes:
        args += (m, report.comments.get(m, 0), report.likes.get(m, 0))
    args += sorted(report.identities)
    reply: Any = await _ANALYTICS(redis, _analytics_keys(stream_id), args)
    return int(reply[0]), reply[1].decode()


async def audience(redis: aioredis.Redis, stream_id: str) -> dict[str, Any]:
    """The stream's audience figures as the hubs of every process left them (docs/api.md "Stream
    analytics"): viewers now, peak, views, unique viewers, watch ms, comments, likes, per-minute buckets."""
    async with redis.pipeline(transaction=False) as p:
        p.hgetall(keys.analytics(stream_id))
        p.hgetall(keys.analytics_procs(stream_id))
        p.pfcount(keys.analytics_uniques(stream_id))
        p.hgetall(keys.analytics_minutes(stream_id))
        p.get(keys.likes(stream_id))
        figures, procs, uniques, minutes, likes = await p.execute()
    f = {k.decode(): int(v) for k, v in figures.items()}
    return {
        "viewers_now": live_total(procs, time.time() * 1000),
        "viewers_peak": f.get("peak", 0),
        "views": f.get("views", 0),
        "unique_viewers": int(uniques),
        "watch_ms": f.get("watch_ms", 0),
        "comments": f.get("comments", 0),
        "likes": int(likes or 0),
        "minutes": {k.decode(): int(v) for k, v in minutes.items()},
    }
