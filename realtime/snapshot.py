"""What a viewer gets first: a `snapshot`, or for `since=<seq>` the missed stream-log events and
then the current state values (docs/design.md "WebSocket", Resume)."""

from __future__ import annotations

from typing import Any, cast

import orjson

from livesale.bus import log_key, now_ms, seq_key
from livesale.services import Services
from realtime import state

# How far back the snapshot looks for its `recent` comments (deleted ones are left out).
RECENT_SCAN = 500


def log_events(raw: object) -> list[tuple[bytes, bytes]]:
    """(entry id, event JSON) pairs of an XRANGE/XREVRANGE reply on a stream log."""
    return [(eid, fields[b"d"]) for eid, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], raw or [])]


async def current_seq(svc: Services, stream_id: str) -> int:
    return int(await svc.redis.get(seq_key(stream_id)) or 0)


async def snapshot(svc: Services, source: dict[str, Any], stream_id: str, seq: int, recent_n: int,
                   *, recovered: bool | None = None) -> dict[str, Any]:
    entries = log_events(await svc.redis.xrevrange(log_key(stream_id), max=f"{seq}-0", min="-", count=RECENT_SCAN))
    deleted: set[str] = set()
    recent: list[dict[str, Any]] = []
    for _id, data in entries:  # newest first
        ev = orjson.loads(data)
        if ev.get("type") == "comment_deleted":
            deleted.add(ev.get("id"))
        elif ev.get("type") == "comment" and ev.get("id") not in deleted and len(recent) < recent_n:
            recent.append(ev)
    recent.reverse()
    snap: dict[str, Any] = {"type": "snapshot", **source, **await state.stream_counters(svc.redis, stream_id),
                            "recent": recent, "seq": seq, "ts": now_ms()}
    if recovered is not None:
        snap["recovered"] = recovered
    return snap


async def missed(svc: Services, stream_id: str, since: int, seq: int) -> list[bytes] | None:
    """Stream-log events after `since` up to `seq`, in order; None when the log no longer holds them
    (or `since` is ahead of the stream: the client saw another life of it)."""
    if since > seq:
        return None
    if since == seq:
        return []
    entries = log_events(await svc.redis.xrange(log_key(stream_id), min=f"{since + 1}-0", max=f"{seq}-0"))
    if not entries or entries[0][0] != f"{since + 1}-0".encode():
        return None
    return [data for _id, data in entries]


def state_events(source: dict[str, Any], counters: dict[str, int]) -> list[bytes]:
    """The current likes, stock and viewers values after a replay."""
    out = [orjson.dumps({"type": "likes", "total": counters["likes"]})]
    for sale in source.get("sales") or []:
        if "available" in sale:
            out.append(orjson.dumps({"type": "stock", "sale": sale["id"], "available": sale["available"]}))
    out.append(orjson.dumps({"type": "viewers", "count": counters["viewers"]}))
    return out

