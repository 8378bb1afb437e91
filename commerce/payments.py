"""Payment providers. A real provider (Stripe, Adyen, ...) implements `PaymentProvider`; the built-in
`TestProvider` follows Stripe's test payment methods so clients can be built before a contract exists."""

from __future__ import annotations

import importlib
import secrets
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from commerce import keys


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    ok: bool
    decline_code: str = ""
    amount_cents: int = 0


class UnknownPaymentMethod(Exception):
    pass


class ProviderUnavailable(Exception):
    """Raised by a provider that could not be reached, or whose answer was lost: whether the charge
    (or refund) happened is unknown. The buyer is told 503 and may retry with the same card (charges
    are idempotent per order and card); a charge made and never committed is refunded by
    commerce.settlement.Reconciler, which also retries a refund that failed this way."""


class PaymentProvider(Protocol):
    async def charge(self, amount_cents: int, currency: str, method: str, idempotency_key: str) -> Charge: ...

    async def refund(self, charge_id: str, amount_cents: int | None = None, idempotency_key: str | None = None) -> None:
        """Give back `amount_cents` of the charge (all of it when None). With `idempotency_key`, a
        repeat of the same key moves no more money (Stripe's Idempotency-Key): group-buy closes that
        are retried after a crash rely on it."""
        ...

    async def lookup(self, idempotency_key: str, method: str) -> Charge | None:
        """The charge made with this key and method, if any (never makes one)."""
        ...


class TestProvider:
    """Stripe's test PaymentMethods (https://docs.stripe.com/testing): the succeeding cards and the
    common declines. Idempotent per key like Stripe: the same key returns the same charge."""

    SUCCEED = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_amex", "pm_card_visa_debit"})
    DECLINE = {
        "pm_card_chargeDeclined": "generic_decline",
        "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
        "pm_card_chargeDeclinedExpiredCard": "expired_card",
        "pm_card_chargeDeclinedFraudulent": "fraudulent",
    }

    def __init__(self, redis: aioredis.Redis | None = None) -> None:
        # With Redis, the charges live there, as they live at Stripe: every process (--workers N) sees
        # the same charge for a key, and the reconciler finds a charge another process made. Without,
        # they are this process' own. `_charges` and `refunded` hold what this process saw either way.
        self.redis = redis
        self._charges: dict[str, Charge] = {}
        self.refunded: set[str] = set()
        self._refunds: dict[str, tuple[str, int]] = {}

    async def charge(self, amount_cents: int, currency: str, method: str, idempotency_key: str) -> Charge:
        if method not in self.SUCCEED and method not in self.DECLINE:
            raise UnknownPaymentMethod(method)
        key = f"{idempotency_key}:{method}"
        if key not in self._charges:
            ok = method in self.SUCCEED
            new = Charge("ch_" + secrets.token_hex(8), ok, self.DECLINE.get(method, ""), amount_cents if ok else 0)
            if self.redis is not None:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hsetnx(keys.TEST_CHARGES, key, _encode(new))
                    pipe.hget(keys.TEST_CHARGES, key)
                    new = _decode((await pipe.execute())[1])  # the first charge made with this key
            self._charges[key] = new
        return self._charges[key]

    async def refund(self, charge_id: str, amount_cents: int | None = None, idempotency_key: str | None = None) -> None:
        if amount_cents is not None or idempotency_key is not None:
            await self._partial_refund(charge_id, amount_cents, idempotency_key or secrets.token_hex(8))
        if self.redis is not None:
            await self.redis.sadd(keys.TEST_REFUNDED, charge_id)  # type: ignore[misc]
        self.refunded.add(charge_id)

    async def _partial_refund(self, charge_id: str, amount_cents: int | None, key: str) -> None:
        """A refund recorded by key: the first call with a key moves the money, repeats move none."""
        amount = -1 if amount_cents is None else amount_cents  # -1: the whole charge
        if self.redis is None:
            if key not in self._refunds:
                self._refunds[key] = (charge_id, amount)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(keys.TEST_REFUNDS, key, f"{charge_id}:{amount}")
            new = (await pipe.execute())[0]
        if new:
            await self.redis.rpush(keys.TEST_REFUND_LOG, f"{charge_id}:{amount}:{key}")  # type: ignore[misc]

    async def refunds(self) -> list[tuple[str, int, str]]:
        """Every refund that moved money, in order: (charge id, cents or -1 for all of it, key)."""
        if self.redis is None:
            return [(c, a, k) for k, (c, a) in self._refunds.items()]
        out = []
        for raw in await self.redis.lrange(keys.TEST_REFUND_LOG, 0, -1):  # type: ignore[misc]
            cid, amount, key = raw.decode().split(":", 2)
            out.append((cid, int(amount), key))
        return out

    async def charges(self) -> dict[str, Charge]:
        """Every charge made, by '<idempotency key>:<method>' (tests and the load verifier)."""
        if self.redis is None:
            return dict(self._charges)
        raw = await self.redis.hgetall(keys.TEST_CHARGES)  # type: ignore[misc]
        return {k.decode(): _decode(v) for k, v in raw.items()}

    async def lookup(self, idempotency_key: str, method: str) -> Charge | None:
        key = f"{idempotency_key}:{method}"
        if self.redis is not None and key not in self._charges:
            raw = await self.redis.hget(keys.TEST_CHARGES, key)  # type: ignore[misc]
            if raw is not None:
                self._charges[key] = _decode(raw)
        return self._charges.get(key)

    async def was_refunded(self, charge_id: str) -> bool:
        """Whether any process refunded this charge (tests and the demo's operator)."""
        if charge_id in self.refunded:
            return True
        return self.redis is not None and bool(await self.redis.sismember(keys.TEST_REFUNDED, charge_id))  # type: ignore[misc]


def _encode(c: Charge) -> str:
    return f"{c.id}:{int(c.ok)}:{c.decline_code}:{c.amount_cents}"


def _decode(raw: bytes) -> Charge:
    cid, ok, decline, *amount = raw.decode().split(":", 3)
    return Charge(cid, ok == "1", decline, int(amount[0]) if amount else 0)


def load_provider(spec: str, redis: aioredis.Redis | None = None) -> PaymentProvider:
    """The provider named by LIVESALE_PAYMENT_PROVIDER ("package.module:factory"), or the built-in
    TestProvider (its charges kept in `redis`) when it is empty. A name that does not resolve stops
    the server at startup."""
    if not spec:
        return TestProvider(redis)
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"LIVESALE_PAYMENT_PROVIDER must be 'package.module:factory', not {spec!r}")
    provider: PaymentProvider = getattr(importlib.import_module(module), attr)()
    return provider
