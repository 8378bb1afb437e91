"""Redis keys of the hub, hash-tagged per stream `{stream:ID}` (STYLE.md #8).
Channel, seq and log keys are in livesale/bus.py (the contract with commerce and live)."""


def likes(stream_id: str) -> str:
    return f"{{stream:{stream_id}}}:likes"


def viewers_total(stream_id: str) -> str:
    """Last total computed by a process's report (what the `viewers` event carried)."""
    return f"{{stream:{stream_id}}}:viewers"


def viewer_procs(stream_id: str) -> str:
    """Hash: process id -> "local_count:expires_ms" (a process that stops reporting drops out)."""
    return f"{{stream:{stream_id}}}:viewer_procs"


def muted(stream_id: str, user_id: str) -> str:
    """Set while a user is muted on a stream (seen by every process; with an optional TTL)."""
    return f"{{stream:{stream_id}}}:muted:{user_id}"
