"""Global per-stream counters kept in Redis by the hub (likes total, viewers over all processes)."""

from __future__ import annotations

import redis.asyncio as aioredis

from realtime import keys


async def stream_counters(redis: aioredis.Redis, stream_id: str) -> dict[str, int]:
    likes, viewers = await redis.mget(keys.likes(stream_id), keys.viewers_total(stream_id))
    return {"likes": int(likes or 0), "viewers": int(viewers or 0)}
