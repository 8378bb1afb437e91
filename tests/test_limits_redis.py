"""A stalled Redis (docs/limits.md): purchases answer 503 `unavailable` with Retry-After within
LIVESALE_REDIS_TIMEOUT_S, never a late success, and a buyer's first request is never answered 200
"existing order" because of our own re-send. A real redis-server of the test's own, stopped with
SIGSTOP by its PID; a real TCP proxy that loses a reply."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from commerce import inventory, keys
from livesale.config import Settings
from livesale.embedded_redis import EmbeddedRedis
from livesale.redis_client import connect
from tests.helpers import Api, start_app_server


@contextlib.contextmanager
def stopped(redis: EmbeddedRedis):  # type: ignore[no-untyped-def]
    """SIGSTOP the test's own redis-server, and always SIGCONT it after."""
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp-path"])
async def test_purchases_during_a_stalled_redis_answer_503_within_the_timeout(
        settings: Settings, tmp_path: Path, fast_path: bool) -> None:
    """With Redis stopped (SIGSTOP), every purchase, first requests with new keys, answers 503
    `unavailable` with Retry-After within the timeout (2 s, plus scheduling slack); once Redis runs
    again each buyer's retry with its key gets its one order or a fresh one, and stock adds up."""
    own = EmbeddedRedis(tmp_path / "stall-redis").start()
    try:
        cfg = replace(settings, redis_url=own.url, fast_path=fast_path)
        async with start_app_server(cfg) as srv, Api(srv) as api:
            s = await api.setup_sale(stock=100, per_user_limit=1, hold_s=600)
            sale_id = s["sale_id"]
            assert (await api.reserve(sale_id, "warm", "warm-key"))[0] == 201
            n = 40

            async def first_try(i: int) -> tuple[int, dict[str, str], float]:
                started = time.monotonic()
                async with api.session.post(
                        f"{srv.url}/api/sales/{sale_id}/orders", json={"quantity": 1},
                        headers={"Authorization": f"Bearer {srv.token(f'b{i}')}", "Idempotency-Key": f"k{i}"}) as r:
                    body = await r.json()
                    return r.status, {"error": body.get("error", ""), "retry": r.headers.get("Retry-After", "")}, \
                        time.monotonic() - started

            with stopped(own):
                answers = await asyncio.gather(*(first_try(i) for i in range(n)))
            for status, info, elapsed in answers:
                assert (status, info["error"]) == (503, "unavailable") and info["retry"], (status, info)
                assert elapsed < cfg.redis_timeout_s + 1.5, elapsed
            statuses = [(await api.reserve(sale_id, f"b{i}", f"k{i}"))[0] for i in range(n)]
            assert set(statuses) <= {200, 201}, statuses
            r = aioredis.Redis.from_url(own.url)
            try:
                available, held, sold, stock = (int(v) for v in await r.hmget(  # type: ignore[misc]
                    keys.sale(sale_id), "available", "held", "sold", "stock"))
                orders = await r.hlen(keys.idem(sale_id))  # type: ignore[misc]
            finally:
                await r.aclose()
            assert available + held + sold == stock == 100
            assert held + sold == orders == n + 1
    finally:
        own.stop()


class ReplyLosingProxy:
    """A TCP proxy to Redis that, once armed, cuts the first connection on which Redis answers,
    before passing the answer on: the commands ran, their replies are lost."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = False
        self.cut = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if replies and self.armed and not self.cut:
                    self.cut += 1
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(client_r, redis_w, False), self._pipe(redis_r, client_w, True),
                             return_exceptions=True)
        redis_w.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReplyLosingProxy]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self.server.close()


async def test_a_resent_batch_answers_a_first_request_201_not_200(api: Api, redis_server: EmbeddedRedis) -> None:
    """A reserve batch whose reply is lost with its connection is sent again; the script finds the
    orders the first send made under the buyers' keys, and each buyer still gets 201 with that
    order, never 200 "existing order", while a buyer's own earlier key still gets 200."""
    sale_id = (await api.setup_sale(stock=50, per_user_limit=5))["sale_id"]
    async with ReplyLosingProxy(redis_server.port).running() as proxy:
        r = connect(f"redis://127.0.0.1:{proxy.port}")
        reserver = inventory.Reserver(r)
        try:
            before = await reserver.reserve(sale_id, "old", "old-key", 1)
            assert before.code == inventory.RESERVED
            proxy.armed = True
            outcomes = await asyncio.gather(*(reserver.reserve(sale_id, f"u{i}", f"k{i}", 1) for i in range(5)),
                                            reserver.reserve(sale_id, "old", "old-key", 1))
            assert proxy.cut == 1
            assert [o.code for o in outcomes[:5]] == [inventory.RESERVED] * 5
            assert outcomes[5].code == inventory.DUPLICATE and outcomes[5].order_id == before.order_id
            held = await r.hget(keys.sale(sale_id), "held")  # type: ignore[misc]
            assert int(held) == 6
        finally:
            await reserver.close()
            await r.aclose()
