"""Redis keys of a stream, hash-tagged `{stream:ID}` (STYLE.md #8)."""


from livesale.bus import meta_key


def meta(stream_id: str) -> str:
    """Hash: host, title, status, created_at, started_at, ended_at, pinned (product JSON)."""
    return meta_key(stream_id)


def publisher(stream_id: str) -> str:
    """String, with a TTL its process refreshes: `process:session` of the stream's WHIP publisher.
    The stream's `video` is "live" while it exists (live/media/publisher.lua)."""
    return "{stream:" + stream_id + "}:publisher"
