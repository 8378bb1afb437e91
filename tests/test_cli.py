"""The `livesale` command line: flags it must refuse before doing anything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from live.cli import _parser, main
from livesale.auth import Verifier
from livesale.config import Settings
from livesale.embedded_redis import free_port
from tests.helpers import spawn_server, stop_server

SECRET = "cli-test-secret-0123456789abcdef0123456789"


@pytest.mark.parametrize("argv", [
    ["token", "--user", ""],
    ["token", "--user", "u" * 129],
    ["token", "--user", "alice", "--ttl", "0"],
    ["token", "--user", "alice", "--ttl", "-60"],
    ["serve", "--workers", "0"],
    ["demo", "--workers", "-2"],
    ["serve", "--port", "70000"],
    ["serve", "--port", "0"],
])
def test_cli_refuses_flags_that_cannot_work(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A token the server would refuse (no user, user over 128 chars, already expired) and a worker
    count or port that cannot serve are usage errors (exit 2), not a token printed or a server started."""
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_token_is_accepted_by_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: object,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`livesale token` prints one token, signed with LIVESALE_SECRET, for the user and role asked."""
    monkeypatch.setenv("LIVESALE_SECRET", SECRET)
    monkeypatch.setenv("LIVESALE_DATA", str(tmp_path))
    assert main(["token", "--user", "alice", "--role", "host", "--ttl", "60"]) == 0
    user = Verifier(SECRET).verify(capsys.readouterr().out.strip())
    assert (user.id, user.role) == ("alice", "host")


def test_serve_with_workers_fails_when_its_workers_cannot_serve(settings: Settings) -> None:
    """`livesale serve --workers 2` on a port another program holds: every worker fails to bind, and
    the command exits non-zero instead of 0 as if it had served and stopped cleanly."""
    env = dict(os.environ, REDIS_URL=settings.redis_url or "", DATABASE_URL=settings.database_url or "",
               LIVESALE_SECRET=settings.secret, LIVESALE_DATA=str(settings.data_dir))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "live.cli", "serve", "--port", str(port), "--workers", "2"],
                              env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "address already in use" in proc.stderr.lower()


def test_serve_with_workers_stopped_by_sigterm_exits_0(settings: Settings) -> None:
    """`livesale serve --workers 2` stopped by SIGTERM (what a supervisor sends) exits 0."""
    srv = spawn_server(settings, workers=2)
    stop_server(srv)
    assert srv.proc is not None and srv.proc.returncode == 0


def test_ctrl_c_stops_the_server_before_its_embedded_redis(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group. The embedded redis-server is
    outside it: the server shuts down with Redis still up (flushing what it holds), then stops Redis
    itself with SIGTERM; Redis never sees the SIGINT."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(LIVESALE_DATA=str(tmp_path), LIVESALE_SECRET=SECRET)
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "live.cli", "serve", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    redis_log = (tmp_path / "redis" / "redis.log").read_text()
    assert "Received SIGTERM" in redis_log and "SIGINT" not in redis_log, redis_log[-2000:]
