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
