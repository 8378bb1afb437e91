"""Redis keys of a stream, hash-tagged `{stream:ID}` (STYLE.md #8)."""


def meta(stream_id: str) -> str:
    """Hash: host, title, status, created_at, started_at, ended_at, pinned (product JSON)."""
    return f"{{stream:{stream_id}}}:meta"
