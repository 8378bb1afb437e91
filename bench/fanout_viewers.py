"""The viewer side of bench/fanout.py: N WebSocket viewers in one process, as cheap as possible, so
the load generator is not what limits the server.

Raw asyncio protocols with a minimal RFC 6455 reader (server frames are unmasked): events are counted
with bytes.count on each frame, pings are answered; one viewer in SAMPLE also parses each event's
publish time `t` for the publish -> receive latency. Commands on stdin: `stats` prints and resets
{events, lat_ms: [...], closed, cpu_s}.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path

MARK = b'"type":"comment"'
T_RE = re.compile(rb'"t":([0-9.]+)')
SAMPLE = 20


class Stats:
    events = 0
    closed = 0
    lat: list[float] = []


class Viewer(asyncio.Protocol):
    def __init__(self, request: bytes, sampled: bool, ready: asyncio.Future[None]) -> None:
        self.request = request
        self.sampled = sampled
        self.ready = ready
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        Stats.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during handshake"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(buf[:80].decode(errors="replace")))
                return
            self.upgraded = True
            self.ready.set_result(None)
            buf = buf[end + 4:]
        i, n = 0, len(buf)
        events = 0
        while n - i >= 2:
            ln = buf[i + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - i < 4:
                    break
                ln = int.from_bytes(buf[i + 2:i + 4], "big")
                hl = 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2:i + 10], "big")
                hl = 10
            start, end = i + hl, i + hl + ln
            if end > n:
                break
            op = buf[i] & 0x0F
            if op == 1:
                events += buf.count(MARK, start, end)
                if self.sampled:
                    now = time.time()
                    Stats.lat.extend(now - float(t) for t in T_RE.findall(buf, start, end))
            elif op == 9 and self.transport is not None:  # ping -> pong (masked, zero key)
                self.transport.write(bytes((0x8A, 0x80 | ln)) + b"\0\0\0\0" + buf[start:end])
            i = end
        Stats.events += events
        self.buf = buf[i:]


async def connect(host: str, port: int, path: str, sampled: bool) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    await loop.create_connection(lambda: Viewer(req, sampled, ready), host, port)
    await asyncio.wait_for(ready, 30)


def load_paths(file: str) -> list[str]:
    """One request path per viewer (tokens differ), or a single path for all."""
    return list(json.loads(Path(file).read_text()))


async def main() -> None:
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    paths = load_paths(sys.argv[4])
    for start in range(0, n, 200):
        await asyncio.gather(*(connect(host, port, paths[i % len(paths)], i % SAMPLE == 0)
                               for i in range(start, min(n, start + 200))))
    print(json.dumps({"ready": n}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            t = os.times()
            lat = [round(x * 1000, 3) for x in Stats.lat]
            print(json.dumps({"events": Stats.events, "lat_ms": lat, "closed": Stats.closed,
                              "cpu_s": t.user + t.system}), flush=True)
            Stats.events = 0
            Stats.lat = []


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())
