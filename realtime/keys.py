"""Redis keys of the hub, hash-tagged per stream `{stream:ID}` (STYLE.md #8).
Channel, seq and log keys are in livesale/bus.py (the contract with commerce and live)."""


def likes(stream_id: str) -> str:
    return f"{{stream:{stream_id}}}:likes"


def viewers_total(stream_id: str) -> str:
    return f"{{stream:{stream_id}}}:viewers"
