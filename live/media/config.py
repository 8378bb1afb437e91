"""Media settings (docs/media.md, "Settings"), read from LIVESALE_MEDIA_* and LIVESALE_WHEP_MAX."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class MediaConfig:
    # Addresses whose UDP sockets we offer as ICE host candidates. Empty: every address of every
    # interface but loopback (aioice's choice, RFC 8445 §5.1.1.1). Loopback, or a public address bound
    # on the machine, only when listed here.
    addresses: tuple[str, ...] = ()
    # STUN/TURN URLs for our own gathering (e.g. "stun:stun.example.net:3478"); none by default, so a
    # server never reaches out to a third party to answer an offer.
    ice_servers: tuple[str, ...] = ()
    # Viewers (WHEP sessions) one process serves; past it, 503 at_capacity. bench/media.py measures
    # what a core sustains (docs/benchmarks.md).
    whep_max: int = 300
    # A session whose peer has not connected this long after its 201 is closed.
    connect_timeout_s: float = 15.0
    # The one encode per stream: H.264 Baseline (libx264 `ultrafast`) or VP8, at this rate and GOP.
    fps: int = 30
    bitrate: int = 1_500_000
    gop: int = 30
    x264_preset: str = "ultrafast"
    # Encoded audio packets a listener may have waiting; past it the backlog is dropped.
    viewer_queue: int = 30
    # "local": this process runs the media (aiortc). "proxy": WHIP/WHEP are forwarded to `upstream`, a
    # URL template with {kind} and {stream} of an SFU or media server speaking WHIP/WHEP (docs/media.md,
    # "Large audiences").
    backend: str = "local"
    upstream: str = ""
    # Retry-After (s) on 409 no_publisher and 503 at_capacity.
    retry_after_s: int = 5

    @classmethod
    def from_env(cls) -> MediaConfig:
        env = os.environ
        return cls(
            addresses=_csv(env.get("LIVESALE_MEDIA_ADDRESSES", "")),
            ice_servers=_csv(env.get("LIVESALE_MEDIA_ICE_SERVERS", "")),
            whep_max=int(env.get("LIVESALE_WHEP_MAX", "300")),
            connect_timeout_s=float(env.get("LIVESALE_MEDIA_CONNECT_TIMEOUT_S", "15")),
            fps=int(env.get("LIVESALE_MEDIA_FPS", "30")),
            bitrate=int(env.get("LIVESALE_MEDIA_BITRATE", "1500000")),
            gop=int(env.get("LIVESALE_MEDIA_GOP", "30")),
            x264_preset=env.get("LIVESALE_MEDIA_X264_PRESET", "ultrafast"),
            backend=env.get("LIVESALE_MEDIA_BACKEND", "local"),
            upstream=env.get("LIVESALE_MEDIA_UPSTREAM", ""),
        )
