"""Redis keys of `live`: a stream's, hash-tagged `{stream:ID}`, and the analytics figures of a sale,
tagged `{sale:ID}` like the sale's own keys (CONTRIBUTING.md #8)."""


from livesale.bus import meta_key


def meta(stream_id: str) -> str:
    """Hash: host, title, status, created_at, started_at, ended_at, pinned (product JSON)."""
    return meta_key(stream_id)


def publisher(stream_id: str) -> str:
    """String, with a TTL its process refreshes: `process:session` of the stream's WHIP publisher.
    The stream's `video` is "live" while it exists (live/media/publisher.lua)."""
    return "{stream:" + stream_id + "}:publisher"


def final_stats(stream_id: str) -> str:
    """String: the stream's final stats JSON, written once they can no longer change (live/stats.py)."""
    return f"{{stream:{stream_id}}}:an:final"


def sale_figures(sale_id: str) -> str:
    """Hash: the sale's order figures folded from its events (live/stats_fold.lua): cursor, orders,
    paid_orders, units_sold, gmv_cents. Tagged like the sale's own keys, so the fold is one slot."""
    return f"{{sale:{sale_id}}}:an"


def sale_buyers(sale_id: str) -> str:
    """Set: users with a paid order of the sale."""
    return f"{{sale:{sale_id}}}:an:buyers"


def sale_minutes(sale_id: str) -> str:
    """Hash: "<minute since epoch>:o" orders created, ":g" GMV of the orders paid that minute."""
    return f"{{sale:{sale_id}}}:an:min"
