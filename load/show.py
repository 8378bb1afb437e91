"""`make load`: one bounded local show, end to end, then one report.

1. a private redis-server (livesale.embedded_redis) and `livesale serve` on a free 127.0.0.1 port,
   SQLite and everything else in a temp dir;
2. the host, over HTTP: product, stream, start, pin, a scheduled sale;
3. the swarm's viewers ramp up (in this process, asyncio) and chat;
4. the host opens the sale and Locust's buyers rush it (`locust ... BuyerUser --headless -t`, a
   subprocess) while the viewers watch the stock fall;
5. the host ends the sale; the verifier waits for the order writer and judges Redis against SQL;
6. the report: peak viewers, events/s, lag p50/p99, purchase outcomes, orders/s, oversold and lost.

Every process started here is stopped here, by its PID, also on failure or Ctrl-C. Bounded: the run
takes about ramp + `--sale-seconds` + 30 s. Outputs (Locust CSV/JSON, server log, report) stay in
`--out` (default a new /tmp dir).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from livesale.auth import mint
from livesale.embedded_redis import EmbeddedRedis, free_port
from load import report, verify, wire
from load.swarm import Swarm, SwarmConfig, _raise_fd_limit

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m load.show", description="A bounded local show, end to end.")
    p.add_argument("--viewers", type=int, default=2000)
    p.add_argument("--ramp", type=float, default=400.0, help="viewer connections per second")
    p.add_argument("--buyers", type=int, default=200, help="Locust buyer users")
    p.add_argument("--spawn-rate", type=float, default=100.0, help="buyers started per second (the rush)")
    p.add_argument("--sale-seconds", type=int, default=30, help="how long Locust's buyers run")
    p.add_argument("--stock", type=int, default=500)
    p.add_argument("--per-user-limit", type=int, default=2)
    p.add_argument("--hold", type=int, default=10, help="seconds an unpaid hold lasts")
    p.add_argument("--pay-ratio", type=float, default=0.7)
    p.add_argument("--comments", type=float, default=10.0, help="viewer comments per second (total)")
    p.add_argument("--likes", type=float, default=50.0, help="viewer like frames per second (total)")
    p.add_argument("--client", choices=["aiohttp", "websockets"], default="aiohttp")
    p.add_argument("--workers", type=int, default=1, help="livesale serve --workers")
    p.add_argument("--out", type=Path, default=None, help="directory for outputs (default: a new temp dir)")
    return p


class Show:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.out: Path = args.out or Path(tempfile.mkdtemp(prefix="livesale-load-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = Path(tempfile.mkdtemp(prefix="livesale-load-data-"))
        self.secret = secrets.token_urlsafe(32)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis: EmbeddedRedis | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.locust: asyncio.subprocess.Process | None = None
        self.problems: list[str] = []
        self.locust_grace_s = 60.0  # Locust's own time (--sale-seconds) plus this, then it is killed

    # -- processes -------------------------------------------------------------------------
    def start_server(self) -> None:
        self.redis = EmbeddedRedis(self.data / "redis", appendonly=False).start()
        # Every viewer of the swarm connects from 127.0.0.1: the per-address socket cap (docs/limits.md)
        # would close all but 500 of them 4009.
        env = dict(os.environ, REDIS_URL=self.redis.url, DATABASE_URL=self.db_url, LIVESALE_SECRET=self.secret,
                   LIVESALE_DATA=str(self.data), LIVESALE_WS_PER_IP=str(self.a.viewers + 100))
        log = _log(self.out / "server.log")  # lives as long as the server
        self.server = subprocess.Popen(
            [sys.executable, "-m", "live.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.a.workers)], env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def db_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.data / 'livesale.db'}"

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.server is not None
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited ({self.server.returncode}); see {self.out / 'server.log'}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(self.url + "/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError("server not ready in 30 s")

    def stop_all(self) -> None:
        if self.locust is not None and self.locust.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.locust.kill()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    # -- the show --------------------------------------------------------------------------
    async def host_setup(self, http: aiohttp.ClientSession) -> dict[str, str]:
        a = self.a
        self.host_token = mint(self.secret, "load-host", "host")
        sku, calls = wire.show_setup_calls(stock=a.stock, per_user_limit=a.per_user_limit, hold_s=a.hold,
                                           duration_s=3600)
        ids: dict[str, str] = {"sku": sku}
        for method, path, body in calls:
            st, doc = await self.call(http, method, path.format(**ids), body)
            if st not in (200, 201):
                raise RuntimeError(f"host setup {path}: {st} {doc}")
            if path == "/api/streams":
                ids["stream"] = doc["id"]
            elif path.endswith("/sales"):
                ids["sale"] = doc["id"]
        return ids

    async def call(self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with http.request(method, self.url + path, json=body,
                                headers={"Authorization": f"Bearer {self.host_token}"}) as r:
            return r.status, await r.json(content_type=None)

    async def run_locust(self, ids: dict[str, str]) -> None:
        a = self.a
        env = dict(os.environ, LIVESALE_SECRET=self.secret)
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "BuyerUser", "--headless",
               "-u", str(a.buyers), "-r", str(a.spawn_rate), "-t", f"{a.sale_seconds}s", "--stop-timeout", "10",
               "--host", self.url, "--sale-id", ids["sale"], "--stream-id", ids["stream"],
               "--pay-ratio", str(a.pay_ratio), "--csv", str(self.out / "locust"),
               "--json-file", str(self.out / "locust"), "--only-summary", "--loglevel", "WARNING"]
        with _log(self.out / "locust.log") as log:
            self.locust = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                await asyncio.wait_for(self.locust.wait(), a.sale_seconds + self.locust_grace_s)
            except TimeoutError:
                self.problems.append("locust did not finish in time (killed)")
                with contextlib.suppress(ProcessLookupError):
                    self.locust.kill()
                await self.locust.wait()

    async def run(self) -> int:
        a = self.a
        self.start_server()
        async with aiohttp.ClientSession() as http:
            await self.wait_ready(http)
            ids = await self.host_setup(http)
            print(f"server {self.url} (pid {self.server.pid if self.server else '?'}), stream {ids['stream']}, "
                  f"sale {ids['sale']}; outputs in {self.out}", flush=True)
            ramp_s = a.viewers / a.ramp if a.ramp > 0 else 0.0
            swarm = Swarm(SwarmConfig(url=self.url, stream=ids["stream"], viewers=a.viewers,
                                      duration_s=ramp_s + a.sale_seconds + 20, ramp_per_s=a.ramp, secret=self.secret,
                                      client=a.client, comments_per_s=a.comments, likes_per_s=a.likes,
                                      id_prefix="show-viewer"))
            swarm_task = asyncio.create_task(swarm.run())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(swarm.all_connected.wait(), ramp_s + 20)
            print(f"viewers connected: {swarm.stats.connected}; opening the sale, {a.buyers} buyers rush in",
                  flush=True)
            st, doc = await self.call(http, "POST", f"/api/sales/{ids['sale']}/start")
            if st != 200:
                raise RuntimeError(f"could not open the sale: {st} {doc}")
            opened = time.monotonic()
            await self.run_locust(ids)
            st, _ = await self.call(http, "POST", f"/api/sales/{ids['sale']}/end")
            sale_open_s = time.monotonic() - opened
            if st != 200:
                self.problems.append(f"ending the sale answered {st}")
            swarm.stop.set()  # the show is over: the swarm stops before its deadline
            swarm_stats = (await swarm_task).as_dict()
        assert self.redis is not None
        verdict = await verify.check(self.redis.url, self.db_url, ids["sale"], wait_s=20)
        try:
            locust_stats = report.read_locust_json(self.out / "locust.json")
        except FileNotFoundError:
            locust_stats = {}
            self.problems.append(f"locust wrote no stats; see {self.out / 'locust.log'}")
        reserved = report.outcomes(locust_stats).get("reserved", 0)
        in_redis = sum(verdict.redis_orders.values())
        if locust_stats and reserved != in_redis:
            self.problems.append(f"locust counted {reserved} reserved orders, Redis holds {in_redis}")
        plan = {"viewers": a.viewers, "buyers": a.buyers, "stock": a.stock, "per_user_limit": a.per_user_limit,
                "hold_s": a.hold, "workers": a.workers}
        text = report.show_report(plan=plan, swarm=swarm_stats, locust=locust_stats, sale_open_s=sale_open_s,
                                  verdict=verdict, problems=self.problems)
        (self.out / "report.txt").write_text(text + "\n")
        (self.out / "swarm.json").write_text(json.dumps({k: v for k, v in swarm_stats.items() if k != "lag_samples"}))
        print(text, flush=True)
        return 0 if verdict.ok and not self.problems else 1


def _log(path: Path) -> Any:
    return path.open("wb")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _raise_fd_limit(args.viewers * 2 + 500)  # the server (a child) inherits it: it holds the other ends
    show = Show(args)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    started = time.monotonic()
    try:
        code = asyncio.run(show.run())
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # noqa: BLE001 - report, then still stop every process
        print(f"load show failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        show.stop_all()
    print(f"(whole run {time.monotonic() - started:.0f} s; outputs in {show.out})")
    return code


if __name__ == "__main__":
    sys.exit(main())
