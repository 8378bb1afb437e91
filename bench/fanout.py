"""Fan-out benchmark (issue 3): N viewers on one `livesale serve` process, a publisher at rising rates;
then the same load generator against a minimal `websockets.broadcast()` room (bench/fanout_ref_room.py)
as the reference, so the hub's cost shows as a ratio measured in one run.

Everything runs on 127.0.0.1, bounded in time. The server under test is pinned to one core, the
viewers (bench/fanout_viewers.py), the publisher and Redis to another (`taskset`). Reported per rate:
delivered events/s (and the expected N x rate), publish -> receive p50/p99 (sampled viewers), server
CPU per delivered event (utime+stime from /proc/<pid>/stat), Redis CPU per delivered event, the
generator's CPU share, and server RSS per idle connection.

    python bench/fanout.py [--viewers 2000] [--rates 50,200] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from livesale.auth import mint  # noqa: E402
from livesale.bus import Bus  # noqa: E402
from livesale.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from livesale.redis_client import connect  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
SECRET = "fanout-bench-secret-0123456789abcdef"
TEXT = "great deal, adding to cart right now!!"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


@dataclass
class Row:
    server: str
    rate: int
    delivered_s: float
    expected_s: float
    p50: float
    p99: float
    server_us: float
    redis_us: float
    gen_cpu: float
    closed: int


class Generator:
    def __init__(self, core: int, port: int, n: int, paths: list[str], tmp: Path) -> None:
        pf = tmp / f"paths-{port}.json"
        pf.write_text(json.dumps(paths))
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(core), sys.executable, str(ROOT / "bench" / "fanout_viewers.py"),
             "127.0.0.1", str(port), str(n), str(pf)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self) -> dict:  # type: ignore[type-arg]
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("viewer generator exited")
        return json.loads(line)

    def stats(self) -> dict:  # type: ignore[type-arg]
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait_http(url: str, proc: subprocess.Popen, deadline_s: float = 30) -> None:  # type: ignore[type-arg]
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=0.5) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def post(url: str, token: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


async def paced(rate: int, seconds: float, send: Callable[[int], Awaitable[None]]) -> int:
    """Call `send(i)` `rate` times a second on an absolute schedule for `seconds`."""
    start = time.monotonic()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)
    return total


def event(i: int) -> dict:  # type: ignore[type-arg]
    return {"type": "comment", "id": f"b{i}", "user": "bench", "text": TEXT, "t": time.time()}


async def measure(name: str, server_pid: int, redis_pid: int, gen: Generator, n: int, rates: list[int],
                  seconds: float, publish: Callable[[int], Awaitable[None]]) -> list[Row]:
    rows = []
    for rate in rates:
        gen.stats()  # reset counters
        c0, r0 = cpu_s(server_pid), cpu_s(redis_pid)
        g0 = gen.stats()["cpu_s"]
        t0 = time.monotonic()
        await paced(rate, seconds, publish)
        await asyncio.sleep(1.0)  # let the last events arrive
        elapsed = time.monotonic() - t0
        st = gen.stats()
        c1, r1 = cpu_s(server_pid), cpu_s(redis_pid)
        events = st["events"]
        lat = st["lat_ms"]
        rows.append(Row(name, rate, events / seconds, float(n * rate), pct(lat, 50), pct(lat, 99),
                        (c1 - c0) / max(events, 1) * 1e6, (r1 - r0) / max(events, 1) * 1e6,
                        (st["cpu_s"] - g0) / elapsed * 100, st["closed"]))
    return rows


def start_livesale(core: int, port: int, tmp: Path, redis: EmbeddedRedis,
                   root: Path = ROOT) -> tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    """A `livesale serve` process (from the source tree `root`) pinned to `core`, with one live stream."""
    # Every viewer connects from 127.0.0.1: no per-address socket cap (docs/limits.md) here.
    env = dict(os.environ, REDIS_URL=redis.url, DATABASE_URL=f"sqlite+aiosqlite:///{tmp / f'ls-{root.name}.db'}",
               LIVESALE_SECRET=SECRET, LIVESALE_DATA=str(tmp / f"data-{root.name}"), PYTHONPATH=str(root),
               LIVESALE_WS_PER_IP="1000000")
    proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "live.cli", "serve",
                             "--port", str(port)], env=env, cwd=root, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc)
    host = mint(SECRET, "benchhost", "host")
    sid = post(base + "/api/streams", host, {"title": "bench"})["id"]
    post(base + f"/api/streams/{sid}/start", host, {})
    time.sleep(0.5)
    return proc, sid


def start_reference(core: int, port: int) -> subprocess.Popen:  # type: ignore[type-arg]
    proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable,
                             str(ROOT / "bench" / "fanout_ref_room.py"), str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(0.5)
    return proc


async def bench_livesale(args: argparse.Namespace, tmp: Path, redis: EmbeddedRedis, name: str = "livesale",
                         root: Path = ROOT) -> tuple[list[Row], float]:
    port = free_port()
    proc, sid = start_livesale(args.server_core, port, tmp, redis, root)
    gen = None
    try:
        rss0 = rss_kib(proc.pid)
        paths = [f"/ws/streams/{sid}?token={mint(SECRET, f'v{i}', 'viewer', 3600)}" for i in range(args.viewers)]
        gen = Generator(args.gen_core, port, args.viewers, paths, tmp)
        gen.read()
        await asyncio.sleep(2.0)
        per_conn = (rss_kib(proc.pid) - rss0) / args.viewers
        r = connect(redis.url)
        bus = Bus(r)

        async def publish(i: int) -> None:
            await bus.publish_log(sid, event(i))

        rows = await measure(name, proc.pid, redis.proc.pid, gen, args.viewers,  # type: ignore[union-attr]
                             args.rates, args.seconds, publish)
        await r.aclose()
        return rows, per_conn
    finally:
        if gen is not None:
            gen.stop()
        proc.terminate()
        proc.wait(15)


async def bench_reference(args: argparse.Namespace, tmp: Path, redis: EmbeddedRedis) -> tuple[list[Row], float]:
    import websockets

    port = free_port()
    proc = start_reference(args.server_core, port)
    gen = None
    try:
        rss0 = rss_kib(proc.pid)
        gen = Generator(args.gen_core, port, args.viewers, ["/room"], tmp)
        gen.read()
        await asyncio.sleep(2.0)
        per_conn = (rss_kib(proc.pid) - rss0) / args.viewers
        async with websockets.connect(f"ws://127.0.0.1:{port}/publish", compression=None) as pub:
            async def publish(i: int) -> None:
                await pub.send(json.dumps({**event(i), "seq": i}, separators=(",", ":")))

            rows = await measure("reference", proc.pid, redis.proc.pid, gen, args.viewers,  # type: ignore[union-attr]
                                 args.rates, args.seconds, publish)
        return rows, per_conn
    finally:
        if gen is not None:
            gen.stop()
        proc.terminate()
        proc.wait(15)


def report(rows: list[Row], rss: dict[str, float], args: argparse.Namespace) -> None:
    print(f"\nfan-out: {args.viewers} viewers, rates {args.rates} events/s, {args.seconds:g} s each; "
          f"server on core {args.server_core}, viewers+publisher+redis on core {args.gen_core} "
          f"(cores are shared with other users: expect noise)")
    print(f"{'server':<10} {'rate':>5} {'delivered/s':>12} {'expected/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'srv us/ev':>10} {'redis us/ev':>11} {'gen cpu%':>9} {'closed':>7}")
    for r in rows:
        print(f"{r.server:<10} {r.rate:>5} {r.delivered_s:>12.0f} {r.expected_s:>11.0f} {r.p50:>8.1f} {r.p99:>8.1f} "
              f"{r.server_us:>10.2f} {r.redis_us:>11.3f} {r.gen_cpu:>9.0f} {r.closed:>7}")
    for name, kib in rss.items():
        print(f"{name}: server RSS per idle connection {kib:.1f} KiB")
    ours = {r.rate: r for r in rows if r.server == "livesale"}
    ref = {r.rate: r for r in rows if r.server == "reference"}
    base = {r.rate: r for r in rows if r.server == "baseline"}
    for rate in args.rates:
        if rate in ours and rate in ref:
            print(f"rate {rate}/s: livesale/reference server CPU per delivered event = "
                  f"{ours[rate].server_us / ref[rate].server_us:.2f}")
        if rate in ours and rate in base:
            print(f"rate {rate}/s: livesale/baseline ({args.baseline}) server CPU per delivered event = "
                  f"{ours[rate].server_us / base[rate].server_us:.2f}, p99 "
                  f"{ours[rate].p99:.1f} / {base[rate].p99:.1f} ms")


def checkout(ref: str, root: Path) -> None:
    """The source tree of commit `ref` in `root` (a new directory)."""
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--viewers", type=int, default=2000)
    p.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[50, 200])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--gen-core", type=int, default=1)
    p.add_argument("--only", choices=["livesale", "reference"])
    p.add_argument("--baseline", metavar="GIT_REF",
                   help="also run `livesale serve` from this commit (server `baseline`), before ours: "
                        "before/after in one run")
    args = p.parse_args()
    os.sched_setaffinity(0, {args.gen_core})  # the publisher shares the generator's core
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as d:
        tmp = Path(d)
        redis = EmbeddedRedis(tmp / "redis", appendonly=False).start()
        try:
            assert redis.proc is not None
            os.sched_setaffinity(redis.proc.pid, {args.gen_core})
            rows: list[Row] = []
            rss: dict[str, float] = {}
            if args.baseline:
                root = tmp / "baseline"
                await asyncio.to_thread(checkout, args.baseline, root)
                r, rss["baseline"] = await bench_livesale(args, tmp, redis, "baseline", root)
                rows += r
            if args.only in (None, "livesale"):
                r, rss["livesale"] = await bench_livesale(args, tmp, redis)
                rows += r
            if args.only in (None, "reference"):
                r, rss["reference"] = await bench_reference(args, tmp, redis)
                rows += r
            report(rows, rss, args)
        finally:
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
