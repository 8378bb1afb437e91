"""The WebSocket hub: per-stream rooms, Redis fan-out, conflation, slow-consumer handling."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Register `/ws/streams/{id}` and the hub's lifecycle on the app (issue 3 fills this in)."""
