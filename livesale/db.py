"""SQL engine (SQLAlchemy Core, async): SQLite by default, PostgreSQL through DATABASE_URL.
Tables register on `metadata` in the package that owns them (commerce/schema.py, live/schema.py)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = sa.MetaData()


# SQLite's primary result codes for a database that cannot serve now: BUSY, LOCKED, NOMEM, READONLY,
# IOERR, FULL, CANTOPEN, PROTOCOL (https://sqlite.org/rescode.html). Its OperationalError also
# carries SQLITE_ERROR, a statement of ours that is wrong (a syntax error, a missing table).
_SQLITE_CANNOT_SERVE = {5, 6, 7, 8, 10, 13, 14, 15}


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot serve right now (connection refused or lost, pool
    exhausted, locked, disk I/O): a 503 to retry, not a 500."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_CANNOT_SERVE
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # busy_timeout first: with several workers starting on one file, the WAL switch below
            # must wait for the others' locks instead of failing with "database is locked".
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


async def create_tables(engine: AsyncEngine, attempts: int = 5) -> None:
    """CREATE TABLE IF NOT EXISTS for every table; workers starting together may race on it, so a
    failure is retried (the loser then finds the tables)."""
    for attempt in range(attempts):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
