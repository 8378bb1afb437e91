"""Video: hosts publish over WHIP, viewers play over WHEP (docs/media.md).

    http.py     routes: auth, stream checks, offer checks, CORS
    sdp.py      offer parsing and checks (pure)
    backend.py  the MediaBackend seam
    local.py    LocalBackend: aiortc in this process, one Relay per stream
    relay.py    one decode, one encode per codec, the same packets to every viewer
    proxy.py    ProxyBackend: WHIP/WHEP forwarded to an SFU or media server
    ice.py      the addresses we offer as ICE candidates
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from live.media.backend import MEDIA, Answer, Kind, MediaBackend
from live.media.config import MediaConfig
from livesale.services import SERVICES

__all__ = ["MEDIA", "Answer", "Kind", "MediaBackend", "MediaConfig", "make_backend", "setup"]


def make_backend(config: MediaConfig) -> MediaBackend:
    if config.backend == "local":
        from live.media.local import LocalBackend

        return LocalBackend(config)
    if config.backend == "proxy":
        from live.media.proxy import ProxyBackend

        return ProxyBackend(config)
    raise ValueError(f"LIVESALE_MEDIA_BACKEND must be 'local' or 'proxy', not {config.backend!r}")


def setup(app: web.Application, config: MediaConfig | None = None) -> None:
    """Register the WHIP/WHEP routes and the media backend's lifecycle on the app."""
    backend = make_backend(config or MediaConfig.from_env())

    async def media_ctx(app: web.Application) -> AsyncIterator[None]:
        await backend.start(app[SERVICES])
        app[MEDIA] = backend
        yield
        await backend.close()

    async def on_shutdown(_app: web.Application) -> None:
        await backend.close()  # every peer connection closed before the runner closes sockets

    from live.media import http  # here, not above: live.api imports live.media.backend, http imports live.api

    app.cleanup_ctx.append(media_ctx)
    app.on_shutdown.append(on_shutdown)
    http.setup(app)
