"""The order writer: every order event in Redis ends up in SQL, once.

Each sale has a Redis Stream of order events written by the same scripts that change inventory, and
a consumer group `order-writer`. A writer reads a batch, upserts it into `orders` in one transaction
(the row's `version` only moves forward, so a replayed event changes nothing), commits, then XACKs.
A writer killed between commit and ack replays that batch harmlessly; one killed before commit loses
nothing because the entries stay pending and are read again (own pending on restart, XAUTOCLAIM for
entries left by a consumer that never came back). Every process may run a writer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from commerce import keys
from commerce.schema import orders
from livesale.redis_client import is_cluster
from livesale.tasks import keep_running, pause
from monitoring import metrics as m

log = logging.getLogger("livesale.writer")

# Test-only fault hook: seconds to sleep between SQL chunks, so a test can kill the writer mid-batch.
_CHUNK_DELAY = float(os.environ.get("LIVESALE_WRITER_CHUNK_DELAY", "0") or 0)
CHUNK = 100


# The upsert's parameters, in its VALUES order: one tuple per order (executemany).
ROW_COLUMNS = ("id", "sale_id", "user_id", "idempotency_key", "quantity", "amount_cents", "status", "version",
               "created_at", "updated_at")


def _dt(ms: bytes) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


CLUSTER_POLL_S = 0.05
YIELD_S = 0.25
YIELD_SPELL_S = 3.0


class OrderWriter:
    def __init__(self, redis: aioredis.Redis, engine: AsyncEngine, *, batch: int = 500,
                 reclaim_ms: int = 30_000, consumer: str | None = None, retention_s: int = 7 * 86400,
                 linger_ms: int = 0) -> None:
        self.retention_s = retention_s
        self.linger_s = linger_ms / 1000
        self._pending_first = True  # after a restart, re-read our own unacked entries first
        self._last_reclaim = 0.0
        self.redis = redis
        self.engine = engine
        self.batch = batch
        self.reclaim_ms = reclaim_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._upsert_sql, self._sql_time = self._make_upsert()
        self._groups: set[str] = set()
        # True while the process is taking orders in a spike (commerce.api wires the reserve batcher's
        # signal in): the writer then gives the purchase path the core between batches.
        self.busy: Callable[[], bool] | None = None
        self._busy_since: float | None = None

    def _make_upsert(self) -> tuple[str, Any]:
        """The upsert as the driver's own SQL (SQLAlchemy compiles it once, for this dialect) and the
        dialect's conversion of a datetime parameter. Rows then go to the driver's executemany as
        tuples: SQLAlchemy's per-row parameter processing cost more than the rest of the writer, and
        the writer shares its core with the reserve path (bench/writer.py)."""
        dialect = self.engine.dialect
        ins = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        stmt = ins(orders)
        stmt = stmt.on_conflict_do_update(
            index_elements=[orders.c.id],
            set_={"status": stmt.excluded.status, "version": stmt.excluded.version,
                  "updated_at": stmt.excluded.updated_at},
            where=orders.c.version < stmt.excluded.version,
        )
        compiled = stmt.compile(dialect=dialect, column_keys=list(ROW_COLUMNS))
        if tuple(compiled.positiontup or ()) != ROW_COLUMNS:
            raise RuntimeError(f"unexpected upsert parameters for {dialect.name}: {compiled.positiontup}")
        convert = orders.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        return compiled.string, convert

    def _rows(self, entries: list[tuple[str, bytes, dict[bytes, bytes]]]) -> list[tuple[Any, ...]]:
        """One parameter tuple per order, from its latest event in `entries` (version only rises)."""
        latest: dict[bytes, tuple[int, str, dict[bytes, bytes]]] = {}
        for sale_id, _eid, f in entries:
            version = int(f[b"v"])
            cur = latest.get(f[b"o"])
            if cur is None or cur[0] < version:
                latest[f[b"o"]] = (version, sale_id, f)
        times: dict[bytes, Any] = {}  # a batch of reserves shares its timestamps

        def when(ms: bytes) -> Any:
            value = times.get(ms)
            if value is None:
                value = times[ms] = _dt(ms) if self._sql_time is None else self._sql_time(_dt(ms))
            return value

        return [
            (oid.decode(), sale_id, f[b"u"].decode(), f[b"k"].decode(), int(f[b"q"]), int(f[b"a"]),
             f[b"e"].decode(), version, when(f[b"c"]), when(f[b"t"]))
            # In id order: two writers upserting overlapping orders lock rows in the same order
            # (PostgreSQL would otherwise deadlock one of them).
            for oid, (version, sale_id, f) in sorted(latest.items())
        ]

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, engine: AsyncEngine, settings: Any,
                      consumer: str | None = None) -> OrderWriter:
        return cls(redis, engine, batch=settings.writer_batch, reclaim_ms=settings.writer_reclaim_ms,
                   consumer=consumer, retention_s=settings.sale_retention_s, linger_ms=settings.writer_linger_ms)

    async def _ensure_group(self, sale_id: str) -> None:
        if sale_id in self._groups:
            return
        try:
            await self.redis.xgroup_create(keys.events(sale_id), keys.WRITER_GROUP, id="0", mkstream=True)
        except rx.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(sale_id)

    async def commit(self, entries: list[tuple[str, bytes, dict[bytes, bytes]]]) -> None:
        """Upsert then ack. `entries` are (sale id, entry id, fields) in stream order."""
        if not entries:
            return
        rows = self._rows(entries)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with self.engine.begin() as conn:
            for i in range(0, len(rows), CHUNK):
                await conn.exec_driver_sql(self._upsert_sql, rows[i : i + CHUNK])
                if _CHUNK_DELAY:
                    await asyncio.sleep(_CHUNK_DELAY)
        if m.ENABLED:
            m.SQL_WRITE_LATENCY.observe(loop.time() - t0)
        by_sale: dict[str, list[bytes]] = {}
        for sale_id, eid, _ in entries:
            by_sale.setdefault(sale_id, []).append(eid)
        pipe = self.redis.pipeline(transaction=False)
        for sale_id, ids in by_sale.items():
            pipe.xack(keys.events(sale_id), keys.WRITER_GROUP, *ids)
        await pipe.execute()
        if m.ENABLED:
            m.WRITER_WRITTEN.inc(len(entries))

    @staticmethod
    def _flatten(resp: Any) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        out = []
        for stream, items in resp or []:
            sale_id = stream.decode().split("}")[0].removeprefix("{sale:")
            for eid, fields in items:
                if fields:  # a deleted entry comes back with no fields
                    out.append((sale_id, eid, fields))
        return out

    async def step(self, block_ms: int = 500, *, pending_first: bool = False) -> int:
        """Read and commit one batch; returns entries committed."""
        sale_ids = sorted(s.decode() for s in await self.redis.smembers(keys.WRITER_SALES))  # type: ignore[misc]
        if not sale_ids:
            await pause(block_ms / 1000)
            return 0
        for sale_id in sale_ids:
            await self._ensure_group(sale_id)
        streams = {keys.events(s): ("0" if pending_first else ">") for s in sale_ids}
        if is_cluster(self.redis):
            resp = await self._read_cluster(streams, block_ms, pending_first)
        else:
            resp = await self.redis.xreadgroup(
                keys.WRITER_GROUP, self.consumer, streams, count=self.batch, block=None if pending_first else block_ms
            )
        entries = self._flatten(resp)
        await self.commit(entries)
        return len(entries)

    async def _read_cluster(self, streams: dict[str, str], block_ms: int, pending_first: bool) -> list[Any]:
        """XREADGROUP on a cluster: one key per command (sales' streams are in different slots, and a
        multi-key command must stay in one), sent as one pipeline per master. Nothing blocks: an empty
        read waits `CLUSTER_POLL_S` (or `block_ms`, if shorter) before the next (docs/cluster.md)."""
        pipe = self.redis.pipeline(transaction=False)
        for key, start in streams.items():
            pipe.xreadgroup(keys.WRITER_GROUP, self.consumer, {key: start}, count=self.batch)
        resp = [stream for reply in await pipe.execute() for stream in (reply or [])]
        if not resp and not pending_first:
            await pause(min(block_ms / 1000, CLUSTER_POLL_S))
        return resp

    async def reclaim(self) -> int:
        """Take over entries another consumer read and never acked (it died)."""
        total = 0
        for raw in await self.redis.smembers(keys.WRITER_SALES):  # type: ignore[misc]
            sale_id = raw.decode()
            start = "0-0"
            while True:
                res = await self.redis.xautoclaim(
                    keys.events(sale_id), keys.WRITER_GROUP, self.consumer, self.reclaim_ms, start, count=self.batch
                )
                start, claimed = res[0], res[1]
                entries = [(sale_id, eid, f) for eid, f in claimed if f]
                await self.commit(entries)
                total += len(entries)
                if start in (b"0-0", "0-0") or not claimed:
                    break
        return total

    async def backlog(self, sale_id: str) -> int:
        """Events of one sale not yet in SQL: pending in the group plus never delivered."""
        try:
            groups = await self.redis.xinfo_groups(keys.events(sale_id))
        except rx.ResponseError:
            return 0
        for g in groups:
            if g["name"] in (keys.WRITER_GROUP.encode(), keys.WRITER_GROUP):
                pending = int(g.get("pending") or 0)
                if g.get("lag") is not None:  # Redis 7+
                    return pending + int(g["lag"])
                last = g["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else last
                rest = await self.redis.xrange(keys.events(sale_id), f"({last}", "+", count=10_000)
                return pending + len(rest)
        return 0

    async def lag(self) -> int:
        """Order events not yet in SQL, over all followed sales."""
        total = 0
        for raw in await self.redis.smembers(keys.WRITER_SALES):  # type: ignore[misc]
            total += await self.backlog(raw.decode())
        return total

    async def retire_finished(self) -> None:
        """Stop following sales that are over and fully written."""
        for raw in await self.redis.smembers(keys.WRITER_SALES):  # type: ignore[misc]
            sale_id = raw.decode()
            if await self.redis.sismember(keys.OPEN_SALES, sale_id):  # type: ignore[misc]
                continue
            if await self.backlog(sale_id) == 0:
                # Every order of the sale is in SQL now: let its bulky keys go after the retention
                # period (retried keys and order reads work from Redis until then, orders from SQL
                # after). The small sale hash stays, so the sale view keeps its final counters.
                pipe = self.redis.pipeline(transaction=False)
                for key in keys.sale_keys(sale_id)[1:]:
                    pipe.expire(key, self.retention_s)
                pipe.srem(keys.WRITER_SALES, sale_id)
                await pipe.execute()
                self._groups.discard(sale_id)

    async def drain(self) -> None:
        """Write everything available now (tests, shutdown, `livesale verify`)."""
        while await self.step(pending_first=True):
            pass
        while await self.step(block_ms=1):
            pass

    async def cycle(self) -> None:
        """One read-commit-ack step; every few seconds also reclaim, measure the backlog, retire."""
        n = await self.step(pending_first=self._pending_first)
        if self._pending_first and n == 0:
            self._pending_first = False
        if 0 < n < self.batch and self.linger_s:
            # A short batch: let the next one fill up. Each transaction costs about as much as 50
            # rows (bench/writer.py), and the writer shares its core with the reserve path.
            await pause(self.linger_s)
        elif n and self.busy is not None and self.busy():
            # Orders are being taken right now: every row written now is CPU the buyers waiting in line
            # do not get (bench/inventory.py: p99 rises by a few ms). The orders are safe in Redis's AOF
            # meanwhile, so SQL can lag for a moment: YIELD_S after each batch, for the first
            # YIELD_SPELL_S of a spike (a flash sale sells out in seconds). Under orders taken for
            # longer than that, the writer goes at full speed again, so SQL's lag stays bounded.
            now = asyncio.get_running_loop().time()
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since < YIELD_SPELL_S:
                await pause(YIELD_S)
        else:
            self._busy_since = None
        now = asyncio.get_running_loop().time()
        if now - self._last_reclaim > max(self.reclaim_ms / 2000, 0.2):
            self._last_reclaim = now
            await self.reclaim()
            if m.ENABLED:
                m.WRITER_PENDING.set(await self.lag())
            await self.retire_finished()

    async def run(self) -> None:
        await keep_running(self.cycle, name="writer", log=log)


async def run_standalone(settings: Any) -> int:
    """`livesale writer`: only the writer, for scaling it apart from the API (and for crash tests)."""
    from livesale.db import create_tables, make_engine
    from livesale.redis_client import connect

    if not settings.redis_url:
        raise SystemExit("livesale writer needs REDIS_URL")
    redis = connect(settings.redis_url)
    engine = make_engine(settings.sql_url)
    await create_tables(engine)
    writer = OrderWriter.from_settings(redis, engine, settings, consumer=os.environ.get("LIVESALE_WRITER_CONSUMER"))
    try:
        await writer.run()
    finally:
        await redis.aclose()
        await engine.dispose()
    return 0
