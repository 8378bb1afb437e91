"""Fixtures: one real embedded redis-server per test session (the launcher the app uses), flushed
per test; real servers on loopback; real HTTP clients."""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis

from livesale.config import Settings
from livesale.embedded_redis import EmbeddedCluster, EmbeddedRedis
from tests.helpers import Api, LiveServer, start_app_server

# CPython 3.11.0-3.11.7 keeps ast.parse's recursion-depth count in one global (python/cpython#106905,
# fixed in 3.11.8): an ast.parse that runs inside another one fails the outer with "SystemError: AST
# constructor recursion depth mismatch". Formatting a traceback calls ast.parse (for its ~~~^^^
# markers), and asyncio logs one, with its traceback, when the garbage collector drops a future
# whose exception nobody retrieved; a collection that lands inside any ast.parse (pytest's assertion
# rewriter, hypothesis reading a test's source) then fails whatever test is running. In this process
# only, tracebacks go without the markers on those versions.
if sys.version_info < (3, 11, 8):
    traceback._extract_caret_anchors_from_line_segment = lambda segment: None  # type: ignore[attr-defined]

SECRET = "test-secret-not-for-production-0123456789"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real 3-master Redis Cluster from the launcher's binary (docs/cluster.md), for the session."""
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: EmbeddedCluster) -> str:
    """The cluster's `redis+cluster://` URL, every master flushed (and every slot back home) first."""
    redis_cluster.reset()
    return redis_cluster.url


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.restart()  # a test that stopped Redis must not break the next one
    c = syncredis.Redis.from_url(redis_server.url)
    c.flushall()
    c.close()
    return redis_server.url


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'livesale.db'}"


@pytest.fixture
def settings(redis_url: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        secret=SECRET,
        data_dir=tmp_path,
        sweep_interval_s=0.1,
        writer_reclaim_ms=1000,
    )


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    async with start_app_server(settings) as srv:
        yield srv


@pytest.fixture
async def api(server: LiveServer) -> AsyncIterator[Api]:
    async with Api(server) as a:
        yield a


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("LIVESALE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("LIVESALE_TEST_POSTGRES_URL not set")
    return url


class _LostErrors(logging.Handler):
    """Futures and tasks whose exception nobody retrieved (asyncio logs them when they are collected):
    each is an error a caller never saw."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "never retrieved" in record.getMessage():
            self.seen.append(self.format(record))


_LOST = _LostErrors()
logging.getLogger("asyncio").addHandler(_LOST)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    gc.collect()
    if _LOST.seen:
        terminalreporter.section("exceptions nobody retrieved (asyncio)")
        for text in _LOST.seen:
            terminalreporter.write_line(text)
