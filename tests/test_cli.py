"""The `livesale` command line: flags it must refuse before doing anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from live.cli import _parser, main
from livesale.auth import Verifier
from livesale.config import Settings
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
