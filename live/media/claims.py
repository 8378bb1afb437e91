"""One publisher per stream across processes: a Redis claim set, refreshed and released in one atomic
step with the stream's `video` event (live/media/publisher.lua). The stream's `video` field is "live"
while the claim exists (live/api.py)."""

from __future__ import annotations

from pathlib import Path

import orjson

from live import keys
from livesale.bus import LOG_PRELUDE, channel, log_key, now_ms, seq_key
from livesale.redis_client import LuaScript
from livesale.services import Services

_SCRIPT = LuaScript(Path(__file__).with_name("publisher.lua"), LOG_PRELUDE)
TICK_S = 2.0  # how often a process refreshes its claims
TTL_MS = 10_000  # a process that died lets go of its streams' claims after this


async def claim(svc: Services, op: str, stream_id: str, owner: str) -> bool:
    """op: "claim" (with the `video` live event), "refresh", or "release" (with `video` none). False
    when the claim is taken (claim) or is not `owner`'s (refresh, release)."""
    status = "live" if op == "claim" else "none"
    event = orjson.dumps({"type": "video", "status": status, "ts": now_ms()})[:-1]
    done = await _SCRIPT(
        svc.redis, [keys.publisher(stream_id), seq_key(stream_id), log_key(stream_id)],
        [op, owner, TTL_MS, channel(stream_id), event, svc.bus.log_maxlen],
    )
    return bool(done)


async def still_wanted(svc: Services, stream_id: str, owner: str) -> bool:
    """Refresh `owner`'s claim; False when it was lost or the stream ended (or is gone): the caller
    then closes its publisher."""
    held = await claim(svc, "refresh", stream_id, owner)
    status = await svc.redis.hget(keys.meta(stream_id), "status")  # type: ignore[misc]
    return held and status not in (None, b"ended")
