"""Redis keys of the hub, hash-tagged per stream `{stream:ID}` (CONTRIBUTING.md #8).
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


def analytics(stream_id: str) -> str:
    """Hash of the stream's audience figures: views, peak, watch_ms, comments (docs/api.md "Stream analytics")."""
    return f"{{stream:{stream_id}}}:an"


def analytics_procs(stream_id: str) -> str:
    """Hash: process id -> "open viewer sockets (the host's left out):expires_ms"."""
    return f"{{stream:{stream_id}}}:an:procs"


def analytics_uniques(stream_id: str) -> str:
    """HyperLogLog of viewer identities (user id, or connection for anonymous viewers)."""
    return f"{{stream:{stream_id}}}:an:uv"


def analytics_minutes(stream_id: str) -> str:
    """Hash: "<minute since epoch>:v" viewers max, ":c" comments, ":l" likes."""
    return f"{{stream:{stream_id}}}:an:min"
