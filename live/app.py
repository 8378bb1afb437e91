"""The aiohttp application factory: one process serves the API, the WebSocket hub, media and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import sqlalchemy as sa
from aiohttp import web

import commerce.api
import commerce.orders
import live.api
import live.discovery
import live.media
import live.openapi
import live.pages
import live.stats
import realtime
from livesale.auth import Verifier
from livesale.bus import Bus
from livesale.config import Settings
from livesale.db import create_tables, make_engine
from livesale.errors import Unavailable
from livesale.fasthttp import FastSite
from livesale.limits import GatedSite
from livesale.redis_client import connect, redis_errors
from livesale.services import SERVICES, Services
from livesale.web import MAX_BODY, catch_all, guarded, json_response, quiet_client_errors
from monitoring import exposition
from monitoring import metrics as m


def create_app(settings: Settings) -> web.Application:
    if not settings.redis_url:
        raise ValueError("settings.redis_url is required (the CLI starts an embedded Redis when unset)")
    app = web.Application(client_max_size=MAX_BODY)  # errors: livesale.web.guarded on each route
    quiet_client_errors()
    m.ENABLED = settings.metrics

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        redis = connect(settings.redis_url or "", timeout_s=settings.redis_timeout_s)
        engine = make_engine(settings.sql_url)
        await create_tables(engine)
        auth = Verifier.from_settings(settings)
        refresher = None
        if auth.jwks is not None:
            await auth.jwks.refresh()  # bounded by the fetch timeout; a failure is logged, not fatal
            refresher = asyncio.create_task(auth.jwks.run())
        app[SERVICES] = Services(
            settings=settings,
            redis=redis,
            db=engine,
            auth=auth,
            bus=Bus(redis, settings.stream_log_maxlen),
        )
        yield
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await redis.aclose()
        await engine.dispose()

    app.cleanup_ctx.append(services_ctx)
    live.api.setup(app)
    live.discovery.setup(app)
    live.media.setup(app)
    live.stats.setup(app)
    commerce.api.setup(app)
    realtime.setup(app, snapshot_source=live.api.snapshot_source)
    live.pages.setup(app)
    app.router.add_get("/metrics", guarded(exposition.metrics_handler))
    app.router.add_get("/healthz", guarded(healthz))
    app.router.add_get("/readyz", guarded(readyz))
    live.openapi.setup(app)
    catch_all(app)  # last: every path no route above matched
    return app


def make_site(runner: web.AppRunner, settings: Settings, *, port: int | None = None,
              reuse_port: bool = False) -> web.TCPSite:
    """The listening socket of a set-up runner: purchase requests on livesale.fasthttp's lean path
    (every other request, and all of them with `fast_path` off, on aiohttp), accepted under the
    connection cap (docs/limits.md)."""
    port = settings.port if port is None else port
    if settings.fast_path:
        routes = {"/api/sales/{id}/orders": commerce.orders.fast_reserve,
                  "/api/auctions/{id}/bids": commerce.api.fast_bid}
        return FastSite(runner, settings.host, port, routes, reuse_port=reuse_port)
    return GatedSite(runner, settings.host, port, reuse_port=reuse_port)


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis and SQL both answer; 503 `unavailable` otherwise."""
    svc = request.app[SERVICES]
    with redis_errors():
        await svc.redis.ping()  # type: ignore[misc]
    try:
        async with svc.db.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any SQL failure means not ready
        raise Unavailable(f"sql unreachable: {exc.__class__.__name__}") from exc
    return json_response({"status": "ready"})
