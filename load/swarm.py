"""`livesale swarm`: thousands of WebSocket viewers per core, for counts Locust's per-user greenlets
cannot reach. Each viewer is one coroutine on one connection; it reads every frame (an event or a JSON
array of events), measures each event's lag from its `ts`, and reconnects with `since` on 4000-4499
closes. A few viewers comment and like at a set total rate. Bounded by `--viewers` and `--duration`.

    livesale swarm --url http://127.0.0.1:8080 --stream st... --viewers 2000 --duration 30

Tokens are minted locally from LIVESALE_SECRET (the server's key); without it viewers are anonymous
and watch only. `--procs N` runs N processes (viewers split evenly) and merges their numbers; on
several machines run one swarm each and add the reports (`--json`).

The client library is a flag: `aiohttp` (default) or `websockets`. Per connection aiohttp was the
cheaper one here (numbers and the command to measure them in load/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from livesale.auth import mint
from load import wire

COMMENTS = ("🔥", "want it", "size?", "how much", "bought!", "so cute", "ship to EU?", "restock pls")


@dataclass
class SwarmConfig:
    url: str  # http://host:port of the server
    stream: str
    viewers: int = 100
    duration_s: float = 30.0
    ramp_per_s: float = 500.0
    secret: str = ""
    client: str = "aiohttp"
    comments_per_s: float = 0.0  # total over the swarm
    likes_per_s: float = 0.0
    connect_timeout_s: float = 10.0
    id_prefix: str = "swarm"


@dataclass
class SwarmStats:
    viewers: int = 0
    connected: int = 0
    peak: int = 0
    connects: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    frames: int = 0
    bytes: int = 0
    events: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    comments_sent: int = 0
    likes_sent: int = 0
    lag: wire.LagStats = field(default_factory=wire.LagStats)
    started: float = 0.0
    all_connected_at: float = 0.0
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.events.values())
        return {
            "viewers": self.viewers, "peak_connections": self.peak, "connects": self.connects,
            "connect_failures": self.connect_failures, "reconnects": self.reconnects, "frames": self.frames,
            "bytes": self.bytes, "events": dict(self.events), "events_total": total,
            "events_per_s": total / self.elapsed if self.elapsed else 0.0,
            "closes": dict(self.closes), "errors": dict(self.errors),
            "comments_sent": self.comments_sent, "likes_sent": self.likes_sent,
            "lag_ms": self.lag.summary(), "lag_samples": self.lag.samples, "elapsed_s": self.elapsed,
            "ramp_s": (self.all_connected_at - self.started) if self.all_connected_at else None,
        }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the reports of several swarms (processes or machines) into one."""
    lag = wire.LagStats()
    out: dict[str, Any] = {"events": Counter(), "closes": Counter(), "errors": Counter()}
    for p in parts:
        for k in ("viewers", "peak_connections", "connects", "connect_failures", "reconnects", "frames", "bytes",
                  "events_total", "events_per_s", "comments_sent", "likes_sent"):
            out[k] = out.get(k, 0) + p[k]
        for k in ("events", "closes", "errors"):
            out[k].update(p[k])
        lag.extend(p["lag_samples"])
        lag.seen += p["lag_ms"]["n"] - len(p["lag_samples"])
        out["elapsed_s"] = max(out.get("elapsed_s", 0.0), p["elapsed_s"])
        ramps = [x for x in (out.get("ramp_s"), p["ramp_s"]) if x is not None]
        out["ramp_s"] = max(ramps) if ramps else None
    out.update(events=dict(out["events"]), closes=dict(out["closes"]), errors=dict(out["errors"]),
               lag_ms=lag.summary(), lag_samples=lag.samples)
    return out


class Socket(Protocol):
    close_code: int | None

    def frames(self) -> AsyncIterator[str | bytes]: ...
    async def send(self, text: str) -> None: ...


class _AiohttpSocket:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.close_code: int | None = None

    async def frames(self) -> AsyncIterator[str | bytes]:
        import aiohttp

        async for msg in self.ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                yield msg.data
        self.close_code = self.ws.close_code

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)


class _WebsocketsSocket:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.close_code: int | None = None

    async def frames(self) -> AsyncIterator[str | bytes]:
        from websockets.exceptions import ConnectionClosed

        try:
            async for data in self.ws:
                yield data
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    async def send(self, text: str) -> None:
        await self.ws.send(text)


class Connector:
    """Opens viewer sockets with one client library; one shared session for aiohttp."""

    def __init__(self, client: str, timeout: float) -> None:
        if client not in ("aiohttp", "websockets"):
            raise ValueError("client must be aiohttp or websockets")
        self.client, self.timeout = client, timeout
        self._session: Any = None

    async def __aenter__(self) -> Connector:
        if self.client == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @contextlib.asynccontextmanager
    async def connect(self, url: str) -> AsyncIterator[Socket]:
        if self.client == "aiohttp":
            async with self._session.ws_connect(url, autoping=True, heartbeat=None, compress=0,
                                                timeout=self._ws_timeout(), max_msg_size=0) as ws:
                yield _AiohttpSocket(ws)
        else:
            import websockets

            async with websockets.connect(url, ping_interval=None, open_timeout=self.timeout,
                                          close_timeout=2, max_size=None, compression=None) as ws:
                yield _WebsocketsSocket(ws)

    def _ws_timeout(self) -> Any:
        import aiohttp

        return aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)


class Swarm:
    def __init__(self, cfg: SwarmConfig) -> None:
        self.cfg = cfg
        self.stats = SwarmStats(viewers=cfg.viewers)
        self.stop = asyncio.Event()
        self.open: dict[int, Socket] = {}  # viewer index -> its live socket (for comments/likes)
        self.all_connected = asyncio.Event()
        self.tokens = [mint(cfg.secret, f"{cfg.id_prefix}-{i}", "viewer", ttl=int(cfg.duration_s) + 3600)
                       if cfg.secret else None for i in range(cfg.viewers)]

    def _url(self, i: int, since: int | None) -> str:
        base = self.cfg.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        q = [f"token={self.tokens[i]}"] if self.tokens[i] else []
        if since is not None:
            q.append(f"since={since}")
        return f"{base}/ws/streams/{self.cfg.stream}" + ("?" + "&".join(q) if q else "")

    def _on_frame(self, data: str | bytes) -> int | None:
        st = self.stats
        received = wire.now_ms()
        st.frames += 1
        st.bytes += len(data)
        seq = None
        for ev in wire.decode_frame(data):
            kind = str(ev.get("type"))
            st.events[kind] += 1
            if kind == "error":
                st.errors[str(ev.get("code"))] += 1
            lag = wire.lag_ms(ev, received)
            if lag is not None:
                st.lag.add(lag)
            if isinstance(ev.get("seq"), int):
                seq = ev["seq"]
        return seq

    async def viewer(self, conn: Connector, i: int) -> None:
        st = self.stats
        since: int | None = None
        attempt = 0
        while not self.stop.is_set():
            code: int | None = None
            try:
                async with conn.connect(self._url(i, since)) as sock:
                    st.connects += 1
                    if since is not None:
                        st.reconnects += 1
                    st.connected += 1
                    st.peak = max(st.peak, st.connected)
                    if st.connected == self.cfg.viewers and not self.all_connected.is_set():
                        st.all_connected_at = time.monotonic()
                        self.all_connected.set()
                    self.open[i] = sock
                    try:
                        async for data in sock.frames():
                            seq = self._on_frame(data)
                            if seq is not None:
                                since = seq
                    finally:
                        self.open.pop(i, None)
                        st.connected -= 1
                    code = sock.close_code
                    st.closes[str(code)] += 1
            except Exception:  # noqa: BLE001 - a refused, timed-out or dropped connect is counted, then retried
                st.connect_failures += 1
                code = 4000  # a refused or dropped connect is worth a retry
            if self.stop.is_set() or not wire.should_reconnect(code):
                return
            attempt += 1
            await asyncio.sleep(wire.retry_delay(attempt, None) * random.uniform(0.5, 1.5))

    async def _chatter(self, rate: float, make: Any, counter: str) -> None:
        """Send `rate` frames/s in total from random connected, authenticated viewers."""
        if rate <= 0 or not any(self.tokens):
            return
        # Start once the ramp is done, so every viewer can see every comment (the counts then add up).
        ramp_s = self.cfg.viewers / self.cfg.ramp_per_s if self.cfg.ramp_per_s > 0 else 0.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_connected.wait(), ramp_s + 5)
        while not self.stop.is_set():
            await asyncio.sleep(1 / rate)
            if not self.open:
                continue
            i = random.choice(list(self.open))
            with contextlib.suppress(Exception):
                await self.open[i].send(make())
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    async def run(self) -> SwarmStats:
        cfg = self.cfg
        _raise_fd_limit(cfg.viewers + 100)
        st = self.stats
        loop = asyncio.get_running_loop()
        st.started = time.monotonic()
        deadline = loop.time() + cfg.duration_s
        async with Connector(cfg.client, cfg.connect_timeout_s) as conn:
            tasks = []
            chat = [
                asyncio.create_task(self._chatter(
                    cfg.comments_per_s, lambda: orjson.dumps({"type": "comment", "text": random.choice(COMMENTS)}).decode(),
                    "comments_sent")),
                asyncio.create_task(self._chatter(
                    cfg.likes_per_s, lambda: orjson.dumps({"type": "like", "count": random.randint(1, 5)}).decode(),
                    "likes_sent")),
            ]
            for i in range(cfg.viewers):
                if loop.time() >= deadline or self.stop.is_set():
                    break
                tasks.append(asyncio.create_task(self.viewer(conn, i)))
                if cfg.ramp_per_s > 0:
                    await asyncio.sleep(1 / cfg.ramp_per_s)
            with contextlib.suppress(TimeoutError):  # the deadline, or stop.set() by whoever runs the swarm
                await asyncio.wait_for(self.stop.wait(), max(0.0, deadline - loop.time()))
            self.stop.set()
            st.elapsed = time.monotonic() - st.started
            for t in tasks + chat:
                t.cancel()
            await asyncio.gather(*tasks, *chat, return_exceptions=True)
        return st


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


async def run_swarm(cfg: SwarmConfig) -> dict[str, Any]:
    return (await Swarm(cfg).run()).as_dict()


def _run_one(cfg: SwarmConfig) -> dict[str, Any]:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(run_swarm(cfg))


def _child(cfg: SwarmConfig, out: Any) -> None:  # pragma: no cover - runs in a spawned process
    out.send(_run_one(cfg))


def run_procs(cfg: SwarmConfig, procs: int) -> dict[str, Any]:
    """Split the viewers over `procs` processes (one core each) and merge their reports."""
    if procs <= 1:
        return _run_one(cfg)
    ctx = multiprocessing.get_context("spawn")
    per, extra = divmod(cfg.viewers, procs)
    pipes, children = [], []
    for n in range(procs):
        part = SwarmConfig(**{**cfg.__dict__, "viewers": per + (n < extra), "id_prefix": f"{cfg.id_prefix}{n}",
                              "comments_per_s": cfg.comments_per_s / procs, "likes_per_s": cfg.likes_per_s / procs})
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(part, tx), daemon=True)
        p.start()
        pipes.append(rx)
        children.append(p)
    parts = []
    for rx, p in zip(pipes, children, strict=True):
        if rx.poll(cfg.duration_s + 60):
            parts.append(rx.recv())
        p.join(10)
        if p.is_alive():
            p.kill()
    return merge(parts)


def text(r: dict[str, Any]) -> str:
    lag = r["lag_ms"]
    return "\n".join([
        f"viewers {r['viewers']}, peak connections {r['peak_connections']}, connect failures {r['connect_failures']}, "
        f"reconnects {r['reconnects']}",
        f"events {r['events_total']} in {r['elapsed_s']:.1f}s = {r['events_per_s']:.0f}/s delivered "
        f"({r['frames']} frames, {r['bytes'] / 1e6:.1f} MB)",
        "by type: " + ", ".join(f"{k} {v}" for k, v in sorted(r["events"].items())),
        f"lag ms (from ts): p50 {lag['p50']:.0f}, p99 {lag['p99']:.0f}, max {lag['max']:.0f} over {lag['n']} events",
        f"sent: {r['comments_sent']} comments, {r['likes_sent']} likes; errors {r['errors'] or 'none'}; "
        f"closes {r['closes'] or 'none'}",
    ])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livesale swarm", description="asyncio WebSocket viewer swarm")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    p.add_argument("--stream", required=True, help="stream id")
    p.add_argument("--viewers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=30.0, help="seconds, ramp included")
    p.add_argument("--ramp", type=float, default=500.0, help="new connections per second")
    p.add_argument("--client", choices=["aiohttp", "websockets"], default="aiohttp")
    p.add_argument("--comments", type=float, default=0.0, help="comments per second over the whole swarm")
    p.add_argument("--likes", type=float, default=0.0, help="like frames per second over the whole swarm")
    p.add_argument("--procs", type=int, default=1, help="processes to split the viewers over")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.viewers < 1 or a.duration <= 0:
        print("livesale swarm: --viewers and --duration must be positive", file=sys.stderr)
        return 2
    cfg = SwarmConfig(url=a.url, stream=a.stream, viewers=a.viewers, duration_s=a.duration, ramp_per_s=a.ramp,
                      secret=os.environ.get("LIVESALE_SECRET", ""), client=a.client, comments_per_s=a.comments,
                      likes_per_s=a.likes, id_prefix=f"swarm{os.getpid()}")
    report = run_procs(cfg, a.procs)
    if a.json:
        print(json.dumps({k: v for k, v in report.items() if k != "lag_samples"}))
    else:
        print(text(report))
    return 0 if report["peak_connections"] else 1


if __name__ == "__main__":
    sys.exit(main())
