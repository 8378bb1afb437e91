"""The embedded Redis launcher: a server restarted from a worker thread outlives that thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis as syncredis

from livesale.embedded_redis import EmbeddedRedis


def test_restart_from_a_worker_thread_survives_the_thread(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* ends: a server restarted through
    `asyncio.to_thread` (as tests and fault drills do) used to die as soon as that thread finished."""
    srv = EmbeddedRedis(tmp_path / "redis").start()
    try:
        t = threading.Thread(target=srv.restart)
        t.start()
        t.join()
        time.sleep(0.5)  # the kernel's signal on thread exit is immediate; give it time to land
        assert srv.proc is not None and srv.proc.poll() is None, "the restarted server died with its thread"
        c = syncredis.Redis.from_url(srv.url)
        assert c.ping()
        c.close()
    finally:
        srv.stop()
    assert srv.proc is None
