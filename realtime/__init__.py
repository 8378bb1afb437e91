"""The WebSocket hub: per-stream rooms, Redis fan-out, conflation, slow-consumer handling.

realtime never imports live or commerce (docs/design.md "Packages and who owns what"): what a snapshot says
about the stream and its sales comes from the `snapshot_source` the app passes in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from livesale.services import SERVICES, Services
from livesale.web import guarded
from realtime import moderation
from realtime.handler import HUB, SOCKET_CAPS, ws_handler
from realtime.hub import Hub, HubConfig, SnapshotSource
from realtime.limits import SocketCaps

__all__ = ["HUB", "SOCKET_CAPS", "Hub", "HubConfig", "setup"]


async def _no_source(_svc: Services, _stream_id: str) -> None:
    return None


def setup(app: web.Application, snapshot_source: SnapshotSource = _no_source,
          config: HubConfig | None = None) -> None:
    """Register `/ws/streams/{id}`, the moderation routes and the hub's lifecycle on the app."""

    async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        hub = Hub(svc, snapshot_source, config or HubConfig.from_env())
        await hub.start()
        app[HUB] = hub
        app[SOCKET_CAPS] = SocketCaps(svc.settings.ws_per_user, svc.settings.ws_per_ip)
        yield
        await hub.stop()

    async def on_shutdown(app: web.Application) -> None:
        # Viewers hear "server restarting" (4000: reconnect with since=) before the runner closes sockets.
        hub = app.get(HUB)
        if hub is not None:
            await hub.stop()

    app.cleanup_ctx.append(hub_ctx)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/ws/streams/{id}", guarded(ws_handler))
    moderation.setup(app)
