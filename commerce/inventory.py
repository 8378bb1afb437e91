"""The inventory service: atomic Lua transitions on one sale (reserve, pay, cancel, expire/tick).

Reserve calls that arrive in the same event-loop turn are batched: one EVALSHA per sale carries every
buyer of that turn, and the calls for all sales go out together on one connection. Each buyer's step
inside the script is still a whole check-and-hold, so the invariants are the same as one call per
request, but a request no longer pays for its own Redis round trip (issue 2: "the Redis round trip per
request has to go").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx

from commerce import keys
from livesale.errors import Unavailable
from livesale.redis_client import REDIS_DOWN, LuaScript, is_cluster, refuses_writes
from livesale.tasks import settle
from monitoring import metrics as m

_LUA = Path(__file__).with_name("lua")
_PRELUDE = (_LUA / "common.lua").read_text()
RESERVE = LuaScript(_LUA / "reserve.lua", _PRELUDE)
PAY = LuaScript(_LUA / "pay.lua", _PRELUDE)
CANCEL = LuaScript(_LUA / "cancel.lua", _PRELUDE)
TICK = LuaScript(_LUA / "tick.lua", _PRELUDE)
STOCK_NOTICE = LuaScript(_LUA / "stock_notice.lua")
SCRIPTS = (RESERVE, PAY, CANCEL, TICK, STOCK_NOTICE)

# Reserve outcome codes returned by reserve.lua, and their metric label / API error code.
RESERVED, DUPLICATE, SOLD_OUT, LIMIT_REACHED, NOT_ACTIVE, IDEM_CONFLICT = range(6)
OUTCOME = {
    RESERVED: "reserved",
    DUPLICATE: "duplicate",
    SOLD_OUT: "sold_out",
    LIMIT_REACHED: "limit_reached",
    NOT_ACTIVE: "not_active",
    IDEM_CONFLICT: "conflict",
}
log = logging.getLogger("livesale.inventory")
_BATCH = m.histogram(m.RESERVE_BATCH)
MAX_PER_CALL = 256  # buyers per EVALSHA: bounds how long one script blocks Redis
# MOVED/ASK/TRYAGAIN hops one call may take on a cluster (within the batch's deadline) before its buyers
# get a 503: while a migration has moved some of a sale's keys and not the rest, the call bounces between
# the two masters (ASK, then TRYAGAIN) until the last key has moved.
MAX_REDIRECTS = 100
TRYAGAIN_S = 0.01
_REDIRECTED = (rx.AskError, rx.TryAgainError, rx.ClusterDownError)
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


@dataclass(slots=True)
class Reservation:
    code: int
    order_id: str = ""
    quantity: int = 0
    status: str = ""
    expires_ms: int = 0
    created_ms: int = 0
    available: int = 0


class UnknownSale(Exception):
    pass


def new_order_id(sale_id: str) -> str:
    return f"{sale_id}.{secrets.token_hex(8)}"


def _parse(raw: Any, available: int) -> Reservation:
    code = int(raw[0])
    if code in (RESERVED, DUPLICATE):
        return Reservation(code, raw[1].decode(), int(raw[2]), raw[3].decode(), int(raw[4]), int(raw[5]), available)
    if code == IDEM_CONFLICT:
        return Reservation(code, raw[1].decode(), int(raw[2]), available=available)
    return Reservation(code, available=available)


# What a buyer is told: its reservation, or why there is none.
Reply = Callable[["Reservation | BaseException"], None]


class _Op:
    """One buyer waiting in a batch: its RESP-encoded (user, idempotency key, quantity), and whom to
    tell the outcome. Told once, however the batch ends."""

    __slots__ = ("head", "reply", "told")

    def __init__(self, head: bytes, reply: Reply) -> None:
        self.head = head
        self.reply = reply
        self.told = False

    def tell(self, outcome: Reservation | BaseException) -> None:
        if self.told:
            return
        self.told = True
        try:
            self.reply(outcome)
        except Exception:  # one reply's failure must not cost the rest of the batch their answers
            log.error("a reserve reply failed", exc_info=True)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _buyer(user: str, key: str, quantity: int) -> bytes:
    u, k, q = user.encode(), key.encode(), b"%d" % quantity
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(u), u, len(k), k, len(q), q)


def _evalsha(sale_id: str, ops: Sequence[_Op], rand: bytes) -> bytes:
    """EVALSHA reserve for a batch of buyers of one sale, as RESP bytes. Written here rather than by
    redis-py's generic packer, which costs ~1 us per argument, and a batch has 4 per buyer. `rand`:
    16 hex digits per buyer, the new order ids (the script uses the ids of the buyers it accepts)."""
    n = len(ops)
    prefix = sale_id.encode() + b"."
    oid_head = b"$%d\r\n" % (len(prefix) + 16)
    parts = [b"*%d\r\n" % (10 + 4 * n), _bulk(b"EVALSHA"), _bulk(RESERVE.sha.encode()), _bulk(b"6")]
    parts += [_bulk(k.encode()) for k in keys.sale_keys(sale_id)]
    parts.append(_bulk(b"%d" % n))
    for i, op in enumerate(ops):
        parts += (op.head, oid_head, prefix, rand[16 * i : 16 * i + 16], b"\r\n")
    return b"".join(parts)


def _own_orders(sale_id: str, outcomes: list[Reservation], rand: bytes) -> None:
    """After a re-send, an "existing order" whose id is the one this call drew for that buyer was made
    by the first send (its reply lost with the connection), not by an earlier request of the buyer's:
    it is the buyer's new order (201), never a 200 (docs/limits.md)."""
    prefix = sale_id + "."
    for i, r in enumerate(outcomes):
        if r.code == DUPLICATE and r.order_id == prefix + rand[16 * i : 16 * i + 16].decode():
            r.code = RESERVED


class Reserver:
    """Batches concurrent reserve calls into pipelines (see the module docstring).

    Its wire path is its own, not a redis-py pipeline of registered-script calls (LuaScript runs every
    other script through those objects): that pipeline sends SCRIPT EXISTS before each batch (a round trip more),
    packs every argument through the generic encoder and takes a pooled connection per batch: more
    client CPU per batch (bench/reserve_wire.py measures both). tests/test_lua_scripts.py checks that
    both answer alike."""

    def __init__(self, redis: aioredis.Redis, max_in_flight: int = 4, timeout_s: float = 2.0) -> None:
        self.redis = redis
        # A buyer is answered within `timeout_s` of its call: a batch still unanswered by then is 503
        # `unavailable` for all its buyers (docs/limits.md), however long it waited for a slot.
        self.timeout_s = timeout_s
        self._pending: dict[str, list[_Op]] = {}
        self._pending_since = 0.0  # loop time of the oldest call in `_pending`
        self._scheduled = False
        self._in_flight = 0
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: list[Any] = []  # the batcher's own Redis connections, not in use right now
        # On Redis Cluster: the same, per node ("host:port"); each batch goes out as one pipeline per
        # master, by the slot of each sale's hash tag (docs/cluster.md).
        self._cluster = is_cluster(redis)
        self._node_idle: dict[str, list[Any]] = {}
        self.redirects = 0  # calls sent again after MOVED, ASK or TRYAGAIN (a slot on the move)
        self.on_stock: Any = None  # callable(sale_id, available, held) after each batch
        self.accepted_at = -1.0  # loop time of the last batch that reserved units for someone

    def taking_orders(self, within_s: float = 0.1) -> bool:
        """Whether a batch reserved units in the last `within_s` (a sale is selling right now)."""
        return asyncio.get_running_loop().time() - self.accepted_at < within_s

    async def warm(self) -> None:
        """Open the batcher's connections and load the script before the first buyers come: otherwise
        the first batches of a spike each wait for a connect and a NOSCRIPT retry. Best effort: a
        Redis that is not there yet is connected to by the first batch, as without this."""
        try:
            await self.redis.script_load(RESERVE.source)
            if self._cluster:
                await self.redis.initialize()  # type: ignore[attr-defined]  # the slot map, before the first batch
                return
            while len(self._idle) < self._max_in_flight:
                conn = self.redis.connection_pool.make_connection()
                await conn.connect()
                self._idle.append(conn)
        except REDIS_DOWN as exc:
            log.warning("reserve batcher: redis not reachable at start (%r); connecting on first use", exc)

    def reserve(self, sale_id: str, user: str, key: str, quantity: int) -> asyncio.Future[Reservation]:
        fut: asyncio.Future[Reservation] = asyncio.get_running_loop().create_future()
        self.submit(sale_id, user, key, quantity, functools.partial(settle, fut))
        return fut

    def submit(self, sale_id: str, user: str, key: str, quantity: int, reply: Reply) -> None:
        """`reserve` for a caller that takes the outcome as a call (livesale.fasthttp's purchase
        path): `reply` is called straight from the batch's result loop, with no future and no loop
        turn in between."""
        if not self._pending:
            self._pending_since = asyncio.get_running_loop().time()
        self._pending.setdefault(sale_id, []).append(_Op(_buyer(user, key, quantity), reply))
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._in_flight += 1
        deadline = self._pending_since + self.timeout_s
        task = asyncio.get_running_loop().create_task(self._send(batch, deadline))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        # Requests that queued while every pipeline was in flight go out now, as one batch.
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: dict[str, list[_Op]], deadline: float) -> None:
        calls: list[tuple[str, list[_Op]]] = []
        for sale_id, ops in batch.items():
            for i in range(0, len(ops), MAX_PER_CALL):
                calls.append((sale_id, ops[i : i + MAX_PER_CALL]))
        # The new order ids, one urandom read per call; the same on a retry (`_execute`).
        rands = [os.urandom(8 * len(ops)).hex().encode() for _, ops in calls]
        try:
            async with asyncio.timeout_at(deadline):
                if self._cluster:
                    # Each master's calls are answered as soon as that master replies: a stalled
                    # master's buyers wait for the deadline, not those of the others.
                    await self._execute_cluster(calls, rands)
                    results: list[Any] | None = None
                    retried = False
                else:
                    results, retried = await self._execute(calls, rands)
        except (*REDIS_DOWN, TimeoutError) as exc:
            # Never a late answer: the scripts may still run when Redis wakes up, and a buyer who
            # retries with its key then gets that order (200), but this request is answered now.
            stalled = isinstance(exc, (TimeoutError, rx.TimeoutError))
            m.REDIS_ERRORS.labels("reserve").inc()
            if stalled and m.ENABLED:
                m.LIMIT_REFUSALS.labels("redis_timeout").inc()
            err = Unavailable("redis did not answer in time" if stalled else f"redis unreachable: {exc.__class__.__name__}")
            for _, ops in calls:
                for op in ops:
                    op.tell(err)
            return
        except BaseException as exc:  # never leave a buyer waiting forever
            for _, ops in calls:
                for op in ops:
                    op.tell(exc)
            raise
        if m.ENABLED:
            _BATCH.observe(sum(len(ops) for _, ops in calls))
        if results is None:
            return
        for (sale_id, ops), res, rand in zip(calls, results, rands, strict=True):
            self._answer(sale_id, ops, res, rand, retried)

    def _answer(self, sale_id: str, ops: list[_Op], res: Any, rand: bytes, retried: bool) -> None:
        """Tell one call's buyers what its reply says (every buyer is told, whatever the reply)."""
        try:
            if isinstance(res, Exception) or int(res[0]) == -1:
                exc2: Exception = res if isinstance(res, Exception) else UnknownSale(sale_id)
                if refuses_writes(exc2):
                    exc2 = Unavailable(f"redis refuses writes: {exc2}")
                elif isinstance(exc2, REDIS_DOWN):
                    exc2 = Unavailable(f"redis unreachable: {exc2.__class__.__name__}")
                elif isinstance(exc2, _REDIRECTED):
                    exc2 = Unavailable(f"redis cluster still moving the sale: {exc2.__class__.__name__}")
                for op in ops:
                    op.tell(exc2)
                return
            available, held = int(res[0]), int(res[1])
            outcomes = [_parse(raw, available) for raw in res[2:]]
            if len(outcomes) != len(ops):
                raise ValueError(f"{len(outcomes)} outcomes for {len(ops)} buyers")
            if retried:
                _own_orders(sale_id, outcomes, rand)
            for op, r in zip(ops, outcomes, strict=True):
                op.tell(r)
            if any(r.code == RESERVED for r in outcomes):
                self.accepted_at = asyncio.get_running_loop().time()
            if self.on_stock is not None:
                self.on_stock(sale_id, available, held)
        except Exception as exc:  # a reply we cannot read: its buyers get an error, never silence
            log.error("unreadable reserve reply for sale %s: %r", sale_id, exc)
            for op in ops:
                op.tell(exc)

    async def _execute(self, calls: Sequence[tuple[str, list[_Op]]], rands: Sequence[bytes]) -> tuple[list[Any], bool]:
        """The calls' replies, and whether they were sent more than once (`_round_trip`)."""
        packed = b"".join(_evalsha(sale_id, ops, rand) for (sale_id, ops), rand in zip(calls, rands, strict=True))
        retried = False
        for attempt in (0, 1):
            results, resent = await self._round_trip(packed, len(calls))
            retried = retried or resent
            if attempt == 0 and any(isinstance(r, rx.NoScriptError) for r in results):
                # Redis restarted and lost its script cache. NOSCRIPT means the call did not run.
                await self.redis.script_load(RESERVE.source)
                continue
            return results, retried
        raise AssertionError("unreachable")

    async def _execute_cluster(self, calls: Sequence[tuple[str, list[_Op]]], rands: Sequence[bytes]) -> None:
        """Send and answer the calls on a cluster: grouped by the master of their sale's slot, one
        pipeline per master, all at once, each master's calls answered as soon as it replies. A MOVED
        call goes again to the slot's new owner (and the client's slot map learns it), an ASK call to
        the node named with ASKING first, a TRYAGAIN call (a sale's keys split between two nodes for an
        instant of a migration) again after a moment: none of these ran the script, so sending it again
        holds nothing twice."""
        cluster: Any = self.redis
        packed = [_evalsha(sale_id, ops, rand) for (sale_id, ops), rand in zip(calls, rands, strict=True)]
        redo: dict[int, tuple[str, int] | None] = dict.fromkeys(range(len(calls)))
        for hop in range(MAX_REDIRECTS + 1):
            by_node: dict[tuple[str, int], list[int]] = {}
            for i, addr in redo.items():
                if addr is None:
                    node = cluster.get_node_from_key(keys.sale(calls[i][0]))
                    addr = (node.host, int(node.port))
                by_node.setdefault(addr, []).append(i)
            asked = {i for i, addr in redo.items() if addr is not None}
            redo = {}
            waits: list[bool] = []
            await asyncio.gather(*(self._on_master(calls, rands, packed, addr, idx, asked, hop == MAX_REDIRECTS,
                                                   redo, waits) for addr, idx in by_node.items()))
            if not redo:
                return
            self.redirects += len(redo)
            if waits:
                await asyncio.sleep(TRYAGAIN_S)

    async def _on_master(self, calls: Sequence[tuple[str, list[_Op]]], rands: Sequence[bytes], packed: list[bytes],
                         addr: tuple[str, int], idx: list[int], asked: set[int], last: bool,
                         redo: dict[int, tuple[str, int] | None], waits: list[bool]) -> None:
        """One master's share of `_execute_cluster`'s hop: its calls answered, or put in `redo` (with the
        node to ASK, or None to route by slot again; `waits` gets an entry after a TRYAGAIN)."""
        blob = b"".join(_ASKING + packed[i] if i in asked else packed[i] for i in idx)
        try:
            out, resent = await self._round_trip(blob, len(idx) + sum(i in asked for i in idx), addr)
        except Exception as exc:  # a master that is down fails its own calls only
            for i in idx:
                self._answer(calls[i][0], calls[i][1], exc, rands[i], False)
            return
        cluster: Any = self.redis
        it = iter(out)
        for i in idx:
            if i in asked:
                next(it)  # ASKING's +OK
            res = next(it)
            if last or not isinstance(res, (rx.AskError, rx.TryAgainError, rx.NoScriptError)):
                self._answer(calls[i][0], calls[i][1], res, rands[i], resent)
            elif isinstance(res, rx.MovedError):
                await cluster.nodes_manager.move_slot(res)
                redo[i] = None
            elif isinstance(res, rx.AskError):
                redo[i] = (res.host, res.port)
            else:
                if isinstance(res, rx.NoScriptError):
                    await cluster.script_load(RESERVE.source)
                else:
                    waits.append(True)
                redo[i] = None

    async def _round_trip(self, packed: bytes, replies: int, addr: tuple[str, int] | None = None) -> tuple[list[Any], bool]:
        """Write pipelined commands on one of the batcher's own connections and read their replies, an
        error reply as a value (what `pipeline.execute(raise_on_error=False)` does, without its
        per-call machinery). The batcher keeps up to `max_in_flight` connections of its own rather
        than taking one from the shared pool per batch (the pool's lock and condition cost more than
        the write). A connection that fails is dropped and the batch tried once more on a fresh one,
        as redis-py's own retry would; a script that did run then finds its buyers' idempotency keys
        and answers with the orders it made (`_own_orders` tells those apart from a buyer's retry).
        Returns the replies and whether the commands were sent twice."""
        idle = self._idle if addr is None else self._node_idle.setdefault(f"{addr[0]}:{addr[1]}", [])
        for attempt in (0, 1):
            conn = idle.pop() if idle else self._connection(addr)
            try:
                await conn.send_packed_command(packed, check_health=False)
                out: list[Any] = []
                for _ in range(replies):
                    try:
                        out.append(await conn.read_response())
                    except rx.ResponseError as exc:  # a reply; the connection is still in step
                        out.append(exc)
            except rx.ConnectionError:
                await conn.disconnect()
                # The others idle since before the failure are most likely dead too (a restarted
                # Redis): the retry goes out on a fresh connection.
                stale = idle[:]
                idle.clear()
                for other in stale:
                    await other.disconnect()
                if attempt:
                    raise
                continue
            except BaseException:
                await conn.disconnect()  # may be mid-reply: never reuse it in that state
                raise
            idle.append(conn)
            return out, bool(attempt)
        raise AssertionError("unreachable")

    def _connection(self, addr: tuple[str, int] | None) -> Any:
        if addr is None:
            return self.redis.connection_pool.make_connection()
        # A connection of our own to that node, made as the cluster client makes its own.
        template = self.redis.get_default_node()  # type: ignore[attr-defined]
        kwargs = {**template.connection_kwargs, "host": addr[0], "port": addr[1]}
        return template.connection_class(**kwargs)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conns in self._node_idle.values():
            idle += conns
        self._node_idle = {}
        for conn in idle:
            await conn.disconnect()


async def pay(redis: aioredis.Redis, order_id: str, user: str, *, charge: str | None = None) -> list[Any]:
    """Check (no charge) or commit (with the id of the charge that paid, whatever it is: a provider's
    empty id still commits) an order's payment."""
    sale_id = keys.sale_of_order(order_id)
    args: list[object] = [order_id, user, "check"] if charge is None else [order_id, user, "commit", charge]
    return await PAY(redis, keys.sale_keys(sale_id), args)  # type: ignore[return-value]


async def cancel(redis: aioredis.Redis, order_id: str, user: str) -> list[Any]:
    sale_id = keys.sale_of_order(order_id)
    return await CANCEL(redis, keys.sale_keys(sale_id), [order_id, user])  # type: ignore[return-value]


@dataclass(slots=True)
class Tick:
    status: str
    changed: bool
    expired: int
    available: int
    held: int
    sold: int
    stock: int
    starts_at: int
    ends_at: int


async def tick(redis: aioredis.Redis, sale_id: str, action: str = "", max_expire: int = 1000) -> Tick | None:
    r: Any = await TICK(redis, keys.sale_keys(sale_id), [max_expire, action])
    if not r or r[0] is None:
        return None
    return Tick(r[0].decode(), bool(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8]))
