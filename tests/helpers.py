"""Test helpers: a real server on loopback (in-process or as a `livesale serve` subprocess) and a
small API client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from live.app import create_app, make_site
from live.pages import enable_dev_tokens
from livesale.auth import mint
from livesale.config import Settings
from livesale.embedded_redis import free_port
from livesale.web import Runner


@dataclass
class LiveServer:
    settings: Settings
    port: int
    app: web.Application | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def token(self, user: str, role: str = "viewer", ttl: int = 3600) -> str:
        return mint(self.settings.secret, user, role, ttl)


@contextlib.asynccontextmanager
async def app_runner(settings: Settings) -> AsyncIterator[web.AppRunner]:
    """The real app, started (no socket yet); cleaned up at the end unless the test already did."""
    runner = Runner(create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        yield runner
    finally:
        if runner.server is not None:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def start_app_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """The real app on a real loopback socket, in this process (the site `livesale serve` uses)."""
    async with app_runner(settings) as runner:
        port = free_port()
        await make_site(runner, settings, port=port).start()
        yield LiveServer(settings, port, app=runner.app)


@contextlib.asynccontextmanager
async def start_demo_server(settings: Settings, port: int | None = None) -> AsyncIterator[LiveServer]:
    """The real app on loopback with the demo's POST /dev/token on, as `livesale demo` runs it."""
    app = create_app(settings)
    enable_dev_tokens(app)
    runner = Runner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        port = port or free_port()
        await make_site(runner, settings, port=port).start()
        yield LiveServer(settings, port, app=app)
    finally:
        await runner.cleanup()


def spawn_server(settings: Settings, *, workers: int = 1, extra_env: dict[str, str] | None = None,
                 nofile: int | None = None, command: str = "serve") -> LiveServer:
    """A separate `livesale serve` (or `demo`) process on the given settings' Redis and SQL (with its
    soft RLIMIT_NOFILE lowered to `nofile` when given)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.redis_url or "",
        DATABASE_URL=settings.database_url or "",
        LIVESALE_SECRET=settings.secret,
        LIVESALE_DATA=str(settings.data_dir),
        LIVESALE_SWEEP_INTERVAL=str(settings.sweep_interval_s),
        LIVESALE_WRITER_RECLAIM_MS=str(settings.writer_reclaim_ms),
    )
    env.update(extra_env or {})
    log_path = settings.data_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "live.cli", command, "--port", str(port), "--workers", str(workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=None if nofile is None else functools.partial(_lower_nofile, nofile),  # noqa: PLW1509
        )
    srv = LiveServer(settings, port, proc=proc)
    deadline = time.monotonic() + 20
    import urllib.request

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(srv.url + "/readyz", timeout=0.5) as r:
                if r.status == 200:
                    return srv
        except OSError:
            time.sleep(0.1)
    stop_server(srv)
    raise RuntimeError("server did not become ready")


def _lower_nofile(soft: int) -> None:  # pragma: no cover - runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def stop_server(srv: LiveServer, sig: int = signal.SIGTERM) -> None:
    if srv.proc is not None and srv.proc.poll() is None:
        srv.proc.send_signal(sig)
        try:
            srv.proc.wait(10)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(5)


@contextlib.contextmanager
def server_pair(settings: Settings) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two `livesale serve` processes on one Redis and database; both stopped at the end."""
    a = spawn_server(settings)
    try:
        b = spawn_server(settings)
    except BaseException:
        stop_server(a)
        raise
    try:
        yield a, b
    finally:
        stop_server(a)
        stop_server(b)


@dataclass
class Api:
    """Thin client over the HTTP API for tests. Methods return (status, json)."""

    server: LiveServer
    session: aiohttp.ClientSession = field(init=False)

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, *, token: str | None = None, json: Any = None,
                   data: bytes | str | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.server.url + path, json=json, data=data, headers=h) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = await r.text()
            return r.status, body

    async def setup_sale(self, *, stock: int = 10, per_user_limit: int = 2, hold_s: int = 60,
                         duration_s: int = 600, start: bool = True, host: str = "host1",
                         price_cents: int = 1000) -> dict[str, Any]:
        """A product, a live stream and a sale (started unless start=False). Returns ids and tokens."""
        ht = self.server.token(host, "host")
        sku = f"SKU-{os.urandom(4).hex()}"
        st, p = await self.call("POST", "/api/products", token=ht,
                                json={"sku": sku, "title": "Thing", "price_cents": price_cents})
        assert st == 201, p
        st, s = await self.call("POST", "/api/streams", token=ht, json={"title": "Show"})
        assert st == 201, s
        st, _ = await self.call("POST", f"/api/streams/{s['id']}/start", token=ht)
        assert st == 200
        st, sale = await self.call("POST", f"/api/streams/{s['id']}/sales", token=ht, json={
            "sku": sku, "price_cents": price_cents, "stock": stock, "per_user_limit": per_user_limit,
            "duration_s": duration_s, "hold_s": hold_s})
        assert st == 201, sale
        if start:
            st, sale = await self.call("POST", f"/api/sales/{sale['id']}/start", token=ht)
            assert st == 200, sale
        return {"sale": sale, "sale_id": sale["id"], "stream_id": s["id"], "sku": sku, "host_token": ht}

    async def reserve(self, sale_id: str, user: str, key: str, quantity: int = 1) -> tuple[int, Any]:
        return await self.call("POST", f"/api/sales/{sale_id}/orders", token=self.server.token(user),
                               json={"quantity": quantity}, headers={"Idempotency-Key": key})


async def wait_for(pred: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:  # noqa: ASYNC109 - polls a condition, not an I/O call
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection (EOF, or a reset) within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True
