"""Multiprocess-mode bookkeeping for `livesale serve --workers N`, run by the parent process: a clean
PROMETHEUS_MULTIPROC_DIR before the workers start, and each exited worker marked dead.

Imports only prometheus_client.multiprocess (no metric is created here), so the parent writes no
metric files of its own."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDir:
    """The directory the workers' metric files live in. Set in the environment before any worker
    starts (prometheus-client picks its value class at import), emptied of files a previous run left
    (their totals would otherwise be added to ours), removed at the end when we created it."""

    def __init__(self) -> None:
        given = os.environ.get(ENV)
        self.created = not given
        self.path = given or tempfile.mkdtemp(prefix="livesale-metrics-")
        os.makedirs(self.path, exist_ok=True)
        for f in glob.glob(os.path.join(self.path, "*.db")):
            os.remove(f)
        os.environ[ENV] = self.path

    def worker_exited(self, pid: int) -> None:
        """Drop the worker's live gauges (connections, writer lag); its counters keep counting in totals."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.path)

    def close(self) -> None:
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
