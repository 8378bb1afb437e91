"""Live auctions (docs/auctions.md): creation, start, the public view, bids and closing.

Every bid is one step of commerce/lua/bid.lua, which validates it, applies the rules of
commerce/auction_rules.py, extends the clock and appends the `bid` stream-log event atomically; bids
that arrive in the same event-loop turn share one script call (each is still its own step). Closing
runs in every process's sweeper and is three idempotent steps, each retried until done: close (the
winner is fixed once), award (the winner's order, through the inventory scripts' keys, so the
usual pay/cancel/expiry, order writer and reconciler serve it) and announce (the `auction` event).
A leader's maximum is read only inside the scripts: it is never returned, published or logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from commerce import keys
from commerce.auction_rules import MAX_BID_CENTS, increment
from commerce.sales import validate_fields
from commerce.schema import auctions as auctions_table
from livesale.bus import LOG_PRELUDE, channel, log_key, now_ms, seq_key
from livesale.codes import ErrorCode
from livesale.errors import Conflict, Forbidden, NotFound, Unavailable, Unprocessable
from livesale.redis_client import REDIS_DOWN, LuaScript, redis_errors, refuses_writes
from livesale.services import Services
from livesale.tasks import settle
from livesale.times import iso_ms

log = logging.getLogger("livesale.auctions")

_LUA = Path(__file__).with_name("lua")
_AUCTION_PRELUDE = LOG_PRELUDE + "\n" + (_LUA / "auction_common.lua").read_text()
BID = LuaScript(_LUA / "bid.lua", _AUCTION_PRELUDE)
START = LuaScript(_LUA / "auction_start.lua", _AUCTION_PRELUDE)
CLOSE = LuaScript(_LUA / "auction_close.lua", _AUCTION_PRELUDE)
ANNOUNCE = LuaScript(_LUA / "auction_announce.lua", _AUCTION_PRELUDE)
AWARD = LuaScript(_LUA / "auction_award.lua", (_LUA / "common.lua").read_text())

AUCTION_ID_RE = re.compile(r"^au[0-9a-f]{12}$")
LIMITS = {
    "starting_bid_cents": (100, MAX_BID_CENTS),
    "duration_s": (5, 3600),
    "extend_window_s": (0, 3600),
    "extend_to_s": (1, 3600),
    "hold_s": (1, 86400),
}
DEFAULTS = {"extend_window_s": 10, "extend_to_s": 10}
WIN_KEY = "auction-win"  # the winner's order's idempotency key (one order per auction)

# bid.lua reply codes.
LEADING, OUTBID, RAISED, DUPLICATE, NOT_ACTIVE, TOO_LOW, ALREADY_LEADING, IDEM_CONFLICT = range(8)
MAX_PER_CALL = 256  # bids per script call: bounds how long one call blocks Redis


def validate_auction(body: dict[str, Any]) -> dict[str, Any]:
    out = validate_fields(body, LIMITS, DEFAULTS)
    sudden = body.get("sudden_death", False)
    if type(sudden) is not bool:
        raise Unprocessable("sudden_death must be true or false")
    out["sudden_death"] = sudden
    reserve = body.get("reserve_cents")
    if reserve is not None and (type(reserve) is not int or not 0 <= reserve <= MAX_BID_CENTS):
        raise Unprocessable(f"reserve_cents must be an integer from 0 to {MAX_BID_CENTS}")
    out["reserve_cents"] = reserve or 0
    return out


def max_cents(body: dict[str, Any]) -> int:
    v = body.get("max_cents")
    if type(v) is not int or not 1 <= v <= MAX_BID_CENTS:
        raise Unprocessable(f"max_cents must be an integer from 1 to {MAX_BID_CENTS}", code=ErrorCode.INVALID_AMOUNT)
    return v


@dataclass(frozen=True, slots=True)
class AuctionInfo:
    """What never changes after creation: where the auction's keys are, and who may not bid."""

    id: str
    stream: str
    host: str

    @property
    def keys3(self) -> list[str]:
        return [keys.auction(self.stream, self.id), seq_key(self.stream), log_key(self.stream)]

    def args(self, svc: Services, now: int | None) -> list[object]:
        return ["" if now is None else now, channel(self.stream), svc.bus.log_maxlen, self.id]


# Fields of the auction hash.
_FIELDS = ("status", "stream", "sku", "title", "currency", "starting_bid", "duration_ms", "extend_window_ms",
           "extend_to_ms", "sudden_death", "reserve", "hold_ms", "created_at", "started_at", "ends_at", "price",
           "leader", "bids", "winner", "order", "announced")


def auction_view(auction_id: str, values: Sequence[bytes | None], now: int, *, for_host: bool = False) -> dict[str, Any]:
    """The public view (docs/auctions.md); never the leader's maximum (it is not even read)."""
    d = {k: (v.decode() if v is not None else "") for k, v in zip(_FIELDS, values, strict=True)}
    status = d["status"]
    ends_at, price, leader = int(d["ends_at"] or 0), int(d["price"] or 0), d["leader"]
    if status == "active" and now >= ends_at:
        status = "closing"  # time is up; the sweeper closes it within a second
    view: dict[str, Any] = {
        "id": auction_id,
        "stream_id": d["stream"],
        "sku": d["sku"],
        "title": d["title"],
        "currency": d["currency"],
        "status": status,
        "starting_bid_cents": int(d["starting_bid"]),
        "price_cents": price,
        "min_bid_cents": (price + increment(price) if leader else int(d["starting_bid"])) if status == "active" else None,
        "leader": leader or None,
        "bids": int(d["bids"] or 0),
        "started_at": iso_ms(int(d["started_at"] or 0)),
        "ends_at": iso_ms(ends_at),
        "duration_s": int(d["duration_ms"]) // 1000,
        "extend_window_s": int(d["extend_window_ms"]) // 1000,
        "extend_to_s": int(d["extend_to_ms"]) // 1000,
        "sudden_death": d["sudden_death"] == "1",
        "reserve_met": bool(leader) and price >= int(d["reserve"] or 0),
        "hold_s": int(d["hold_ms"]) // 1000,
        "created_at": iso_ms(int(d["created_at"])),
    }
    if d["status"] == "sold":
        view["winner"] = d["winner"]
        # The order is named once it exists (the `auction` event announces it then).
        view["order"] = d["order"] if d["announced"] == "1" else None
    if for_host:
        view["reserve_cents"] = int(d["reserve"] or 0)
    return view


async def list_for_stream(svc: Services, stream_id: str) -> list[dict[str, Any]]:
    """The stream's auctions, oldest first (`GET /api/streams/{id}/sales` key `auctions`, snapshots)."""
    ids = [i.decode() for i in await svc.redis.zrange(keys.stream_auctions(stream_id), 0, -1)]
    if not ids:
        return []
    pipe = svc.redis.pipeline(transaction=False)
    for auction_id in ids:
        pipe.hmget(keys.auction(stream_id, auction_id), *_FIELDS)
    now = now_ms()
    return [auction_view(i, v, now) for i, v in zip(ids, await pipe.execute(), strict=True) if v[0] is not None]


@dataclass(slots=True)
class Closed:
    """Where one auction stands after a close attempt."""

    status: str
    winner: str = ""
    price: int = 0
    order: str = ""
    announced: bool = False


# Told one bid's outcome: its bid.lua reply, or the exception that stands for it.
BidDone = Callable[[Any], None]


class _Bid:
    __slots__ = ("done", "key", "max", "user")

    def __init__(self, user: str, key: str, max_: int, done: BidDone) -> None:
        self.user, self.key, self.max, self.done = user, key, max_, done


class Auctions:
    """Per-process auction state: the bid batcher and a cache of AuctionInfo (immutable)."""

    def __init__(self, svc: Services, max_in_flight: int = 4) -> None:
        self.svc = svc
        self._info: dict[str, AuctionInfo] = {}
        self._pending: dict[str, tuple[AuctionInfo, list[_Bid]]] = {}
        self._scheduled = False
        self._in_flight = 0
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lookups -------------------------------------------------------------------------------

    def cached(self, auction_id: str) -> AuctionInfo | None:
        """The auction's AuctionInfo if this process has looked it up before (it never changes)."""
        return self._info.get(auction_id)

    async def info(self, auction_id: str) -> AuctionInfo:
        info = self._info.get(auction_id)
        if info is not None:
            return info
        if not AUCTION_ID_RE.match(auction_id):
            raise NotFound(f"no auction {auction_id!r}")
        with redis_errors():
            stream = await self.svc.redis.hget(keys.AUCTIONS, auction_id)  # type: ignore[misc]
            host = None if stream is None else await self.svc.redis.hget(  # type: ignore[misc]
                keys.auction(stream.decode(), auction_id), "host")
        if stream is None or host is None:
            raise NotFound(f"no auction {auction_id!r}")
        info = self._info[auction_id] = AuctionInfo(auction_id, stream.decode(), host.decode())
        return info

    async def view(self, auction_id: str, *, for_host: bool = False) -> dict[str, Any]:
        info = await self.info(auction_id)
        with redis_errors():
            values = await self.svc.redis.hmget(keys.auction(info.stream, auction_id), *_FIELDS)  # type: ignore[misc]
        if values[0] is None:
            raise NotFound(f"no auction {auction_id!r}")
        return auction_view(auction_id, values, now_ms(), for_host=for_host)

    # --- lifecycle -----------------------------------------------------------------------------

    async def create(self, stream_id: str, host: str, spec: dict[str, Any], product: dict[str, Any]) -> dict[str, Any]:
        auction_id = "au" + secrets.token_hex(6)
        now = datetime.now(UTC)
        created = int(now.timestamp() * 1000)
        async with self.svc.db.begin() as conn:
            await conn.execute(auctions_table.insert().values(
                id=auction_id, stream_id=stream_id, sku=spec["sku"], currency=product["currency"],
                starting_bid_cents=spec["starting_bid_cents"],
                reserve_cents=spec["reserve_cents"], duration_s=spec["duration_s"],
                sudden_death=spec["sudden_death"], hold_s=spec["hold_s"], status="scheduled", created_at=now,
            ))
        mapping = {
            "status": "scheduled", "stream": stream_id, "host": host, "sku": spec["sku"], "title": product["title"],
            "currency": product["currency"], "starting_bid": spec["starting_bid_cents"],
            "duration_ms": spec["duration_s"] * 1000, "extend_window_ms": spec["extend_window_s"] * 1000,
            "extend_to_ms": spec["extend_to_s"] * 1000, "sudden_death": int(spec["sudden_death"]),
            "reserve": spec["reserve_cents"], "hold_ms": spec["hold_s"] * 1000, "created_at": created,
            "started_at": 0, "ends_at": 0, "price": 0, "leader": "", "leader_max": 0, "bids": 0, "winner": "",
            "order": keys.auction_order(auction_id, secrets.token_hex(8)), "announced": 0,
        }
        with redis_errors():
            pipe = self.svc.redis.pipeline(transaction=False)
            pipe.hset(keys.auction(stream_id, auction_id), mapping=mapping)
            pipe.zadd(keys.stream_auctions(stream_id), {auction_id: created})
            pipe.hset(keys.AUCTIONS, auction_id, stream_id)
            # In the sweeper's set from the start: an auction started by a request that fails after
            # its script is still closed on time.
            pipe.sadd(keys.OPEN_AUCTIONS, auction_id)
            await pipe.execute()
        view = await self.view(auction_id, for_host=True)
        await self.svc.bus.publish_log(stream_id, {
            "type": "auction", "auction": auction_id, "status": "scheduled", "winner": None,
            "price_cents": 0, "order": None, "ends_at": None,
        })
        return view

    async def start(self, auction_id: str, now: int | None = None) -> dict[str, Any]:
        info = await self.info(auction_id)
        with redis_errors():
            r: Any = await START(self.svc.redis, info.keys3, info.args(self.svc, now))
        if r[0] == -1:
            raise NotFound(f"no auction {auction_id!r}")
        if r[0] == 0:
            raise Conflict(f"cannot start an auction that is {r[1].decode()}", code=ErrorCode.INVALID_STATE)
        async with self.svc.db.begin() as conn:
            await conn.execute(auctions_table.update().where(
                auctions_table.c.id == auction_id, auctions_table.c.status == "scheduled").values(status="active"))
        return await self.view(auction_id, for_host=True)

    # --- bids ----------------------------------------------------------------------------------

    async def bid(self, auction_id: str, user: str, key: str, amount: int) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of one bid; refusals raise."""
        info = await self.info(auction_id)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.submit(info, user, key, amount, functools.partial(settle, fut))
        return answer(await fut)

    def submit(self, info: AuctionInfo, user: str, key: str, amount: int, done: BidDone) -> None:
        """Queue one bid for the next script call; `done` is told its bid.lua reply (or the exception
        standing for it) from the batch's result loop. The host's own bid raises Forbidden at once."""
        if user == info.host:
            raise Forbidden("the stream's host may not bid on its auctions")
        self._pending.setdefault(info.id, (info, []))[1].append(_Bid(user, key, amount, done))
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._pending and not self._scheduled:  # bids that queued meanwhile go out as one batch
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: dict[str, tuple[AuctionInfo, list[_Bid]]]) -> None:
        calls = [(info, bids[i : i + MAX_PER_CALL]) for info, bids in batch.values()
                 for i in range(0, len(bids), MAX_PER_CALL)]
        try:
            results = await asyncio.gather(*(self._call(info, bids) for info, bids in calls), return_exceptions=True)
        except BaseException:  # cancelled (shutdown): never leave a bidder waiting forever
            for _, bids in calls:
                for b in bids:
                    b.done(Unavailable("the server is stopping"))
            raise
        for (info, bids), res in zip(calls, results, strict=True):
            outcome: Any = res
            if isinstance(res, REDIS_DOWN):
                outcome = Unavailable(f"redis unreachable: {res.__class__.__name__}")
            elif isinstance(res, Exception) and refuses_writes(res):
                outcome = Unavailable(f"redis refuses writes: {str(res)[:80]}")
            elif not isinstance(res, BaseException) and res and res[0] == -1:
                outcome = NotFound(f"no auction {info.id!r}")
            elif not isinstance(res, BaseException) and len(res) != len(bids):
                outcome = RuntimeError(f"{len(res)} replies for {len(bids)} bids")
            for i, b in enumerate(bids):
                b.done(outcome if isinstance(outcome, BaseException) else outcome[i])

    async def _call(self, info: AuctionInfo, bids: list[_Bid]) -> Any:
        args: list[object] = [*info.args(self.svc, None), len(bids)]
        for b in bids:
            args += (b.user, b.key, b.max)
        k = info.keys3
        return await BID(self.svc.redis, [k[0], keys.auction_idem(info.stream, info.id), k[1], k[2]], args)

    async def close_batcher(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- closing -------------------------------------------------------------------------------

    async def close_step(self, auction_id: str, now: int | None = None) -> Closed | None:
        """Step 1: fix the outcome if time is up (an unsold close is announced here). None: unknown."""
        info = await self.info(auction_id)
        r: Any = await CLOSE(self.svc.redis, info.keys3, info.args(self.svc, now))
        if r[0] == -1:
            return None
        return Closed(r[0].decode(), r[2].decode(), int(r[3]), r[4].decode(), bool(r[5]))

    async def award_step(self, auction_id: str, c: Closed) -> None:
        """Step 2: the winner's order (idempotent by its id), then the sets that have it swept and
        written (a retry after a failure between the two does both again). Its hold starts now by
        Redis's clock, which expiry goes by, whatever clock closed the auction."""
        info = await self.info(auction_id)
        f = await self.svc.redis.hmget(keys.auction(info.stream, auction_id),  # type: ignore[misc]
                                       "hold_ms", "sku", "title", "currency")
        await AWARD(self.svc.redis, keys.sale_keys(auction_id), [
            c.order, c.winner, c.price, f[0], "", info.stream, f[1], f[2], f[3],
            WIN_KEY, keys.WRITER_GROUP])
        pipe = self.svc.redis.pipeline(transaction=False)
        pipe.sadd(keys.OPEN_SALES, auction_id)  # the sweeper expires its hold
        pipe.sadd(keys.WRITER_SALES, auction_id)  # the order writer writes it to SQL
        await pipe.execute()

    async def announce_step(self, auction_id: str, now: int | None = None) -> int:
        """Step 3: the `auction` sold event, once. Returns its seq (0: announced before)."""
        info = await self.info(auction_id)
        return int(await ANNOUNCE(self.svc.redis, info.keys3, info.args(self.svc, now)))  # type: ignore[call-overload]

    async def settle(self, auction_id: str, now: int | None = None) -> Closed | None:
        """Every close step still to do for one auction; safe from any number of processes at once.
        Returns where it stands (status `active`/`scheduled`: nothing to do yet)."""
        c = await self.close_step(auction_id, now)
        if c is None or c.status not in ("sold", "unsold"):
            return c
        if c.status == "sold" and not c.announced:
            await self.award_step(auction_id, c)
            await self.announce_step(auction_id, now)
            c.announced = True
        await self._record(auction_id, c)
        return c

    async def _record(self, auction_id: str, c: Closed) -> None:
        """The outcome in SQL, then the auction leaves the sweeper's set (in that order: a failure
        between them is retried by the next sweep; the UPDATE is idempotent)."""
        info = await self.info(auction_id)
        bids, closed_at = await self.svc.redis.hmget(keys.auction(info.stream, auction_id), "bids", "closed_at")  # type: ignore[misc]
        async with self.svc.db.begin() as conn:
            await conn.execute(auctions_table.update().where(
                auctions_table.c.id == auction_id, auctions_table.c.status.in_(("scheduled", "active"))
            ).values(status=c.status, price_cents=c.price, bids=int(bids or 0), winner=c.winner or None,
                     order_id=c.order if c.status == "sold" else None,
                     closed_at=datetime.fromtimestamp(int(closed_at or now_ms()) / 1000, UTC)))
        pipe = self.svc.redis.pipeline(transaction=False)
        # Retried bid keys keep their answers for the retention period, as orders' keys do.
        pipe.expire(keys.auction_idem(info.stream, auction_id), self.svc.settings.sale_retention_s)
        pipe.srem(keys.OPEN_AUCTIONS, auction_id)
        await pipe.execute()

    async def sweep(self) -> int:
        """Settle every open auction that is due (the sweeper's tick); returns auctions closed."""
        closed = 0
        for raw in await self.svc.redis.smembers(keys.OPEN_AUCTIONS):  # type: ignore[misc]
            auction_id = raw.decode()
            try:
                c = await self.settle(auction_id)
            except NotFound:
                await self.svc.redis.srem(keys.OPEN_AUCTIONS, auction_id)  # type: ignore[misc]
                continue
            except REDIS_DOWN:
                raise
            except Exception:  # one auction's failure must not hold up the others' closing
                log.exception("closing auction %s failed; retried next sweep", auction_id)
                continue
            if c is not None and c.status in ("sold", "unsold"):
                closed += 1
        return closed


def answer(r: Sequence[Any]) -> tuple[int, dict[str, Any]]:
    """(status, body) of one bid.lua reply; a refusal raises its error."""
    code = int(r[0])
    status = 201
    if code == DUPLICATE:  # the first answer again
        code, r, status = int(r[1]), r[1:], 200
    if code in (LEADING, OUTBID, RAISED):
        return status, {"status": "outbid" if code == OUTBID else "leading", "price_cents": int(r[1]),
                        "ends_at": iso_ms(int(r[2]))}
    if code == NOT_ACTIVE:
        raise Conflict("the auction is not active", code=ErrorCode.AUCTION_NOT_ACTIVE)
    if code == TOO_LOW:
        raise Conflict(f"the lowest acceptable bid is {int(r[1])} cents", code=ErrorCode.BID_TOO_LOW,
                       min_bid_cents=int(r[1]))
    if code == ALREADY_LEADING:
        raise Conflict("you are already leading with a maximum at least this high", code=ErrorCode.ALREADY_LEADING)
    if code == IDEM_CONFLICT:
        raise Unprocessable("Idempotency-Key was used for another max_cents", code=ErrorCode.IDEMPOTENCY_CONFLICT)
    raise RuntimeError(f"unknown bid reply {code}")


AUCTIONS = web.AppKey("livesale_auctions", Auctions)
