"""Payment attempts, kept in SQL, and the reconciler that settles the ones a request left open.

Paying is check (Redis) -> charge (provider) -> commit (Redis). If Redis is lost between the charge
and the commit, or the process dies there, the buyer has been charged and the order is still
`reserved`. A buyer who retries pays with the same charge (the provider is idempotent per order and
card). One who does not would lose the money when the hold expires. So before charging, `pay` records
the attempt in SQL (`open`); after the commit it marks it `settled`, or `refunded` when the charge
was given back. If SQL cannot take the record, nothing is charged (503).

`Reconciler` runs in every process. It takes attempts left `open` longer than a grace period, and
settles them by what the order became:
  - still `reserved`: left alone (the buyer may retry; if not, the hold expires and the next round
    refunds);
  - `paid` by this attempt's charge: `settled`;
  - paid by another charge, expired or cancelled: the charge, if there is one, is refunded
    (`refunded`); a declined charge is just `settled`, and so is one no one finds an hour after the
    hold ended (`NO_CHARGE_SETTLE_S`: a provider's search may lag its charges, a provider kept in
    memory knows only its own process' charges, and a charge can be made until the hold ends, which
    may be a day after the attempt opened).
It asks the provider for the charge (`PaymentProvider.lookup`) and never makes one. Two processes
reconciling at once claim each attempt with a conditional UPDATE, and refunds are idempotent at the
provider anyway.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from commerce import keys
from commerce.payments import PaymentProvider, ProviderUnavailable
from commerce.schema import payment_attempts as attempts
from livesale.errors import Unavailable
from livesale.services import Services
from livesale.tasks import keep_running
from monitoring import metrics as m

log = logging.getLogger("livesale.settlement")

OPEN, SETTLED, REFUNDED = "open", "settled", "refunded"
NO_CHARGE_SETTLE_S = 3600.0  # an open attempt whose charge no one finds is settled this long after the hold


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # SQLite hands back naive datetimes (written in UTC)


def _now() -> datetime:
    return datetime.now(UTC)


async def open_attempt(db: AsyncEngine, order_id: str, user: str, method: str, amount_cents: int,
                       currency: str) -> None:
    """Record that `order_id` is about to be charged with `method` (before the provider is called).
    SQL unreachable: 503, and nothing has been charged."""
    now = _now()
    row = {"order_id": order_id, "method": method, "user_id": user, "amount_cents": amount_cents,
           "currency": currency, "charge_id": None, "state": OPEN, "created_at": now, "updated_at": now}
    try:
        async with db.begin() as conn:
            try:
                async with conn.begin_nested():
                    await conn.execute(attempts.insert().values(**row))
            except IntegrityError:  # the same card again (a retry): open it again
                await conn.execute(
                    attempts.update()
                    .where(attempts.c.order_id == order_id, attempts.c.method == method)
                    .values(state=OPEN, updated_at=now)
                )
    except (DBAPIError, OSError) as exc:
        raise Unavailable(f"payments cannot be recorded now: {exc.__class__.__name__}") from exc


async def close_attempt(db: AsyncEngine, order_id: str, method: str, state: str, charge_id: str | None) -> None:
    """Best effort: an attempt left open is settled by the reconciler instead."""
    try:
        async with db.begin() as conn:
            await conn.execute(
                attempts.update()
                .where(attempts.c.order_id == order_id, attempts.c.method == method)
                .values(state=state, charge_id=charge_id, updated_at=_now())
            )
    except (DBAPIError, OSError) as exc:
        log.warning("payment attempt %s/%s stays open (%r); the reconciler settles it", order_id, method, exc)


class Reconciler:
    def __init__(self, svc: Services, provider: PaymentProvider, grace_s: float, interval_s: float) -> None:
        self.svc = svc
        self.provider = provider
        self.grace_s = grace_s
        self.interval_s = interval_s

    async def run(self) -> None:
        await keep_running(self.once, name="reconciler", log=log, interval=self.interval_s)

    async def once(self) -> int:
        """One pass; returns the attempts it closed."""
        cutoff = _now() - timedelta(seconds=self.grace_s)
        async with self.svc.db.connect() as conn:
            rows = (await conn.execute(
                sa.select(attempts).where(attempts.c.state == OPEN, attempts.c.updated_at < cutoff).limit(200)
            )).all()
        closed = 0
        for row in rows:
            if await self._claim(row.order_id, row.method, row.updated_at):
                try:
                    closed += await self._settle(row)
                except ProviderUnavailable as exc:  # this one waits for the next pass; the others go on
                    log.warning("payment attempt of order %s: provider unreachable (%s)", row.order_id, exc)
        return closed

    async def _claim(self, order_id: str, method: str, seen: datetime) -> bool:
        """Take the attempt for this pass (another process that saw the same row gets 0 rows)."""
        async with self.svc.db.begin() as conn:
            res = await conn.execute(
                attempts.update()
                .where(attempts.c.order_id == order_id, attempts.c.method == method,
                       attempts.c.state == OPEN, attempts.c.updated_at == seen)
                .values(updated_at=_now())
            )
        return bool(res.rowcount)

    async def _settle(self, row: sa.Row) -> int:
        sale_id = keys.sale_of_order(row.order_id)
        status, paid_by, hold_ms = await self.svc.redis.hmget(  # type: ignore[misc]
            keys.orders(sale_id), "s:" + row.order_id, "ch:" + row.order_id, "e:" + row.order_id
        )
        if status == b"reserved":
            return 0  # the buyer may still pay (with this charge, if they retry with the same card)
        if status is None:
            log.warning("payment attempt for unknown order %s: left open for an operator", row.order_id)
            return 0
        charge = await self.provider.lookup(row.order_id, row.method)
        # A charge can be made until the hold ends (pay checks it first), however long ago the
        # attempt was opened; the wait for an unseen one counts from the later of the two.
        last_chance = max(_aware(row.created_at), datetime.fromtimestamp(int(hold_ms or 0) / 1000, UTC))
        if charge is None and last_chance > _now() - timedelta(seconds=NO_CHARGE_SETTLE_S):
            # No charge found. With a provider that sees every charge at once (a real one, or the
            # built-in one on Redis) that means none was made (the process died before charging).
            # One whose search lags, or that lives in one process' memory, may find it later: left
            # open until NO_CHARGE_SETTLE_S.
            return 0
        if charge is None or not charge.ok:
            state, charge_id = SETTLED, charge.id if charge else None
        elif status == b"paid" and paid_by is not None and paid_by.decode() == charge.id:
            state, charge_id = SETTLED, charge.id
        else:
            await self.provider.refund(charge.id)
            state, charge_id = REFUNDED, charge.id
            if m.ENABLED:
                m.PAYMENTS.labels("reconciled_refund").inc()
            log.warning("refunded charge %s of order %s (order %s)", charge.id, row.order_id, status.decode())
        await close_attempt(self.svc.db, row.order_id, row.method, state, charge_id)
        return 1
