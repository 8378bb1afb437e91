"""`livesale serve --workers 2`: /metrics on either worker covers the requests both workers served,
files left by an earlier run are cleaned away, and a worker that dies keeps its counts but not its gauges."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from livesale.config import Settings
from tests.helpers import Api, spawn_server, stop_server, wait_for
from tests.metrics_scrape import scrape, value

HTTP = "livesale_http_requests_total"
SALE_ROUTE = {"route": "/api/sales/{id}", "method": "GET", "status": "200"}
STALE_PID = 999_999_999


def _stale_counter(path: Path) -> Path:
    """A counter file as a previous server run would have left it, with a huge count for our series."""
    f = path / f"counter_{STALE_PID}.db"
    d = MmapedDict(str(f))
    key = mmap_key("livesale_http_requests", HTTP, list(SALE_ROUTE), list(SALE_ROUTE.values()), "HTTP requests")
    d.write_value(key, 1_000_000.0, 0.0)
    d.close()
    return f


def _worker_pids(path: Path) -> set[int]:
    return {int(f.stem.rsplit("_", 1)[1]) for f in path.glob("counter_*.db")}


def _swept_by(path: Path, pid: int, sale_id: str) -> bool:
    """The worker's sweeper has published the sale's stock (its file has the per-sale gauge)."""
    f = path / f"gauge_livemostrecent_{pid}.db"
    return f.exists() and any(
        s.labels == {"sale": sale_id, "state": "stock"} and s.value == 3
        for family in MultiProcessCollector.merge([str(f)]) for s in family.samples
    )


def _per_worker(path: Path) -> dict[int, float]:
    """Our series' count in each worker's own file (what each worker alone would report)."""
    out = {}
    for pid in _worker_pids(path):
        for family in MultiProcessCollector.merge([str(path / f"counter_{pid}.db")]):
            for s in family.samples:
                if s.name == HTTP and s.labels == SALE_ROUTE:
                    out[pid] = s.value
    return out


async def test_two_workers_metrics_cover_both_workers(settings: Settings, tmp_path: Path) -> None:
    """Requests spread over 2 workers; every scrape (answered by either worker) reports exactly the
    number of requests sent, which is the sum of the two workers' own counts, both non-zero; a stale
    file from an earlier run is removed at start; a killed worker loses its live gauges, not its counts."""
    mdir = tmp_path / "prom"
    mdir.mkdir()
    stale = _stale_counter(mdir)
    srv = await asyncio.to_thread(spawn_server, settings, workers=2,
                                  extra_env={"PROMETHEUS_MULTIPROC_DIR": str(mdir)})
    try:
        assert not stale.exists()
        async with Api(srv) as api:
            sale_id = (await api.setup_sale(stock=3))["sale_id"]
        # A new connection per request, so SO_REUSEPORT spreads them over the workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            sent = 0

            async def both_workers_served() -> bool:
                # The second worker joins the port only once it has booted; keep asking until it answers.
                nonlocal sent
                for _ in range(20):
                    async with fresh.get(f"{srv.url}/api/sales/{sale_id}") as r:
                        assert r.status == 200
                    sent += 1
                return len([n for n in _per_worker(mdir).values() if n > 0]) == 2

            await wait_for(both_workers_served, 60)
            per_worker = _per_worker(mdir)
            assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
            assert sum(per_worker.values()) == sent
            await wait_for(lambda: all(_swept_by(mdir, pid, sale_id) for pid in per_worker), 10)
            for _ in range(6):
                samples = await scrape(fresh, srv.url)
                assert value(samples, HTTP, **SALE_ROUTE) == sent
                # Per-sale gauges come from the answering worker's own sweeper, once per sale and state.
                assert value(samples, "livesale_sale_units", sale=sale_id, state="stock") == 3

            # One worker dies: its live gauges go (the parent marks it dead), its counts stay in the totals.
            dead = min(per_worker)
            assert (mdir / f"gauge_livesum_{dead}.db").exists()
            os.kill(dead, signal.SIGKILL)
            await wait_for(lambda: not (mdir / f"gauge_livesum_{dead}.db").exists(), 10)
            assert not (mdir / f"gauge_livemax_{dead}.db").exists()
            for _ in range(4):
                assert value(await scrape(fresh, srv.url), HTTP, **SALE_ROUTE) == sent
            async with fresh.get(f"{srv.url}/api/sales/{sale_id}") as r:
                assert r.status == 200
            assert value(await scrape(fresh, srv.url), HTTP, **SALE_ROUTE) == sent + 1
    finally:
        await asyncio.to_thread(stop_server, srv)
    # The parent stopped cleanly, but one of its workers was killed under it: exit 1 (live/cli.py).
    assert srv.proc is not None and srv.proc.returncode == 1
