"""The built-in test provider, as several server processes share it through the real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from commerce import payments


async def test_processes_share_charges_like_a_real_provider(redis_url: str) -> None:
    """Two workers' providers on one Redis (`livesale serve --workers 2`): the same order and card
    give one charge whichever worker is asked, at once or later; each finds the other's charge and
    refund; a declined card stays declined. Without Redis a provider sees only its own."""
    r1, r2 = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    a, b = payments.TestProvider(r1), payments.TestProvider(r2)
    try:
        together = await asyncio.gather(*(p.charge(1500, "USD", "pm_card_visa", "o1") for p in (a, b) * 10))
        assert len({c.id for c in together}) == 1 and together[0].ok
        assert await b.charge(1500, "USD", "pm_card_visa", "o1") == together[0]
        assert await b.lookup("o2", "pm_card_visa") is None
        mine = await a.charge(1500, "USD", "pm_card_mastercard", "o2")
        assert await b.lookup("o2", "pm_card_mastercard") == mine
        assert not await b.was_refunded(mine.id)
        await b.refund(mine.id)
        assert await a.was_refunded(mine.id)
        declined = await b.charge(1500, "USD", "pm_card_chargeDeclinedInsufficientFunds", "o3")
        assert not declined.ok and declined.decline_code == "insufficient_funds"
        assert await a.lookup("o3", "pm_card_chargeDeclinedInsufficientFunds") == declined
        alone = payments.TestProvider()
        assert await alone.lookup("o1", "pm_card_visa") is None
        with pytest.raises(payments.UnknownPaymentMethod):
            await a.charge(1500, "USD", "pm_card_unknown", "o4")
    finally:
        await r1.aclose()
        await r2.aclose()
