"""`make run > demo.log`: what `livesale demo` prints reaches a file while the server runs, not at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from livesale.embedded_redis import free_port
from tests.conftest import SECRET


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace")
        if text in content:
            return content
        assert proc.poll() is None, content[-2000:]
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the output within {timeout} s: {path.read_text()[-2000:]}")


def test_demo_redirected_to_a_file_writes_each_line_as_it_happens(redis_url: str, tmp_path: Path) -> None:
    """The demo's banner (stdout) and then an access-log line (stderr) for a request made afterwards
    are in the file while the process still runs."""
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, LIVESALE_DATA=str(tmp_path), LIVESALE_SECRET=SECRET,
               LIVESALE_ACCESS_LOG="1", DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    out = tmp_path / "demo.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "live.cli", "demo", "--port", str(port)],
                                env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        _wait_for_text(out, "livesale demo is up on", proc)
        deadline = time.monotonic() + 20  # the banner comes at startup, just before the socket listens
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the demo never answered /healthz"
                time.sleep(0.1)
        _wait_for_text(out, '"GET /healthz HTTP/1.1" 200', proc)
    finally:
        proc.terminate()
        proc.wait(15)
