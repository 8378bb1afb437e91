"""The stream event bus: how `commerce` and `live` reach viewers without knowing about sockets.

Every event for stream S is published as one JSON object on channel `stream:S`; the hub forwards the
bytes as they are. Stream-log events (comment, comment_deleted, pin, sale, stream, video, auction, bid,
group) also get the next per-stream `seq` and an entry in the bounded log `{stream:S}:log` (entry id
`seq-0`), atomically with the publish. State events (likes, stock, viewers) are published only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from livesale.redis_client import LuaScript, is_cluster

LOG_TYPES = frozenset({"comment", "comment_deleted", "pin", "sale", "stream", "video", "auction", "bid", "group"})
STATE_TYPES = frozenset({"likes", "stock", "viewers"})

# append_log(): the one way a stream-log event is written (bus_publish.lua, live/stream_cas.lua).
LOG_PRELUDE = Path(__file__).with_name("bus_log.lua").read_text()
_PUBLISH = LuaScript(Path(__file__).with_name("bus_publish.lua"), LOG_PRELUDE)


def channel(stream_id: str) -> str:
    return f"stream:{stream_id}"


def seq_key(stream_id: str) -> str:
    return f"{{stream:{stream_id}}}:seq"


def log_key(stream_id: str) -> str:
    return f"{{stream:{stream_id}}}:log"


def meta_key(stream_id: str) -> str:
    """Hash of a stream's hot state (host, title, status, pinned...), owned by `live`; here because
    commerce reads a stream's host and status when a sale is opened on it."""
    return f"{{stream:{stream_id}}}:meta"


def now_ms() -> int:
    return int(time.time() * 1000)


class Bus:
    def __init__(self, redis: aioredis.Redis, log_maxlen: int = 1000) -> None:
        self.redis = redis
        self.log_maxlen = log_maxlen
        self.sharded = is_cluster(redis)  # rooms on sharded pub/sub (docs/cluster.md)

    async def publish_log(self, stream_id: str, event: dict[str, Any], *,
                          meta: tuple[str, bytes] | None = None) -> int:
        """Append to the stream log and publish; returns the event's seq. `meta` (field, value) is set
        in the stream's meta hash in the same atomic step."""
        if event.get("type") not in LOG_TYPES:
            raise ValueError(f"not a stream-log event type: {event.get('type')!r}")
        event.setdefault("ts", now_ms())
        body = orjson.dumps(event)[:-1]  # the script closes the object after adding "seq"
        keys = [seq_key(stream_id), log_key(stream_id)]
        args: list[Any] = [channel(stream_id), body, self.log_maxlen]
        if meta is not None:
            keys.append(meta_key(stream_id))
            args += meta
        seq = await _PUBLISH(self.redis, keys, args)
        return int(seq)  # type: ignore[call-overload]

    async def publish_state(self, stream_id: str, event: dict[str, Any]) -> None:
        if event.get("type") not in STATE_TYPES:
            raise ValueError(f"not a state event type: {event.get('type')!r}")
        if self.sharded:
            await self.redis.spublish(channel(stream_id), orjson.dumps(event))
        else:
            await self.redis.publish(channel(stream_id), orjson.dumps(event))
