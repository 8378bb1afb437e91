"""Soak under hostile load (docs/limits.md): one `livesale serve` with its default limits, and together
for `--seconds` (default 240, at most 600): reading viewers, viewers that never read (closed 4008 and
back), commenters, buyers, slowloris clients (closed by the header timeout and back) and idle
connections (closed by keep-alive and back). Every 10 s it prints the server's open connections,
RSS and file handles; at the end, whether RSS and handles stayed flat after the warm-up (the first
quarter): the last quarter's highest within 10% (RSS) and 50 handles of the second quarter's.

Everything runs on 127.0.0.1 against its own embedded redis-server and server, bounded in time and
count; it stops only the processes it started.

    python bench/soak.py [--seconds 240] [--viewers 150] [--slowloris 150] [--idle 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from livesale.auth import mint  # noqa: E402
from livesale.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

SECRET = "soak-secret-0123456789abcdef-0123456789"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def handles(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.args = args
        self.stop = asyncio.Event()
        self.counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def setup(self, http: aiohttp.ClientSession) -> tuple[str, str]:
        host = {"Authorization": f"Bearer {mint(SECRET, 'soak-host', 'host')}"}
        sku = f"SOAK-{os.urandom(3).hex()}"
        async with http.post(self.url + "/api/products", headers=host,
                             json={"sku": sku, "title": "Soak", "price_cents": 100}) as r:
            assert r.status == 201, await r.text()
        async with http.post(self.url + "/api/streams", headers=host, json={"title": "Soak"}) as r:
            stream = (await r.json())["id"]
        async with http.post(f"{self.url}/api/streams/{stream}/start", headers=host) as r:
            assert r.status == 200
        async with http.post(f"{self.url}/api/streams/{stream}/sales", headers=host, json={
                "sku": sku, "price_cents": 100, "stock": 1_000_000, "per_user_limit": 100,
                "duration_s": 3600, "hold_s": 30}) as r:
            sale = (await r.json())["id"]
        async with http.post(f"{self.url}/api/sales/{sale}/start", headers=host) as r:
            assert r.status == 200
        return stream, sale

    async def viewer(self, http: aiohttp.ClientSession, stream: str, i: int) -> None:
        token = mint(SECRET, f"viewer{i}")
        while not self.stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with http.ws_connect(f"{self.url.replace('http', 'ws')}/ws/streams/{stream}?token={token}") as ws:
                    self.count("viewer_connects")
                    while not self.stop.is_set():
                        msg = await ws.receive(timeout=5)
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
            await asyncio.sleep(1)

    async def deaf_viewer(self, stream: str) -> None:
        """A viewer that never reads: closed 4008 when over its bound, then it comes back."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                key = base64.b64encode(os.urandom(16)).decode()
                await loop.sock_sendall(sock, (
                    f"GET /ws/streams/{stream} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
                self.count("deaf_connects")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await self.stop.wait()
            except OSError:
                pass
            finally:
                sock.close()

    async def commenter(self, http: aiohttp.ClientSession, stream: str, i: int) -> None:
        token = mint(SECRET, f"commenter{i}")
        text = "soak " + "x" * 200
        while not self.stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with http.ws_connect(f"{self.url.replace('http', 'ws')}/ws/streams/{stream}?token={token}") as ws:
                    while not self.stop.is_set():
                        await ws.send_str(f'{{"type":"comment","text":"{text}"}}')
                        self.count("comments")
                        await asyncio.sleep(1.0)
            await asyncio.sleep(1)

    async def buyer(self, http: aiohttp.ClientSession, sale: str, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if n % 50 == 1:  # a new user every 50 purchases: within the per-user limit, new tokens now and then
                token = mint(SECRET, f"buyer{i}-{n}")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with http.post(f"{self.url}/api/sales/{sale}/orders", json={"quantity": 1},
                                     headers={"Authorization": f"Bearer {token}",
                                              "Idempotency-Key": f"b{i}-{n}"}) as r:
                    await r.read()
                    self.count(f"buy_{r.status}")
            await asyncio.sleep(0.05)

    async def slowloris(self, i: int) -> None:
        first = (b"POST /api/sales/sa000000000000/orders HTTP/1.1\r\nHost: x\r\n" if i % 2 else
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.count("slowloris_connects")
                try:
                    writer.write(first)
                    while not self.stop.is_set() and not writer.is_closing():
                        await asyncio.sleep(1.0)
                        writer.write(b"X-a: b\r\n")
                        await writer.drain()
                except OSError:
                    pass
                finally:
                    writer.close()
            await asyncio.sleep(0.5)

    async def idle(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.count("idle_connects")
                try:
                    with contextlib.suppress(TimeoutError, OSError):
                        async with asyncio.timeout(200):
                            await reader.read()  # until the keep-alive timeout closes it
                finally:
                    writer.close()
            await asyncio.sleep(0.5)

    async def sample(self, pid: int, http: aiohttp.ClientSession, out: list[tuple[float, int, float, int]]) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            opened = -1
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with http.get(self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    for line in (await r.text()).splitlines():
                        if line.startswith("livesale_open_connections "):
                            opened = int(float(line.split()[1]))
            row = (time.monotonic() - started, opened, rss_mib(pid), handles(pid))
            out.append(row)
            print(f"{row[0]:6.0f}s  connections {row[1]:5d}  rss {row[2]:7.1f} MiB  handles {row[3]:5d}  "
                  + " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())), flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.stop.wait()

    async def run(self, pid: int) -> list[tuple[float, int, float, int]]:
        a = self.args
        rows: list[tuple[float, int, float, int]] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as monitor:
            stream, sale = await self.setup(http)
            tasks = [asyncio.create_task(self.sample(pid, monitor, rows))]
            tasks += [asyncio.create_task(self.viewer(http, stream, i)) for i in range(a.viewers)]
            tasks += [asyncio.create_task(self.deaf_viewer(stream)) for _ in range(a.deaf)]
            tasks += [asyncio.create_task(self.commenter(http, stream, i)) for i in range(a.commenters)]
            tasks += [asyncio.create_task(self.buyer(http, sale, i)) for i in range(a.buyers)]
            tasks += [asyncio.create_task(self.slowloris(i)) for i in range(a.slowloris)]
            tasks += [asyncio.create_task(self.idle()) for _ in range(a.idle)]
            await asyncio.sleep(a.seconds)
            self.stop.set()
            _done, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return rows


def verdict(rows: list[tuple[float, int, float, int]]) -> bool:
    n = len(rows)
    if n < 8:
        print("too few samples for a verdict")
        return False
    second, last = rows[n // 4 : n // 2], rows[3 * n // 4 :]
    rss2, rss4 = max(r[2] for r in second), max(r[2] for r in last)
    fd2, fd4 = max(r[3] for r in second), max(r[3] for r in last)
    flat = rss4 <= rss2 * 1.10 and fd4 <= fd2 + 50
    print(f"after warm-up: RSS max {rss2:.1f} -> {rss4:.1f} MiB ({(rss4 / rss2 - 1) * 100:+.1f}%), "
          f"handles max {fd2} -> {fd4} ({fd4 - fd2:+d}): {'flat' if flat else 'NOT FLAT'}")
    return flat


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=240)
    p.add_argument("--viewers", type=int, default=150)
    p.add_argument("--deaf", type=int, default=10, help="viewers that never read")
    p.add_argument("--commenters", type=int, default=5)
    p.add_argument("--buyers", type=int, default=20)
    p.add_argument("--slowloris", type=int, default=150)
    p.add_argument("--idle", type=int, default=200)
    args = p.parse_args()
    args.seconds = max(30, min(args.seconds, 600))
    random.seed(1)
    with tempfile.TemporaryDirectory(prefix="livesale-soak-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        port = free_port()
        env = dict(os.environ, REDIS_URL=redis.url, LIVESALE_SECRET=SECRET, LIVESALE_DATA=tmp,
                   LIVESALE_WS_PER_IP="100000")  # every client here shares 127.0.0.1
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - closed in finally
        server = subprocess.Popen([sys.executable, "-m", "live.cli", "serve", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("server did not start") from None
                    time.sleep(0.2)
            print(f"soak: {args.seconds} s; {args.viewers} viewers, {args.deaf} never reading, {args.commenters} "
                  f"commenters, {args.buyers} buyers, {args.slowloris} slowloris, {args.idle} idle; "
                  f"server pid {server.pid}, default limits but LIVESALE_WS_PER_IP", flush=True)
            rows = asyncio.run(Soak(url, args).run(server.pid))
            return 0 if verdict(rows) else 1
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            log.close()
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
