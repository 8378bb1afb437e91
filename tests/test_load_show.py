"""`make load` in miniature: the whole show runs, stops every process it started, and reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_small_show_end_to_end(tmp_path: Path) -> None:
    """A tiny show (30 viewers, 4 buyers, 4 s sale) exits 0 with one report: Locust's reserved count is
    what Redis holds (the show cross-checks it), nothing oversold or lost, and its server is gone."""
    proc = subprocess.run(
        [sys.executable, "-m", "load.show", "--viewers", "30", "--ramp", "100", "--buyers", "4", "--spawn-rate", "4",
         "--sale-seconds", "4", "--stock", "15", "--hold", "2", "--comments", "3", "--likes", "5",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=150)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "RESULT              oversold 0, lost 0: OK" in text
    assert "peak viewers        30 connected" in text
    assert re.search(r"purchase outcomes .*reserved \d+", (tmp_path / "report.txt").read_text())
    pid = int(re.search(r"\(pid (\d+)\)", text).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_locust_over_its_time_is_stopped(tmp_path: Path) -> None:
    """A Locust run that outlives its time (sale + grace) is killed and reaped by the show, not left
    running behind it, and the report names it."""
    import asyncio

    from livesale.embedded_redis import free_port
    from load import show

    args = show._parser().parse_args(["--sale-seconds", "1", "--buyers", "1", "--out", str(tmp_path)])
    s = show.Show(args)
    s.url = f"http://127.0.0.1:{free_port()}"  # nothing listens: Locust just runs on
    s.locust_grace_s = 0.0  # Locust needs more than its 1 s only to start
    try:
        await s.run_locust({"sale": "sa000000000000", "stream": "st000000000000"})
        assert s.locust is not None
        pid = s.locust.pid
        alive = s.locust.returncode is None
        assert not alive, "locust still running after the show gave up on it"
        assert any("locust did not finish" in p for p in s.problems)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        if s.locust is not None and s.locust.returncode is None:
            s.locust.kill()
            await asyncio.wait_for(s.locust.wait(), 10)
        s.stop_all()
