"""livesale.web.error_answer: what a handler's exception becomes on the wire, for errors raised by the
real drivers (no server needed: the mapping is pure)."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from livesale.embedded_redis import free_port
from livesale.web import error_answer


async def _raised(url: str) -> Exception:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - the driver's own error is the subject
        return exc
    finally:
        await engine.dispose()
    raise AssertionError("the database answered")


def _sqlite_raised(url: str, statement: str) -> Exception:
    """What SQLAlchemy raises over sqlite3 (the driver aiosqlite runs in its thread; called directly
    here, so no driver thread outlives the test's event loop)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(statement))
    except Exception as exc:  # noqa: BLE001 - the driver's own error is the subject
        return exc
    finally:
        engine.dispose()
    raise AssertionError("the statement ran")


def test_sqlite_that_cannot_open_is_503(tmp_path: Path) -> None:
    """A database that cannot serve (here SQLite's 'unable to open database file') is 503 unavailable
    with Retry-After, like a lost Redis, not a 500."""
    exc = _sqlite_raised(f"sqlite:///{tmp_path}/missing/dir/db.sqlite", "SELECT 1")
    status, body, headers = error_answer(exc, "GET", "/api/x")
    assert status == 503 and headers == {"Retry-After": "1"}
    assert orjson.loads(body) == {"error": "unavailable", "message": "database unavailable: OperationalError"}


async def test_postgres_refusing_connections_is_503_not_a_redis_error() -> None:
    """asyncpg raises the socket's own error when nothing listens: 503, without blaming Redis."""
    pytest.importorskip("asyncpg")
    with socket.socket() as s:  # a port nothing listens on
        port = free_port()
        assert s.connect_ex(("127.0.0.1", port)) != 0
    exc = await _raised(f"postgresql+asyncpg://x@127.0.0.1:{port}/x")
    status, body, _ = error_answer(exc, "GET", "/api/x")
    assert status == 503
    msg = orjson.loads(body)["message"]
    assert "redis" not in msg and "unreachable" in msg, msg


def test_a_statement_error_stays_500() -> None:
    """A wrong statement is our bug, not an outage: 500 internal (SQLite raises OperationalError for
    both; its result code tells them apart)."""
    exc = _sqlite_raised("sqlite://", "SELECT x FROM")
    status, body, _ = error_answer(exc, "GET", "/api/x")
    assert status == 500 and orjson.loads(body)["error"] == "internal"
