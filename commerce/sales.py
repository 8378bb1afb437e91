"""Flash sales: creation, start/end, the public view, and stock notices to the stream's viewers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from commerce import inventory, keys
from commerce.schema import sales as sales_table
from livesale.bus import Bus, channel
from livesale.codes import ErrorCode
from livesale.errors import Conflict, NotFound, Unprocessable
from livesale.services import Services
from livesale.tasks import pause
from livesale.times import iso_ms

SALE_ID_RE = re.compile(r"^sa[0-9a-f]{12}$")
LIMITS = {
    "price_cents": (0, 100_000_000_00),
    "stock": (1, 10_000_000),
    "per_user_limit": (1, 100),
    "duration_s": (1, 7 * 86400),
    "hold_s": (1, 86400),
}

EARLIEST_START = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_START = datetime(3000, 1, 1, tzinfo=UTC)


def parse_time(value: Any) -> int:
    """RFC 3339 string -> epoch ms."""
    if not isinstance(value, str):
        raise Unprocessable("starts_at must be an RFC 3339 time such as 2026-01-01T20:00:00Z")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Unprocessable("starts_at must be an RFC 3339 time such as 2026-01-01T20:00:00Z") from exc
    if dt.tzinfo is None:
        raise Unprocessable("starts_at needs a time zone (use Z for UTC)")
    # Every time a sale shows (starts_at, ends_at = starts_at + up to 7 days) must be one an RFC 3339
    # string can carry: a start in year 1 or 9999 would make the sale, and every view listing it, fail.
    if not EARLIEST_START <= dt < LATEST_START:
        raise Unprocessable("starts_at must be from 2000-01-01 to 2999-12-31")
    return int(dt.timestamp() * 1000)


def validate_fields(body: dict[str, Any], limits: dict[str, tuple[int, int]],
                    defaults: dict[str, int] | None = None) -> dict[str, Any]:
    """`sku` and the integer fields of a new sale or auction, each within its (low, high) limits."""
    out: dict[str, Any] = {}
    sku = body.get("sku")
    if not isinstance(sku, str) or not sku:
        raise Unprocessable("sku must be a non-empty string")
    out["sku"] = sku
    for name, (lo, hi) in limits.items():
        v = body.get(name, (defaults or {}).get(name))
        if type(v) is not int or not lo <= v <= hi:
            raise Unprocessable(f"{name} must be an integer from {lo} to {hi}")
        out[name] = v
    return out


def validate_sale(body: dict[str, Any]) -> dict[str, Any]:
    out = validate_fields(body, LIMITS)
    out["starts_at"] = parse_time(body["starts_at"]) if body.get("starts_at") is not None else 0
    return out


def effective_status(stored: str, starts_at: int, ends_at: int, now_ms: int) -> str:
    """Mirror of effective_status in lua/common.lua, for reads between sweeper ticks."""
    if stored == "ended":
        return "ended"
    if starts_at and now_ms >= starts_at:
        return "active" if now_ms < ends_at else "ended"
    return "scheduled"


def sale_view(sale_id: str, h: dict[bytes, bytes]) -> dict[str, Any]:
    d = {k.decode(): v.decode() for k, v in h.items()}
    starts, ends = int(d["starts_at"]), int(d["ends_at"])
    now = int(datetime.now(UTC).timestamp() * 1000)
    return {
        "id": sale_id,
        "stream_id": d["stream"],
        "sku": d["sku"],
        "title": d.get("title", ""),
        "price_cents": int(d["price_cents"]),
        "currency": d["currency"],
        "status": effective_status(d["status"], starts, ends, now),
        "stock": int(d["stock"]),
        "available": int(d["available"]),
        "held": int(d["held"]),
        "sold": int(d["sold"]),
        "per_user_limit": int(d["limit"]),
        "duration_s": int(d["duration_ms"]) // 1000,
        "hold_s": int(d["hold_ms"]) // 1000,
        "starts_at": iso_ms(starts),
        "ends_at": iso_ms(ends),
    }


async def get_sale(svc: Services, sale_id: str) -> dict[str, Any]:
    if not SALE_ID_RE.match(sale_id):
        raise NotFound(f"no sale {sale_id!r}")
    h = await svc.redis.hgetall(keys.sale(sale_id))  # type: ignore[misc]
    if not h:
        raise NotFound(f"no sale {sale_id!r}")
    return sale_view(sale_id, h)


async def create_sale(svc: Services, stream_id: str, spec: dict[str, Any], product: dict[str, Any]) -> dict[str, Any]:
    sale_id = "sa" + secrets.token_hex(6)
    now = datetime.now(UTC)
    starts_at = spec["starts_at"]
    async with svc.db.begin() as conn:
        await conn.execute(
            sales_table.insert().values(
                id=sale_id, stream_id=stream_id, sku=spec["sku"], price_cents=spec["price_cents"],
                currency=product["currency"], stock=spec["stock"], per_user_limit=spec["per_user_limit"],
                duration_s=spec["duration_s"], hold_s=spec["hold_s"], created_at=now,
            )
        )
    mapping = {
        "stream": stream_id, "sku": spec["sku"], "title": product["title"], "price_cents": spec["price_cents"],
        "currency": product["currency"], "stock": spec["stock"], "available": spec["stock"], "held": 0,
        "sold": 0, "limit": spec["per_user_limit"], "hold_ms": spec["hold_s"] * 1000,
        "duration_ms": spec["duration_s"] * 1000, "status": "scheduled", "starts_at": starts_at,
        "ends_at": starts_at + spec["duration_s"] * 1000 if starts_at else 0,
    }
    pipe = svc.redis.pipeline(transaction=True)
    pipe.hset(keys.sale(sale_id), mapping=mapping)
    pipe.xgroup_create(keys.events(sale_id), keys.WRITER_GROUP, id="0", mkstream=True)
    # On a cluster the sets live in other slots, so no MULTI spans them: the sale's own keys first,
    # then the sets that make the sweeper and the writer follow it (docs/cluster.md).
    sets = svc.redis.pipeline(transaction=False) if svc.bus.sharded else pipe
    sets.sadd(keys.stream_sales(stream_id), sale_id)
    sets.sadd(keys.OPEN_SALES, sale_id)
    sets.sadd(keys.WRITER_SALES, sale_id)
    await pipe.execute()
    if sets is not pipe:
        await sets.execute()
    # A start time already in the past starts the sale now.
    await inventory.tick(svc.redis, sale_id)
    view = await get_sale(svc, sale_id)
    await publish_sale(svc.bus, view)  # carries the status the tick just set
    return view


async def publish_sale(bus: Bus, view: dict[str, Any]) -> None:
    event = {"type": "sale", "sale": view["id"]}
    event.update({k: view[k] for k in ("status", "sku", "title", "price_cents", "currency", "stock",
                                       "available", "per_user_limit", "starts_at", "ends_at")})
    await bus.publish_log(view["stream_id"], event)


_ALLOWED_FROM = {"start": ("scheduled",), "end": ("scheduled", "active")}


async def transition(svc: Services, sale_id: str, action: str) -> dict[str, Any]:
    """Start or end a sale now; 409 `invalid_state` naming the current state otherwise (as streams)."""
    current = (await get_sale(svc, sale_id))["status"]
    if current not in _ALLOWED_FROM[action]:
        raise Conflict(f"cannot {action} a sale that is {current}", code=ErrorCode.INVALID_STATE)
    t = await inventory.tick(svc.redis, sale_id, action)
    view = await get_sale(svc, sale_id)
    if t is not None and t.changed:
        await publish_sale(svc.bus, view)
    return view


async def list_for_stream(svc: Services, stream_id: str) -> list[dict[str, Any]]:
    ids = sorted(i.decode() for i in await svc.redis.smembers(keys.stream_sales(stream_id)))  # type: ignore[misc]
    if not ids:
        return []
    pipe = svc.redis.pipeline(transaction=False)
    for sale_id in ids:
        pipe.hgetall(keys.sale(sale_id))
    return [sale_view(i, h) for i, h in zip(ids, await pipe.execute(), strict=True) if h]


async def end_for_stream(svc: Services, stream_id: str) -> None:
    """A stream that ends ends its sales (holds already taken can still be paid until they expire)."""
    for sale in await list_for_stream(svc, stream_id):
        if sale["status"] != "ended":
            with contextlib.suppress(Conflict):  # it ended by the clock meanwhile
                await transition(svc, sale["id"], "end")


class StockNotices:
    """Publishes a sale's `available` to its stream at most every `interval` after it changed
    (viewers see a falling counter, not every decrement). The value is read from Redis when it is
    published, in the same script: batches finish in any order and other processes change stock too,
    so a value remembered here could be stale."""

    def __init__(self, svc: Services, interval: float = 0.05) -> None:
        self.svc = svc
        self.interval = interval
        self._dirty: set[str] = set()
        self._stream_of: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, sale_id: str, _available: int = 0, _held: int = 0) -> None:
        self._dirty.add(sale_id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for sale_id in dirty:
            stream = self._stream_of.get(sale_id)
            if stream is None:
                raw = await self.svc.redis.hget(keys.sale(sale_id), "stream")  # type: ignore[misc]
                if raw is None:
                    continue
                stream = self._stream_of[sale_id] = raw.decode()
            if self.svc.bus.sharded:
                # The sale's slot is not its stream's: read, then SPUBLISH in the stream's slot. Two
                # processes' notices may then land out of read order (docs/cluster.md).
                raw = await self.svc.redis.hget(keys.sale(sale_id), "available")  # type: ignore[misc]
                if raw is not None:
                    await self.svc.bus.publish_state(stream, {"type": "stock", "sale": sale_id, "available": int(raw)})
                continue
            await inventory.STOCK_NOTICE(self.svc.redis, [keys.sale(sale_id)], [channel(stream), sale_id])

    async def _run(self) -> None:
        while True:
            await pause(self.interval)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - a lost notice is replaced by the next one
                await pause(0.5)
