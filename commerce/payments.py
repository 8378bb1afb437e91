"""Payment providers. A real provider (Stripe, Adyen, ...) implements `PaymentProvider`; the built-in
`TestProvider` follows Stripe's test payment methods so clients can be built before a contract exists."""

from __future__ import annotations

import importlib
import secrets
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    ok: bool
    decline_code: str = ""


class UnknownPaymentMethod(Exception):
    pass


class ProviderUnavailable(Exception):
    """Raised by a provider that could not be reached, or whose answer was lost: whether the charge
    (or refund) happened is unknown. The buyer is told 503 and may retry with the same card (charges
    are idempotent per order and card); a charge made and never committed is refunded by
    commerce.settlement.Reconciler, which also retries a refund that failed this way."""


class PaymentProvider(Protocol):
    async def charge(self, amount_cents: int, currency: str, method: str, idempotency_key: str) -> Charge: ...

    async def refund(self, charge_id: str) -> None: ...

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

    def __init__(self) -> None:
        self._charges: dict[str, Charge] = {}
        self.refunded: set[str] = set()

    async def charge(self, amount_cents: int, currency: str, method: str, idempotency_key: str) -> Charge:
        if method not in self.SUCCEED and method not in self.DECLINE:
            raise UnknownPaymentMethod(method)
        key = f"{idempotency_key}:{method}"
        if key not in self._charges:
            ok = method in self.SUCCEED
            self._charges[key] = Charge("ch_" + secrets.token_hex(8), ok, self.DECLINE.get(method, ""))
        return self._charges[key]

    async def refund(self, charge_id: str) -> None:
        self.refunded.add(charge_id)

    async def lookup(self, idempotency_key: str, method: str) -> Charge | None:
        # In memory: a charge this process made (a real provider is asked; Stripe: search by metadata).
        return self._charges.get(f"{idempotency_key}:{method}")


def load_provider(spec: str) -> PaymentProvider:
    """The provider named by LIVESALE_PAYMENT_PROVIDER ("package.module:factory"), or the built-in
    TestProvider when it is empty. A name that does not resolve stops the server at startup."""
    if not spec:
        return TestProvider()
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"LIVESALE_PAYMENT_PROVIDER must be 'package.module:factory', not {spec!r}")
    provider: PaymentProvider = getattr(importlib.import_module(module), attr)()
    return provider
