"""Headless Locust runs of load/locustfile.py against a real server: what Locust counts is what the
server holds. Locust runs only as a subprocess (its gevent patching must not touch this process)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from livesale.config import Settings
from load import verify
from load.report import count, read_locust_json
from tests.helpers import Api

LOCUSTFILE = str(Path(__file__).resolve().parent.parent / "load" / "locustfile.py")


async def run_locust(settings: Settings, url: str, out: Path, *args: str, seconds: int = 8) -> dict[tuple[str, str], Any]:
    """Run Locust headless; return its final stats keyed by (request type, name)."""
    env = dict(os.environ, LIVESALE_SECRET=settings.secret)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", LOCUSTFILE, *args, "--headless", "-t", f"{seconds}s",
        "--stop-timeout", "10", "--host", url, "--json-file", str(out / "run"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    assert (out / "run.json").exists(), output.decode()[-3000:]
    return read_locust_json(out / "run.json")


async def test_buyers_reserved_count_matches_redis_and_sql(api: Api, settings: Settings, tmp_path: Path) -> None:
    """Locust's 'reserved' and 'paid' outcome counts equal the orders Redis and SQL hold for the sale,
    the sale sells out (the 409s are counted), and the verifier finds nothing wrong."""
    s = await api.setup_sale(stock=10, per_user_limit=1, hold_s=2)
    rows = await run_locust(settings, api.server.url, tmp_path, "BuyerUser", "-u", "8", "-r", "8",
                            "--sale-id", s["sale_id"], "--stream-id", s["stream_id"], seconds=8)
    reserved, paid = count(rows, "ORDER", "reserved"), count(rows, "ORDER", "paid")
    assert reserved > 0, rows.keys()
    r = aioredis.Redis.from_url(settings.redis_url or "")
    orders = verify.parse_orders(await r.hgetall(f"{{sale:{s['sale_id']}}}:orders"))
    await r.aclose()
    assert reserved == len(orders)
    assert paid == sum(1 for o in orders.values() if o.status == "paid")
    report = await verify.check(settings.redis_url or "", settings.database_url or "", s["sale_id"], wait_s=10)
    assert report.ok, report.text()
    assert sum(report.sql_orders.values()) == reserved
    assert report.sold == paid
    assert count(rows, "ORDER", "sold_out") > 0  # 8 buyers for ~8 s want far more than 10 units


async def test_viewers_report_websocket_events_the_server_published(api: Api, settings: Settings, tmp_path: Path) -> None:
    """Locust viewers connect over the WebSocket, get a snapshot each, and every comment they report
    sending is one the server published; received comments are reported with their lag."""
    s = await api.setup_sale()
    stats = await run_locust(settings, api.server.url, tmp_path, "ViewerUser", "-u", "5", "-r", "5", "--viewer-wait", "1", "2", "--comment-share", "0.5",
                             "--sale-id", s["sale_id"], "--stream-id", s["stream_id"], seconds=8)
    r = aioredis.Redis.from_url(settings.redis_url or "")
    log = await r.xrange(f"{{stream:{s['stream_id']}}}:log")
    await r.aclose()
    published = sum(1 for _id, f in log if b'"type":"comment"' in next(iter(f.values())))
    assert count(stats, "WS", "connect") == 5 and count(stats, "WS", "recv snapshot") == 5
    assert count(stats, "WS", "send like") > 0
    assert published == count(stats, "WS", "send comment") > 0
    assert 0 < count(stats, "WS", "recv comment") <= published * 5
    assert stats[("WS", "connect")]["num_failures"] == 0


async def test_distributed_show_shape_host_sets_up_and_workers_find_the_sale(
        api: Api, settings: Settings, tmp_path: Path) -> None:
    """Master + worker with the show shape: the host user creates the show, the ids reach the worker's
    buyers and viewers through the master, and the master's totals equal the orders in Redis."""
    from livesale.embedded_redis import free_port

    port = str(free_port())
    env = dict(os.environ, LIVESALE_SECRET=settings.secret, LIVESALE_SHAPE_VIEWERS="4", LIVESALE_SHAPE_BUYERS="3",
               LIVESALE_SHAPE_RAMP="10", LIVESALE_SHAPE_SALE_OPEN="3", LIVESALE_SHAPE_SPIKE_RATE="10",
               LIVESALE_SHAPE_DURATION="9", LIVESALE_SHAPE_DRAIN="5")
    files = f"{LOCUSTFILE},{Path(LOCUSTFILE).with_name('shape.py')}"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", files, "--worker", "--master-host", "127.0.0.1", "--master-port", port,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        master = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", "-f", files, "--master", "--master-bind-host", "127.0.0.1",
            "--master-bind-port", port, "--expect-workers", "1", "--headless", "--host", api.server.url,
            "--sale-open-after", "3", "--stop-timeout", "10", "--json-file", str(tmp_path / "run"),
            "--stock", "20", "--hold-s", "2",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(master.communicate(), 90)
        await asyncio.wait_for(worker.wait(), 30)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert (tmp_path / "run.json").exists(), output.decode()[-3000:]
    stats = read_locust_json(tmp_path / "run.json")
    r = aioredis.Redis.from_url(settings.redis_url or "")
    sales = [k.decode() async for k in r.scan_iter(match="{sale:*}") if k.decode().endswith("}")]
    assert len(sales) == 1, sales
    sale_id = sales[0][len("{sale:"):-1]
    orders = verify.parse_orders(await r.hgetall(f"{{sale:{sale_id}}}:orders"))
    await r.aclose()
    assert count(stats, "POST", "/api/sales/[id]/start") == 1
    assert count(stats, "WS", "connect") == 4 and count(stats, "WS", "recv snapshot") == 4
    assert count(stats, "ORDER", "reserved") == len(orders) > 0


class _DroppingProxy:
    """A loopback TCP proxy in front of the real server that loses the first response to each request
    whose request line contains one of `paths`: the server did the work, the client sees its
    connection drop (what a 503 after the write, or a broken connection, looks like to a buyer)."""

    def __init__(self, port: int, paths: tuple[bytes, ...]) -> None:
        self.port, self.pending = port, set(paths)
        self.dropped: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.port)
        drop = asyncio.Event()

        async def up() -> None:
            while data := await cr.read(65536):
                line = data.split(b"\r\n", 1)[0]
                for p in list(self.pending):
                    if p in line:
                        self.pending.discard(p)
                        self.dropped.append(p)
                        drop.set()
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            while data := await ur.read(65536):
                if drop.is_set():
                    return  # the answer is lost: close without relaying it
                cw.write(data)
                await cw.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (cw, uw):
            w.close()


async def test_buyer_whose_answer_was_lost_counts_the_order_it_got_on_retry(
        api: Api, settings: Settings, tmp_path: Path) -> None:
    """A reserve (and a pay) whose answer is lost is retried with the same key; the retry's 200 with the
    same order (and the pay retry's 409 `order_not_pending` with status `paid`) count as `reserved`
    (and `paid`), so Locust's counts still equal the orders Redis holds."""
    s = await api.setup_sale(stock=50, per_user_limit=1, hold_s=30)
    proxy = _DroppingProxy(api.server.port, (b"/orders HTTP", b"/pay HTTP"))
    url = await proxy.start()
    try:
        rows = await run_locust(settings, url, tmp_path, "BuyerUser", "-u", "1", "-r", "1", "--pay-ratio", "1",
                                "--sale-id", s["sale_id"], "--stream-id", s["stream_id"], seconds=5)
    finally:
        await proxy.stop()
    assert sorted(proxy.dropped) == [b"/orders HTTP", b"/pay HTTP"]
    r = aioredis.Redis.from_url(settings.redis_url or "")
    orders = verify.parse_orders(await r.hgetall(f"{{sale:{s['sale_id']}}}:orders"))
    await r.aclose()
    outcomes = {name: e["num_requests"] for (kind, name), e in rows.items() if kind == "ORDER"}
    assert count(rows, "ORDER", "reserved") == len(orders) > 0, outcomes
    assert count(rows, "ORDER", "paid") == sum(1 for o in orders.values() if o.status == "paid"), outcomes
    assert set(outcomes) <= {"reserved", "paid", "retry_same_order"}, outcomes
