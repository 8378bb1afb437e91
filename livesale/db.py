"""SQL engine (SQLAlchemy Core, async): SQLite by default, PostgreSQL through DATABASE_URL.
Tables register on `metadata` in the package that owns them (commerce/schema.py, live/schema.py)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = sa.MetaData()


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
