"""`GET /metrics` in the Prometheus text format, for one process or all workers of one server
(prometheus-client's multiprocess mode, when PROMETHEUS_MULTIPROC_DIR is set: the `livesale serve
--workers N` parent sets it, cleans it at start and marks each exited worker dead)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric

from monitoring import metrics as m


class _AllWorkers:
    """Every metric summed (or combined by its multiprocess_mode) over the workers' files, except the
    per-sale views, which mirror Redis and come from this process (metrics.PER_PROCESS_VIEWS)."""

    def __init__(self, path: str) -> None:
        self._files = multiprocess.MultiProcessCollector(None, path)

    def collect(self) -> Iterator[Metric]:
        for family in self._files.collect():
            if family.name not in m.PER_PROCESS_VIEWS:
                yield family
        yield from m.SALE_UNITS.collect()
        yield from m.SALE_INVARIANT_BROKEN.collect()


def render() -> bytes:
    m.flush()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        registry = CollectorRegistry()
        registry.register(_AllWorkers(path))
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def metrics_handler(_request: web.Request) -> web.Response:
    resp = web.Response(body=render())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp
