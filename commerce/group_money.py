"""Group-buy money and closing (docs/groupbuy.md "Money"): joining (hold a unit, record, charge,
confirm or release), closing (any process, once), settling a closed group's refunds exactly once, and
the sweeper that does the last two from every process.

Joining is hold -> record -> charge -> confirm. The unit is held first (gb_join.lua, one atomic step
with every check), so a card is only charged for a place that exists; a declined card releases it
(gb_release.lua) and leaves nothing held. The member's order row and its `charge` payment row are in
SQL before the provider is called; the provider's idempotency key is the order id, so a retried join
gets the same charge. A process that dies between the steps leaves a `pending` member: the sweeper,
`group_pending_s` after the join, asks the provider (lookup, never a charge) and confirms or releases
it; a charge that lands after its member was released is refunded (by the request that made it, or by
the sweeper's pass over `charge` rows left open).

Closing (gb_close.lua) is one atomic step that only one caller wins: it fixes the price, the members'
orders and the units, and puts the group in the group-buy's `settle` set. Settling then moves the
money: per member one `refund` row (open) in SQL, the provider's refund with the key
"<order id>:refund", the row `done`, then `rf:` in Redis. The group leaves `settle` only when every
refund is done, so a settler killed anywhere is finished by the next one (a lease lets one process
settle a group at a time; an expired lease passes it on), and a refund repeated after a crash moves no
money twice (same key).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from redis.exceptions import LockError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from commerce import groupbuys as gbm
from commerce import keys
from commerce.payments import PaymentProvider, ProviderUnavailable, UnknownPaymentMethod
from commerce.schema import group_orders, group_payments
from livesale.codes import ErrorCode
from livesale.errors import Conflict, NotFound, PaymentDeclined, Unavailable, Unprocessable
from livesale.redis_client import redis_errors
from livesale.services import Services
from livesale.tasks import keep_running
from monitoring import metrics as m

log = logging.getLogger("livesale.groupbuy")

# Test-only fault hooks: seconds to sleep after each close refund (before it is recorded), and after a
# join's charge (before the member is confirmed), so a test can kill a process right there.
_REFUND_DELAY = float(os.environ.get("LIVESALE_GROUP_REFUND_DELAY", "0") or 0)
_CHARGE_DELAY = float(os.environ.get("LIVESALE_GROUP_CHARGE_DELAY", "0") or 0)
NO_CHARGE_SETTLE_S = 3600.0  # a `charge` row whose charge no one finds is closed this long after
# Versions of a member's SQL row (it only moves forward).
V_PENDING, V_JOINED, V_CLOSED = 1, 2, 3

_REFUSALS = {
    "group_closed": (ErrorCode.GROUP_CLOSED, "the group is closed"),
    "group_full": (ErrorCode.GROUP_FULL, "the group is full"),
    "already_in_group": (ErrorCode.ALREADY_IN_GROUP, "you are already in an open group of this group-buy"),
    "sold_out": (ErrorCode.SOLD_OUT, "no units left"),
    "groupbuy_not_active": (ErrorCode.GROUPBUY_NOT_ACTIVE, "the group-buy is not active"),
}


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(t: int) -> datetime:
    return datetime.fromtimestamp(t / 1000, UTC)


def _upsert(engine: AsyncEngine, table: sa.Table, index: list[str], update: list[str],
            where: Any = None) -> Any:
    ins = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = ins(table)
    return stmt.on_conflict_do_update(index_elements=index, set_={c: stmt.excluded[c] for c in update},
                                      where=where(stmt) if where else None)


async def _write_member(db: AsyncEngine, row: dict[str, Any]) -> None:
    async with db.begin() as conn:
        await conn.execute(_member_upsert(db), [row])


async def _record_joined(db: AsyncEngine, oid: str, charge_id: str, member: dict[str, Any]) -> None:
    """The charge row `done` and the member's row `joined`, in one transaction (one commit per join
    fewer: SQLite serialises them)."""
    async with db.begin() as conn:
        await conn.execute(group_payments.update()
                           .where(group_payments.c.order_id == oid, group_payments.c.kind == "charge")
                           .values(state="done", charge_id=charge_id, updated_at=_now()))
        await conn.execute(_member_upsert(db), [member])


def _member_upsert(db: AsyncEngine) -> Any:
    return _upsert(db, group_orders, ["id"], ["status", "amount_cents", "charged_cents", "refunded_cents",
                                             "version", "updated_at"],
                   lambda s: group_orders.c.version < s.excluded.version)


async def _open_payment(db: AsyncEngine, order_id: str, kind: str, method: str, amount: int, currency: str,
                        charge_id: str | None, member: dict[str, Any] | None = None) -> None:
    """Record a charge or refund about to be made (and, for a join, the member's order), in one
    transaction. A row already there (a retry) is left as it is."""
    now = _now()
    row = {"order_id": order_id, "kind": kind, "method": method, "amount_cents": amount, "currency": currency,
           "charge_id": charge_id, "state": "open", "created_at": now, "updated_at": now}
    ins = postgresql.insert if db.dialect.name == "postgresql" else sqlite.insert
    try:
        async with db.begin() as conn:
            await conn.execute(ins(group_payments).on_conflict_do_nothing(), [row])
            if member is not None:
                await conn.execute(ins(group_orders).on_conflict_do_nothing(), [member])
    except (DBAPIError, OSError) as exc:
        raise Unavailable(f"payments cannot be recorded now: {exc.__class__.__name__}") from exc


async def _close_payment(db: AsyncEngine, order_id: str, kind: str, state: str, charge_id: str | None) -> None:
    async with db.begin() as conn:
        await conn.execute(group_payments.update()
                           .where(group_payments.c.order_id == order_id, group_payments.c.kind == kind)
                           .values(state=state, charge_id=charge_id, updated_at=_now()))


async def _best_effort(what: str, coro: Any) -> None:
    """SQL bookkeeping after Redis already holds the truth: a failure is logged; the sweeper's passes
    (rows left `open`, groups left in `settle`) write it later."""
    try:
        await coro
    except (DBAPIError, OSError) as exc:
        log.warning("%s not recorded now (%r); the group sweeper retries", what, exc)


async def publish_group(svc: Services, stream_id: str, gid: str, only_open: bool = False) -> None:
    """The stream-log event `group` with the group's state as Redis holds it now. A join announces
    only an open group (`only_open`): a closed one has its own event, from its settler."""
    view = await gbm.get_group(svc, gid)
    if only_open and view["status"] != "open":
        return
    await svc.bus.publish_log(stream_id, {
        "type": "group", "group": gid, "groupbuy": view["groupbuy"], "members": view["members"],
        "price_cents": view["price_cents"], "status": view["status"], "next_tier": view["next_tier"],
        "expires_at": view["expires_at"]})


async def join(svc: Services, provider: PaymentProvider, gb_id: str, gid: str, user: str, key: str,
               method: str, ref: str | None) -> tuple[int, dict[str, Any]]:
    """Open a group (gid '') or join one; returns (201 or 200 for a retried key, body)."""
    ks = keys.groupbuy_keys(gb_id)
    with redis_errors():
        price0, currency, stream = await svc.redis.hmget(ks[0], "price0", "currency", "stream")  # type: ignore[misc]
        if price0 is None:
            raise NotFound(f"no group-buy {gb_id!r}")
        r: Any = await gbm.JOIN(svc.redis, ks, [user, key, gid, method, ref or "", gbm.new_order_id(gb_id),
                                               gbm.new_group_id(gb_id)])
    code = int(r[0])
    if code == -1:
        raise NotFound(f"no group {gid!r}" if gid else f"no group-buy {gb_id!r}")
    if code == 2:
        why = r[1].decode()
        _count_join(why)
        if why == "idempotency_conflict":
            raise Unprocessable("Idempotency-Key was used for another group or payment method",
                                code=ErrorCode.IDEMPOTENCY_CONFLICT, order=r[2].decode())
        err, msg = _REFUSALS[why]
        raise Conflict(msg, code=err)
    oid, gid = r[1].decode(), r[2].decode()
    price = int(price0)
    cur = currency.decode()
    if code == 1 and r[3] != b"pending":
        _count_join("retry")
        return 200, {"group": gid, "member": oid, "charged_cents": price, "status": r[3].decode()}
    created = int(time.time() * 1000)
    member = {"id": oid, "groupbuy_id": gb_id, "group_id": gid, "user_id": user, "idempotency_key": key,
              "ref": ref, "status": "pending", "amount_cents": price, "charged_cents": 0, "refunded_cents": 0,
              "version": V_PENDING, "created_at": _ms(created), "updated_at": _ms(created)}
    try:
        await _open_payment(svc.db, oid, "charge", method, price, cur, None, member)
    except Unavailable:
        await _release(svc, gb_id, oid)
        raise
    try:
        charge = await provider.charge(price, cur, method, oid)
    except UnknownPaymentMethod:
        await _release(svc, gb_id, oid)
        await _best_effort("declined charge", _close_payment(svc.db, oid, "charge", "declined", None))
        raise Unprocessable(f"unknown payment_method {method!r}") from None
    except ProviderUnavailable as exc:  # the member stays pending: a retry or the sweeper settles it
        raise Unavailable(f"the payment provider is unreachable: {exc}") from None
    if not charge.ok:
        _count_join("declined")
        await _release(svc, gb_id, oid)
        await _best_effort("declined charge", _close_payment(svc.db, oid, "charge", "declined", charge.id))
        raise PaymentDeclined(f"the card was declined ({charge.decline_code}); nothing is held")
    if _CHARGE_DELAY:
        await asyncio.sleep(_CHARGE_DELAY)
    with redis_errors():
        c: Any = await gbm.CONFIRM(svc.redis, ks, [oid, charge.id, price])
    if int(c[0]) == -2:
        # Released while the provider was charging (the sweeper took it for stuck): give it back.
        await _refund_charge(svc, provider, oid, charge.id, price)
        raise Conflict("the join took too long and was undone; the charge is refunded", code=ErrorCode.GROUP_CLOSED)
    await _best_effort("joined member", _record_joined(svc.db, oid, charge.id, dict(
        member, status="joined", charged_cents=price, version=V_JOINED, updated_at=_now())))
    _count_join("joined" if code == 0 else "retry")
    if int(c[0]) == 0:
        try:
            if int(c[2]) >= int(c[4]):  # full: close now (else the sweeper does, within a tick)
                await close_group(svc, provider, gb_id, gid)  # its `group` event announces this join too
            else:
                await publish_group(svc, stream.decode(), gid, only_open=True)
        except Exception:  # noqa: BLE001 - the member has joined; the sweeper finishes the close
            log.warning("group %s: announcing or closing after a join failed", gid, exc_info=True)
    return (201 if code == 0 else 200), {"group": gid, "member": oid, "charged_cents": price, "status": "joined"}


def _count_join(outcome: str) -> None:
    if m.ENABLED:
        m.GROUP_JOINS.labels(outcome).inc()


async def _release(svc: Services, gb_id: str, oid: str) -> bool:
    """pending -> declined (gb_release.lua), then the SQL row (best effort: me/orders leaves declined
    members out, and reads the status from Redis while it is there)."""
    with redis_errors():
        r: Any = await gbm.RELEASE(svc.redis, keys.groupbuy_keys(gb_id), [oid])
    if int(r[0]) != 0:
        return False
    await _best_effort("declined member", _mark_declined(svc.db, oid))
    return True


async def _mark_declined(db: AsyncEngine, oid: str) -> None:
    async with db.begin() as conn:
        await conn.execute(group_orders.update()
                           .where(group_orders.c.id == oid, group_orders.c.version < V_JOINED)
                           .values(status="declined", version=V_JOINED, updated_at=_now()))


async def _refund_charge(svc: Services, provider: PaymentProvider, oid: str, charge_id: str, amount: int) -> None:
    """Give back the whole charge of a member that was released (never joined)."""
    try:
        await provider.refund(charge_id, amount, idempotency_key=f"{oid}:void")
    except ProviderUnavailable as exc:  # the `charge` row stays open: the sweeper's pass refunds it
        log.warning("refund of %s for member %s failed (%s); left to the sweeper", charge_id, oid, exc)
        return
    if m.ENABLED:
        m.GROUP_REFUNDS.labels("void").inc()
    await _best_effort("void refund", _close_payment(svc.db, oid, "charge", "refunded", charge_id))


async def close_group(svc: Services, provider: PaymentProvider, gb_id: str, gid: str, force: bool = False) -> bool:
    """Close the group if it is due (gb_close.lua decides, once) and settle its money. Any process may
    call it any number of times."""
    ks = keys.groupbuy_keys(gb_id)
    r: Any = await gbm.CLOSE(svc.redis, ks, [gid, "1" if force else "0"])
    if int(r[0]) != 0:
        return False
    if m.ENABLED:
        m.GROUPS_CLOSED.labels(r[1].decode()).inc()
    await settle_group(svc, provider, gb_id, gid)
    return True


async def settle_group(svc: Services, provider: PaymentProvider, gb_id: str, gid: str) -> bool:
    """Move a closed group's money (see the module docstring); returns whether it is all done."""
    ks = keys.groupbuy_keys(gb_id)
    lock = svc.redis.lock(keys.group_lease(gb_id, gid), timeout=svc.settings.group_lease_s, blocking=False)
    if not await lock.acquire():
        return False  # another process is settling it
    try:
        if not await svc.redis.sismember(ks[7], gid):  # type: ignore[misc]
            return True  # settled by another process before we took the lease
        stream, currency = await svc.redis.hmget(ks[0], "stream", "currency")  # type: ignore[misc]
        if not await svc.redis.hexists(ks[1], "ev:" + gid):  # type: ignore[misc]
            # Announced before the refunds, so viewers see the close at once; a settler that dies
            # between the two leaves it to the next, which announces it again (at least once).
            await publish_group(svc, stream.decode(), gid)
            await svc.redis.hset(ks[1], "ev:" + gid, 1)  # type: ignore[misc]
        members = (await svc.redis.hget(ks[1], "m:" + gid) or b"").decode().split(",")  # type: ignore[misc]
        for oid in filter(None, members):
            await _settle_member(svc, provider, gb_id, oid, currency.decode())
        await svc.redis.srem(ks[7], gid)  # type: ignore[misc]
        return True
    finally:
        try:
            await lock.release()
        except LockError:  # the lease lapsed meanwhile; whoever holds it now finishes idempotently
            pass


async def _settle_member(svc: Services, provider: PaymentProvider, gb_id: str, oid: str, currency: str) -> None:
    ks = keys.groupbuy_keys(gb_id)
    f = ("s:", "u:", "g:", "k:", "c:", "ch:", "rf:", "a:", "cid:", "m:", "r:")
    s, u, g, k, c, ch, rf, a, cid, method, ref = await svc.redis.hmget(ks[4], *(p + oid for p in f))  # type: ignore[misc]
    if s not in (b"paid", b"refunded"):
        return  # declined while being charged: it never joined, nothing to settle
    charged, refunded, amount = int(ch), int(rf), int(a)
    due = charged - amount
    if due > refunded:
        await _open_payment(svc.db, oid, "refund", method.decode(), due, currency, cid.decode())
        await provider.refund(cid.decode(), due, idempotency_key=f"{oid}:refund")
        if m.ENABLED:
            m.GROUP_REFUNDS.labels("full" if amount == 0 else "difference").inc()
        if _REFUND_DELAY:
            await asyncio.sleep(_REFUND_DELAY)
        await _close_payment(svc.db, oid, "refund", "done", cid.decode())
        await svc.redis.hset(ks[4], "rf:" + oid, due)  # type: ignore[misc]
        refunded = due
    await _write_member(svc.db, {
        "id": oid, "groupbuy_id": gb_id, "group_id": g.decode(), "user_id": u.decode(),
        "idempotency_key": k.decode(), "ref": ref.decode() or None, "status": s.decode(), "amount_cents": amount,
        "charged_cents": charged, "refunded_cents": refunded, "version": V_CLOSED,
        "created_at": _ms(int(c)), "updated_at": _now()})


async def end_groupbuy(svc: Services, provider: PaymentProvider, gb_id: str) -> bool:
    """Stop new groups and joins, and close every open group now. False if it had ended already."""
    ks = keys.groupbuy_keys(gb_id)
    with redis_errors():
        pipe = svc.redis.pipeline(transaction=True)
        pipe.hget(ks[0], "status")
        pipe.hset(ks[0], "status", "ended")
        before, _ = await pipe.execute()
        if before == b"ended":
            return False
        gids = [raw.decode() for raw in await svc.redis.zrange(ks[5], 0, -1)]
    for gid in gids:
        try:
            await close_group(svc, provider, gb_id, gid, force=True)
        except Exception:  # noqa: BLE001 - the group-buy has ended; the sweeper finishes each close
            log.warning("group %s: closing at the group-buy's end failed; the sweeper retries", gid, exc_info=True)
    return True


class GroupSweeper:
    """Every process runs one: settles stuck pending members, closes due groups, finishes closes whose
    money is not all moved, and repairs `charge` rows a dead process left open."""

    def __init__(self, svc: Services, provider: PaymentProvider, interval: float = 0.25) -> None:
        self.svc = svc
        self.provider = provider
        self.interval = interval
        self._last_reconcile = 0.0

    async def run(self) -> None:
        await keep_running(self.sweep_once, name="group_sweeper", log=log, interval=self.interval)

    async def sweep_once(self) -> int:
        """One pass; returns groups closed."""
        closed = 0
        for raw in await self.svc.redis.smembers(keys.OPEN_GROUPBUYS):  # type: ignore[misc]
            closed += await self._sweep(raw.decode())
        now = time.monotonic()
        if now - self._last_reconcile > self.svc.settings.settle_interval_s:
            self._last_reconcile = now
            await self.reconcile_charges()
        return closed

    async def _sweep(self, gb_id: str) -> int:
        redis = self.svc.redis
        ks = keys.groupbuy_keys(gb_id)
        status, price0 = await redis.hmget(ks[0], "status", "price0")  # type: ignore[misc]
        if status is None:
            await redis.srem(keys.OPEN_GROUPBUYS, gb_id)  # type: ignore[misc]
            return 0
        now = int(time.time() * 1000)
        stuck = await redis.zrangebyscore(ks[6], "-inf", now - int(self.svc.settings.group_pending_s * 1000),
                                          start=0, num=100)
        for oid in stuck:
            await self._each("member " + oid.decode(), self._settle_stuck(gb_id, oid.decode(), int(price0)))
        ended = status == b"ended"
        due = await (redis.zrange(ks[5], 0, -1) if ended else redis.zrangebyscore(ks[5], "-inf", now))
        closed = 0
        for gid in due:
            closed += await self._each("group " + gid.decode(),
                                       close_group(self.svc, self.provider, gb_id, gid.decode(), force=ended))
        for gid in await redis.smembers(ks[7]):  # type: ignore[misc]
            await self._each("group " + gid.decode(), settle_group(self.svc, self.provider, gb_id, gid.decode()))
        if ended:
            pipe = redis.pipeline(transaction=False)
            pipe.zcard(ks[5])
            pipe.zcard(ks[6])
            pipe.scard(ks[7])
            if not any(await pipe.execute()):
                await redis.srem(keys.OPEN_GROUPBUYS, gb_id)  # type: ignore[misc]
        return closed

    @staticmethod
    async def _each(what: str, step: Any) -> int:
        """One member's or group's step: a provider or SQL outage stops that one until the next pass,
        not the others (a lost Redis stops the pass: keep_running waits and retries)."""
        try:
            return int(bool(await step))
        except (ProviderUnavailable, Unavailable, DBAPIError) as exc:
            log.warning("%s: left for the next pass (%r)", what, exc)
            return 0

    async def _settle_stuck(self, gb_id: str, oid: str, price: int) -> None:
        """A member pending past group_pending_s: its join request died or hangs. The provider says
        whether the card was charged (lookup never charges): confirm the member, or release it."""
        ks = keys.groupbuy_keys(gb_id)
        method = await self.svc.redis.hget(ks[4], "m:" + oid)  # type: ignore[misc]
        if method is None:
            return
        charge = await self.provider.lookup(oid, method.decode())
        if charge is not None and charge.ok:
            c: Any = await gbm.CONFIRM(self.svc.redis, ks, [oid, charge.id, price])
            if int(c[0]) == 0:  # (a group it fills is marked due by the confirm itself)
                await _best_effort("charge", _close_payment(self.svc.db, oid, "charge", "done", charge.id))
        else:
            # No charge (or a declined one): release. A charge its request makes after this is
            # refunded by that request (confirm refuses), or by reconcile_charges if it died.
            await _release(self.svc, gb_id, oid)

    async def reconcile_charges(self) -> int:
        """`charge` rows left open past the grace period: done if the member joined with that charge;
        refunded if the member was released but a charge exists."""
        cutoff = _now() - timedelta(seconds=self.svc.settings.settle_grace_s)
        async with self.svc.db.connect() as conn:
            rows = (await conn.execute(sa.select(group_payments).where(
                group_payments.c.kind == "charge", group_payments.c.state == "open",
                group_payments.c.updated_at < cutoff).limit(200))).all()
        fixed = 0
        for row in rows:
            ks = keys.groupbuy_keys(keys.groupbuy_of(row.order_id))
            s, cid = await self.svc.redis.hmget(ks[4], "s:" + row.order_id, "cid:" + row.order_id)  # type: ignore[misc]
            if s is None or s == b"pending":
                continue  # unknown (left for an operator) or still being settled as stuck
            try:
                charge = await self.provider.lookup(row.order_id, row.method)
            except ProviderUnavailable:
                continue
            if charge is not None and charge.ok and cid is not None and cid.decode() == charge.id:
                await _close_payment(self.svc.db, row.order_id, "charge", "done", charge.id)
            elif charge is not None and charge.ok:
                await _refund_charge(self.svc, self.provider, row.order_id, charge.id, row.amount_cents)
            elif charge is not None or row.created_at.replace(tzinfo=UTC) < _now() - timedelta(seconds=NO_CHARGE_SETTLE_S):
                await _close_payment(self.svc.db, row.order_id, "charge", "declined", charge.id if charge else None)
            else:
                continue
            fixed += 1
        return fixed
