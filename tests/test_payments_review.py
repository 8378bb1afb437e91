"""Paying, cancelling and reading orders over HTTP against the real Redis and SQL: cases found by review."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import redis.asyncio as aioredis

from commerce import keys, payments
from commerce.orders import COMMERCE
from commerce.payments import Charge, ProviderUnavailable
from livesale.bus import channel
from livesale.config import Settings
from tests.helpers import Api, start_app_server, wait_for


async def test_expires_at_is_null_once_the_order_is_not_reserved(api: Api) -> None:
    """docs/api.md: `expires_at` is null once the order is no longer `reserved`, on every answer that
    carries the order (GET, cancel, a retried Idempotency-Key), not only on the pay answer."""
    s = await api.setup_sale(stock=5, per_user_limit=5)
    tok = api.server.token("ida")
    _, paid = await api.reserve(s["sale_id"], "ida", "k-paid")
    _, cancelled = await api.reserve(s["sale_id"], "ida", "k-cancel")
    st, held = await api.reserve(s["sale_id"], "ida", "k-held")
    assert st == 201 and held["expires_at"] is not None
    st, _ = await api.call("POST", f"/api/orders/{paid['id']}/pay", token=tok, json={"payment_method": "pm_card_visa"})
    assert st == 200
    st, body = await api.call("POST", f"/api/orders/{cancelled['id']}/cancel", token=tok)
    assert st == 200 and (body["status"], body["expires_at"]) == ("cancelled", None), body
    st, body = await api.call("GET", f"/api/orders/{paid['id']}", token=tok)
    assert st == 200 and (body["status"], body["expires_at"]) == ("paid", None), body
    st, body = await api.reserve(s["sale_id"], "ida", "k-paid")
    assert st == 200 and (body["status"], body["expires_at"]) == ("paid", None), body
    st, body = await api.call("GET", f"/api/orders/{held['id']}", token=tok)
    assert st == 200 and body["expires_at"] == held["expires_at"]


async def test_admin_may_cancel_and_pay_any_order(api: Api) -> None:
    """docs/api.md: `admin` may read and act on any order; pay and cancel answered it 404 (the scripts
    compared the admin's id with the order's owner), while another viewer still gets 404."""
    s = await api.setup_sale(stock=5, per_user_limit=5)
    admin, other = api.server.token("root", "admin"), api.server.token("mallory")
    _, to_cancel = await api.reserve(s["sale_id"], "jon", "k1")
    _, to_pay = await api.reserve(s["sale_id"], "jon", "k2")
    for oid in (to_cancel["id"], to_pay["id"]):
        st, body = await api.call("POST", f"/api/orders/{oid}/cancel", token=other)
        assert st == 404 and body["error"] == "not_found"
    st, body = await api.call("POST", f"/api/orders/{to_cancel['id']}/cancel", token=admin)
    assert st == 200 and body["status"] == "cancelled", body
    st, body = await api.call("POST", f"/api/orders/{to_pay['id']}/pay", token=admin,
                              json={"payment_method": "pm_card_visa"})
    assert st == 200 and body["status"] == "paid", body
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"], sale["sold"]) == (4, 0, 1)


async def test_a_hold_expired_by_pay_or_cancel_announces_its_units(settings: Settings, redis_url: str) -> None:
    """pay and cancel expire a lapsed hold before the sweeper does; the units come back, and viewers get
    the `stock` event the sweeper would have sent (the sweeper then finds nothing to expire, so
    without it the counter stays low until the next purchase)."""
    slow_sweeper = dataclasses.replace(settings, sweep_interval_s=60)
    async with start_app_server(slow_sweeper) as srv, Api(srv) as api:
        s = await api.setup_sale(stock=4, per_user_limit=2, hold_s=1)
        tok = srv.token("kim")
        _, paid_late = await api.reserve(s["sale_id"], "kim", "k1")
        _, cancelled_late = await api.reserve(s["sale_id"], "kim", "k2")
        r = aioredis.Redis.from_url(redis_url)
        ps = r.pubsub()
        await ps.subscribe(channel(s["stream_id"]))
        seen: list[int] = []

        async def listen() -> None:
            async for msg in ps.listen():
                if msg["type"] == "message" and b'"type":"stock"' in msg["data"]:
                    seen.append(orjson.loads(msg["data"])["available"])

        task = asyncio.create_task(listen())
        try:
            await asyncio.sleep(1.1)
            st, body = await api.call("POST", f"/api/orders/{paid_late['id']}/pay", token=tok,
                                      json={"payment_method": "pm_card_visa"})
            assert st == 409 and body["status"] == "expired"
            await wait_for(lambda: seen and seen[-1] == 3, timeout=2)
            st, body = await api.call("POST", f"/api/orders/{cancelled_late['id']}/cancel", token=tok)
            assert st == 409 and body["status"] == "expired"
            await wait_for(lambda: seen and seen[-1] == 4, timeout=2)
        finally:
            task.cancel()
            await ps.aclose()
            await r.aclose()


async def test_pay_or_cancel_of_an_archived_order_is_409_not_404(settings: Settings, redis_url: str) -> None:
    """After the retention period an order is read from SQL (GET 200), so paying or cancelling it is
    409 `order_not_pending` with its status, as for any order that is not reserved, not a 404 that
    denies the order GET just returned; another user's is still 404."""
    async with start_app_server(dataclasses.replace(settings, sale_retention_s=1)) as srv, Api(srv) as api:
        s = await api.setup_sale(stock=3)
        _, o = await api.reserve(s["sale_id"], "lea", "k")
        tok = srv.token("lea")
        pay = {"payment_method": "pm_card_visa"}
        assert (await api.call("POST", f"/api/orders/{o['id']}/pay", token=tok, json=pay))[0] == 200
        assert (await api.call("POST", f"/api/sales/{s['sale_id']}/end", token=s["host_token"]))[0] == 200
        r = aioredis.Redis.from_url(redis_url)

        async def archived() -> bool:
            return not await r.exists(keys.orders(s["sale_id"]))

        await wait_for(archived, timeout=15, interval=0.2)
        await r.aclose()
        assert (await api.call("GET", f"/api/orders/{o['id']}", token=tok))[1]["status"] == "paid"
        st, body = await api.call("POST", f"/api/orders/{o['id']}/pay", token=tok, json=pay)
        assert (st, body["error"], body.get("status")) == (409, "order_not_pending", "paid"), body
        st, body = await api.call("POST", f"/api/orders/{o['id']}/cancel", token=tok)
        assert (st, body["error"], body.get("status")) == (409, "order_not_pending", "paid"), body
        st, body = await api.call("POST", f"/api/orders/{o['id']}/pay", token=srv.token("eve"), json=pay)
        assert (st, body["error"]) == (404, "not_found")


async def test_a_giveaway_is_paid_without_a_charge(api: Api) -> None:
    """A sale at price 0 is paid with no charge at the provider (a 0 charge is an error at real ones):
    200 paid whatever the card, including one that would decline; the order's units are sold."""
    s = await api.setup_sale(stock=3, price_cents=0)
    tok = api.server.token("gil")
    st, order = await api.reserve(s["sale_id"], "gil", "k1")
    assert st == 201 and order["amount_cents"] == 0
    st, body = await api.call("POST", f"/api/orders/{order['id']}/pay", token=tok,
                              json={"payment_method": "pm_card_chargeDeclined"})
    assert st == 200 and (body["status"], body["expires_at"], body["amount_cents"]) == ("paid", None, 0), body
    provider = api.server.app[COMMERCE].provider  # type: ignore[index]
    assert not provider._charges
    st, body = await api.call("POST", f"/api/orders/{order['id']}/pay", token=tok,
                              json={"payment_method": "pm_card_visa"})
    assert st == 409 and body["error"] == "order_not_pending", body
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"], sale["sold"]) == (2, 0, 1), sale


class _FlakyNetwork(payments.TestProvider):
    """The real test provider behind a network that loses the first charge's answer (the charge is
    made) and the first refund (not made), and may be slow: the edge the pay path must survive."""

    def __init__(self, charge_delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay = charge_delay_s
        self.lost_charge = self.lost_refund = False

    async def charge(self, amount_cents: int, currency: str, method: str, idempotency_key: str) -> Charge:
        await asyncio.sleep(self.delay)
        c = await super().charge(amount_cents, currency, method, idempotency_key)
        if not self.lost_charge:
            self.lost_charge = True
            raise ProviderUnavailable("read timeout")
        return c

    async def refund(self, charge_id: str) -> None:
        if not self.lost_refund:
            self.lost_refund = True
            raise ProviderUnavailable("connection reset")
        await super().refund(charge_id)


async def test_provider_unreachable_is_503_and_the_retry_pays_with_the_same_charge(api: Api) -> None:
    """A charge whose answer is lost is 503 unavailable (not a 500); retrying with the same card pays
    with that one charge, and nothing is refunded."""
    provider = api.server.app[COMMERCE].provider = _FlakyNetwork()  # type: ignore[index]
    s = await api.setup_sale(stock=5, per_user_limit=5)
    tok = api.server.token("pia")
    _, order = await api.reserve(s["sale_id"], "pia", "k1")
    pay = f"/api/orders/{order['id']}/pay"
    st, body = await api.call("POST", pay, token=tok, json={"payment_method": "pm_card_visa"})
    assert st == 503 and body["error"] == "unavailable" and "provider" in body["message"], body
    st, body = await api.call("POST", pay, token=tok, json={"payment_method": "pm_card_visa"})
    assert st == 200 and body["status"] == "paid", body
    assert len(provider._charges) == 1 and not provider.refunded


def slow_losing_refunds() -> _FlakyNetwork:
    """A provider factory, as LIVESALE_PAYMENT_PROVIDER names one: slow charges, the first refund lost."""
    provider = _FlakyNetwork(charge_delay_s=1.6)
    provider.lost_charge = True
    return provider


async def test_a_refund_the_provider_loses_is_made_by_the_reconciler(settings: Settings) -> None:
    """The hold lapses while the card is charged, so the charge must go back; the provider loses that
    refund: the buyer still gets 409 (expired), and the reconciler makes the refund."""
    fast = dataclasses.replace(settings, settle_grace_s=0.0, settle_interval_s=0.2,
                               payment_provider=f"{__name__}:{slow_losing_refunds.__name__}")
    async with start_app_server(fast) as srv, Api(srv) as api:
        provider = srv.app[COMMERCE].provider  # type: ignore[index]
        assert isinstance(provider, _FlakyNetwork)  # loaded through LIVESALE_PAYMENT_PROVIDER
        s = await api.setup_sale(stock=5, hold_s=1)
        _, order = await api.reserve(s["sale_id"], "ria", "k1")
        st, body = await api.call("POST", f"/api/orders/{order['id']}/pay", token=srv.token("ria"),
                                  json={"payment_method": "pm_card_visa"})
        assert st == 409 and body["status"] == "expired", body
        charge = provider._charges[f"{order['id']}:pm_card_visa"]
        assert provider.lost_refund and charge.id not in provider.refunded
        await wait_for(lambda: charge.id in provider.refunded, timeout=10)
