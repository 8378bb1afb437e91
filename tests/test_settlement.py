"""Payment attempts and the reconciler (commerce/settlement.py): a charge whose commit never happened
is refunded once the order can no longer be paid by it, and kept when the buyer's retry pays with it.

The fault is real: Redis is stopped while the provider charges, so the commit after it fails."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from commerce import payments, settlement
from commerce.orders import COMMERCE
from commerce.schema import payment_attempts
from livesale.config import Settings
from livesale.embedded_redis import EmbeddedRedis
from livesale.services import SERVICES
from tests.helpers import Api, LiveServer, start_app_server, wait_for


@pytest.fixture
async def fast_settle(settings: Settings) -> AsyncIterator[LiveServer]:
    s = dataclasses.replace(settings, settle_grace_s=0.3, settle_interval_s=0.1)
    async with start_app_server(s) as srv:
        yield srv


def redis_dies_during_charge(srv: LiveServer, redis_server: EmbeddedRedis) -> payments.TestProvider:
    """The app's own provider, whose next charge is followed by Redis going away (before the commit)."""
    assert srv.app is not None
    provider = srv.app[COMMERCE].provider
    assert isinstance(provider, payments.TestProvider)
    charge = provider.charge

    async def charge_then_lose_redis(*args: Any) -> Any:
        result = await charge(*args)
        provider.charge = charge  # type: ignore[method-assign] - once
        await asyncio.to_thread(redis_server.stop)
        return result

    provider.charge = charge_then_lose_redis  # type: ignore[method-assign]
    return provider


async def served(call: Any) -> tuple[int, Any]:
    """What a client does after a Redis restart: retry a 503 (Retry-After: 1) until it is served."""
    for _ in range(20):
        st, body = await call()
        if st != 503:
            return st, body
        await asyncio.sleep(0.25)
    return st, body


async def _claimed_since(srv: LiveServer, order_id: str, seen: Any) -> bool:
    return bool((await attempt_row(srv, order_id)).updated_at > seen)


async def attempt_row(srv: LiveServer, order_id: str) -> Any:
    assert srv.app is not None
    async with srv.app[SERVICES].db.connect() as conn:
        return (await conn.execute(sa.select(payment_attempts).where(payment_attempts.c.order_id == order_id))).one()


async def test_charge_without_commit_is_refunded_after_the_hold_expires(
        fast_settle: LiveServer, redis_server: EmbeddedRedis) -> None:
    async with Api(fast_settle) as api:
        s = await api.setup_sale(stock=3, hold_s=2)
        st, order = await api.reserve(s["sale_id"], "buyer", "k1")
        assert st == 201
        provider = redis_dies_during_charge(fast_settle, redis_server)
        tok = fast_settle.token("buyer")
        st, body = await api.call("POST", f"/api/orders/{order['id']}/pay", token=tok,
                                  json={"payment_method": "pm_card_visa"})
        assert st == 503 and body["error"] == "unavailable"
        charge = await provider.lookup(order["id"], "pm_card_visa")
        assert charge is not None and charge.ok  # the buyer was charged; the order is not paid
        assert (await attempt_row(fast_settle, order["id"])).state == "open"
        await asyncio.to_thread(redis_server.restart)
        # The buyer never retries: the hold expires, and the reconciler gives the money back.
        # (The reconciler refunds, then records the refund in SQL: wait for the record.)
        async def recorded() -> bool:
            return (await attempt_row(fast_settle, order["id"])).state != "open"

        await wait_for(recorded, timeout=15)
        row = await attempt_row(fast_settle, order["id"])
        assert (row.state, row.charge_id) == ("refunded", charge.id)
        assert charge.id in provider.refunded
        st, now = await served(lambda: api.call("GET", f"/api/orders/{order['id']}", token=tok))
        assert st == 200 and now["status"] == "expired"
        sale = (await served(lambda: api.call("GET", f"/api/sales/{s['sale_id']}")))[1]
        assert sale["available"] == 3  # the unit came back too


async def test_retry_with_the_same_card_pays_with_that_charge(
        fast_settle: LiveServer, redis_server: EmbeddedRedis) -> None:
    async with Api(fast_settle) as api:
        s = await api.setup_sale(stock=3, hold_s=60)
        st, order = await api.reserve(s["sale_id"], "buyer", "k1")
        provider = redis_dies_during_charge(fast_settle, redis_server)
        tok = fast_settle.token("buyer")
        pay = {"payment_method": "pm_card_visa"}
        assert (await api.call("POST", f"/api/orders/{order['id']}/pay", token=tok, json=pay))[0] == 503
        await asyncio.to_thread(redis_server.restart)
        # Past the grace the reconciler claims the open attempt (its updated_at moves), finds the order
        # still reserved, and leaves it open: no refund. Twice, so that at least one of its passes read
        # Redis after the restart (a pass on a connection the restart broke claims, then retries).
        for _ in range(2):
            seen = (await attempt_row(fast_settle, order["id"])).updated_at
            await wait_for(lambda: _claimed_since(fast_settle, order["id"], seen), timeout=10)  # noqa: B023
        assert (await attempt_row(fast_settle, order["id"])).state == "open"
        assert provider.refunded == set()
        st, paid = await served(lambda: api.call("POST", f"/api/orders/{order['id']}/pay", token=tok, json=pay))
        assert st == 200 and paid["status"] == "paid"
        charge = await provider.lookup(order["id"], "pm_card_visa")
        assert charge is not None
        row = await attempt_row(fast_settle, order["id"])
        assert (row.state, row.charge_id) == ("settled", charge.id)
        await asyncio.sleep(0.6)
        assert provider.refunded == set()  # one charge, kept


async def test_attempts_are_closed_on_every_answer(fast_settle: LiveServer) -> None:
    """Declined: settled. Paid: settled. A second card after the first paid: its charge refunded."""
    async with Api(fast_settle) as api:
        s = await api.setup_sale(stock=3)
        tok = fast_settle.token("buyer")
        _, order = await api.reserve(s["sale_id"], "buyer", "k1")
        path = f"/api/orders/{order['id']}/pay"
        assert (await api.call("POST", path, token=tok, json={"payment_method": "pm_card_chargeDeclined"}))[0] == 402
        assert (await api.call("POST", path, token=tok, json={"payment_method": "pm_card_visa"}))[0] == 200
        assert (await api.call("POST", path, token=tok, json={"payment_method": "pm_card_amex"}))[0] == 409
        assert fast_settle.app is not None
        async with fast_settle.app[SERVICES].db.connect() as conn:
            rows = (await conn.execute(sa.select(payment_attempts.c.method, payment_attempts.c.state)
                                       .where(payment_attempts.c.order_id == order["id"]))).all()
        assert dict(rows) == {"pm_card_chargeDeclined": "settled", "pm_card_visa": "settled"}
        # The amex pay was refused at its check (the order was already paid): never charged, no row.
        st, body = await api.call("POST", path, token=tok, json={"payment_method": "not a method!"})
        assert st == 422 and body["error"] == "validation_error"


async def test_a_worker_that_cannot_see_the_charge_leaves_it_open_past_a_long_hold(
        settings: Settings, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --workers N each TestProvider knows only its own charges. Another worker's reconciler,
    finding no charge, waits NO_CHARGE_SETTLE_S from the end of the hold (a charge can be made until
    then), not from the attempt's opening: a hold may outlast that wait, and the charge would be
    settled as "none" and never refunded by the worker that made it."""
    monkeypatch.setattr(settlement, "NO_CHARGE_SETTLE_S", 2.5)  # the hour, scaled down; the hold outlasts it
    async with start_app_server(settings) as srv, Api(srv) as api:  # its own reconciler: 60 s grace, idle here
        s = await api.setup_sale(stock=3, hold_s=3)
        _, order = await api.reserve(s["sale_id"], "buyer", "k1")
        provider = redis_dies_during_charge(srv, redis_server)
        tok = srv.token("buyer")
        st, _ = await api.call("POST", f"/api/orders/{order['id']}/pay", token=tok,
                               json={"payment_method": "pm_card_visa"})
        assert st == 503
        charge = await provider.lookup(order["id"], "pm_card_visa")
        assert charge is not None and charge.ok
        await asyncio.to_thread(redis_server.restart)

        async def expired() -> bool:
            st, now = await api.call("GET", f"/api/orders/{order['id']}", token=tok)
            return st == 200 and now["status"] == "expired"

        await wait_for(expired, timeout=10)
        assert srv.app is not None
        svc = srv.app[SERVICES]
        other_worker = settlement.Reconciler(svc, payments.TestProvider(), grace_s=0, interval_s=1)
        assert await other_worker.once() == 0
        assert (await attempt_row(srv, order["id"])).state == "open"
        maker = settlement.Reconciler(svc, provider, grace_s=0, interval_s=1)
        assert await maker.once() == 1
        row = await attempt_row(srv, order["id"])
        assert (row.state, row.charge_id) == ("refunded", charge.id) and charge.id in provider.refunded
