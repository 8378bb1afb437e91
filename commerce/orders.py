"""Order handlers: reserve (the hot path), pay, cancel, get."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import orjson
import sqlalchemy as sa
from aiohttp import web

from commerce import groupbuys, inventory, keys, settlement
from commerce.inventory import Reserver, UnknownSale
from commerce.payments import PaymentProvider, ProviderUnavailable, UnknownPaymentMethod
from commerce.sales import SALE_ID_RE, StockNotices
from commerce.schema import orders as orders_table
from livesale.auth import User
from livesale.codes import ErrorCode
from livesale.errors import (
    Conflict,
    Forbidden,
    LivesaleError,
    NotFound,
    PaymentDeclined,
    Unavailable,
    Unprocessable,
)
from livesale.redis_client import redis_errors
from livesale.services import SERVICES, Services
from livesale.times import iso_ms
from livesale.web import json_bytes_response, json_response, parse_json_object, read_body, read_json
from monitoring import metrics as m

log = logging.getLogger("livesale.orders")

# A sale's orders, and an auction winner's (docs/auctions.md: `<auction id>.<16 hex>`, same keys' shape).
ORDER_ID_RE = re.compile(r"^(?:sa|au)[0-9a-f]{12}\.[0-9a-f]{16}$")
SOURCE_ID_RE = re.compile(r"^(?:sa|au)[0-9a-f]{12}$")
KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
METHOD_RE = re.compile(r"[A-Za-z0-9_]{1,100}")  # a provider's payment method id (pm_card_visa, pm_1Nx...)
BUYER_ROLES = ("viewer",)


@dataclass(slots=True)
class SaleInfo:
    price_cents: int
    currency: str
    stream: str


class Commerce:
    """Per-process commerce state: the reserve batcher, stock notices, the payment provider and an
    immutable-field cache of sales (price and stream never change after creation)."""

    def __init__(self, svc: Services, provider: PaymentProvider) -> None:
        self.svc = svc
        self.reserver = Reserver(svc.redis, max_in_flight=svc.settings.reserve_in_flight,
                                 timeout_s=svc.settings.redis_timeout_s)
        self.stock = StockNotices(svc)
        self.reserver.on_stock = self.stock.note
        self.provider = provider
        self._sales: dict[str, SaleInfo] = {}
        # Lookups in flight: the first buyers of a sale arrive together, and share one HMGET.
        self._loading: dict[str, asyncio.Future[SaleInfo]] = {}

    def cached_sale(self, sale_id: str) -> SaleInfo | None:
        return self._sales.get(sale_id)

    async def sale_info(self, sale_id: str) -> SaleInfo:
        info = self._sales.get(sale_id)
        if info is not None:
            return info
        if not SOURCE_ID_RE.match(sale_id):
            raise NotFound(f"no sale {sale_id!r}")
        loading = self._loading.get(sale_id)
        if loading is None:
            loading = self._loading[sale_id] = asyncio.ensure_future(self._load_sale(sale_id))
            loading.add_done_callback(lambda _: self._loading.pop(sale_id, None))
        return await asyncio.shield(loading)  # one buyer giving up does not cancel the others' lookup

    async def _load_sale(self, sale_id: str) -> SaleInfo:
        with redis_errors():
            price, currency, stream = await self.svc.redis.hmget(  # type: ignore[misc]
                keys.sale(sale_id), "price_cents", "currency", "stream"
            )
        if price is None:
            raise NotFound(f"no sale {sale_id!r}")
        info = SaleInfo(int(price), currency.decode(), stream.decode())
        if not keys.is_auction(sale_id):  # an auction's record is no sale: the purchase path never finds it
            self._sales[sale_id] = info
        return info


COMMERCE = web.AppKey("livesale_commerce", Commerce)


def order_view(order_id: str, status: str, qty: int, price: int, expires_ms: int, created_ms: int) -> dict[str, Any]:
    view = {
        "id": order_id,
        "sale": keys.sale_of_order(order_id),
        "status": status,
        "quantity": qty,
        "amount_cents": qty * price,
        # Redis keeps the hold's expiry after the order leaves `reserved`; clients are told null (api.md).
        "expires_at": iso_ms(expires_ms) if status == "reserved" else None,
        "created_at": iso_ms(created_ms),
    }
    return _from_auction(view)


def _from_auction(order: dict[str, Any]) -> dict[str, Any]:
    """An auction winner's order names `auction` where a sale's names `sale`."""
    if keys.is_auction(order["sale"]):
        order = {("auction" if k == "sale" else k): v for k, v in order.items()}
    return order


def _buyer(svc: Services, authorization: str | None) -> User:
    user = svc.auth.from_header(authorization)
    if not user.is_(*BUYER_ROLES):
        raise Forbidden(f"role {user.role!r} may not buy; use a viewer token")
    return user


def _idempotency_key(key: str | None) -> str:
    if not key:
        raise Unprocessable("the Idempotency-Key header is required", code=ErrorCode.MISSING_IDEMPOTENCY_KEY)
    if not KEY_RE.match(key):
        raise Unprocessable("Idempotency-Key must be 1-200 visible ASCII characters")
    return key


# The same checks guard auction bids (commerce.api.bid).
buyer, idempotency_key = _buyer, _idempotency_key


async def reserve(request: web.Request) -> web.Response:
    """POST /api/sales/{id}/orders through aiohttp. The same route normally runs on `fast_reserve`
    (livesale.fasthttp); aiohttp serves the requests outside the fast path's strict subset, and all of
    them with LIVESALE_FAST_PATH=0. Both make the same checks in the same order and answer alike."""
    svc = request.app[SERVICES]
    user = _buyer(svc, request.headers.get("Authorization"))
    key = _idempotency_key(request.headers.get("Idempotency-Key"))
    qty = _quantity(parse_json_object(await read_body(request)))
    status, answer = await _purchase(request.app[COMMERCE], request.match_info["id"], user.id, key, qty)
    return json_bytes_response(answer, status)


def fast_reserve(app: web.Application, sale_id: str, authorization: str | None, key: str | None,
                 body: bytes, reply: Callable[[tuple[int, bytes] | BaseException], None]) -> None:
    """The purchase route on livesale.fasthttp: the checks of `reserve`, made at once (a refusal
    raises), then the reservation, whose outcome is answered through `reply` straight from the reserve
    batch's result loop. No task and no future per request: each would cost more than the rest of
    this function, and each puts a loop turn between Redis's answer and the buyer's."""
    com = app[COMMERCE]
    user = _buyer(app[SERVICES], authorization)
    key = _idempotency_key(key)
    qty = _quantity(parse_json_object(body))
    info = com.cached_sale(sale_id)
    if info is None:  # this process' first purchase of the sale: look it up first
        task = asyncio.ensure_future(_purchase(com, sale_id, user.id, key, qty))
        task.add_done_callback(functools.partial(reply_from, reply))
        return
    started = time.perf_counter()

    def outcome(r: inventory.Reservation | BaseException) -> None:
        if isinstance(r, BaseException):
            reply(NotFound(f"no sale {sale_id!r}") if isinstance(r, UnknownSale) else r)
            return
        try:
            answer = _answer(r, info, qty, started)
        except Exception as err:  # noqa: BLE001 - the buyer waits on `reply`: never leave it uncalled
            reply(err)
        else:
            reply(answer)

    com.reserver.submit(sale_id, user.id, key, qty, outcome)


def reply_from(reply: Callable[[tuple[int, bytes] | BaseException], None],
                task: asyncio.Future[tuple[int, bytes]]) -> None:
    reply(asyncio.CancelledError() if task.cancelled() else task.exception() or task.result())


async def _purchase(com: Commerce, sale_id: str, user: str, key: str, qty: int) -> tuple[int, bytes]:
    """Look the sale up, reserve, answer: the aiohttp route, and the fast path's first purchase of a
    sale. Both steps together within the Redis timeout, else 503 (docs/limits.md)."""
    if not SALE_ID_RE.match(sale_id):  # an auction's order record is not for sale
        raise NotFound(f"no sale {sale_id!r}")
    try:
        async with asyncio.timeout(com.reserver.timeout_s):
            info = await com.sale_info(sale_id)
            started = time.perf_counter()
            r = await com.reserver.reserve(sale_id, user, key, qty)
    except UnknownSale:
        raise NotFound(f"no sale {sale_id!r}") from None
    except TimeoutError:
        if m.ENABLED:
            m.LIMIT_REFUSALS.labels("redis_timeout").inc()
        raise Unavailable("redis did not answer in time") from None
    return _answer(r, info, qty, started)


def _quantity(body: dict[str, Any]) -> int:
    qty = body.get("quantity")
    if type(qty) is not int or not 1 <= qty <= 100:
        raise Unprocessable("quantity must be an integer from 1 to 100", code=ErrorCode.INVALID_QUANTITY)
    return qty


def _answer(r: inventory.Reservation, info: SaleInfo, qty: int, started: float) -> tuple[int, bytes]:
    """(status, JSON body) of a reserve outcome: the order, or the refusal."""
    if m.ENABLED:
        outcomes = _OUTCOMES.get(r.code)
        if outcomes is None:
            outcomes = _OUTCOMES[r.code] = m.counter(m.RESERVE_OUTCOMES, inventory.OUTCOME[r.code])
        outcomes.inc()
        _LATENCY.observe(time.perf_counter() - started)
    if r.code == inventory.RESERVED or r.code == inventory.DUPLICATE:
        view = order_view(r.order_id, r.status, r.quantity, info.price_cents, r.expires_ms, r.created_ms)
        return (201 if r.code == inventory.RESERVED else 200), orjson.dumps(view)
    # A spike is mostly refusals (sold out): they are answered here, with the body the error contract
    # would write, rather than raised through it; the same refusal is encoded once.
    if r.code == inventory.IDEM_CONFLICT:
        err = _refusal(r, qty)
        return err.status, orjson.dumps(err.body())  # names the order: not shared
    shape = (r.code, qty, r.available if r.code == inventory.SOLD_OUT else 0)
    encoded = _REFUSALS.get(shape)
    if encoded is None:
        encoded = orjson.dumps(_refusal(r, qty).body())
        if len(_REFUSALS) < 4096:
            _REFUSALS[shape] = encoded
    return 409, encoded


_REFUSALS: dict[tuple[int, int, int], bytes] = {}  # (code, quantity, available) -> encoded 409 body
_OUTCOMES: dict[int, m.DeferredCounter] = {}  # reserve outcome code -> its counter series
_LATENCY = m.histogram(m.RESERVE_LATENCY)


def _refusal(r: inventory.Reservation, qty: int) -> LivesaleError:
    if r.code == inventory.SOLD_OUT:
        return Conflict(f"fewer than {qty} units left", code=ErrorCode.SOLD_OUT, available=r.available)
    if r.code == inventory.LIMIT_REACHED:
        return Conflict("this would exceed the sale's per-user limit", code=ErrorCode.LIMIT_REACHED)
    if r.code == inventory.NOT_ACTIVE:
        return Conflict("the sale is not active", code=ErrorCode.SALE_NOT_ACTIVE)
    return Unprocessable(
        f"Idempotency-Key was used for quantity {r.quantity}", code=ErrorCode.IDEMPOTENCY_CONFLICT, order=r.order_id
    )


def _order_id(request: web.Request) -> str:
    order_id = request.match_info["id"]
    if not ORDER_ID_RE.match(order_id):
        raise NotFound(f"no order {order_id!r}")
    return order_id


async def _load_order(svc: Services, com: Commerce, order_id: str, user: User) -> dict[str, Any]:
    sale_id = keys.sale_of_order(order_id)
    f = ("s:", "u:", "q:", "e:", "c:")
    with redis_errors():
        s, u, q, e, c = await svc.redis.hmget(keys.orders(sale_id), *(p + order_id for p in f))  # type: ignore[misc]
    if s is not None:
        if u.decode() != user.id and user.role != "admin":
            raise NotFound(f"no order {order_id!r}")
        info = await com.sale_info(sale_id)
        return order_view(order_id, s.decode(), int(q), info.price_cents, int(e), int(c))
    # Not in Redis (an archived sale): the SQL record answers.
    async with svc.db.connect() as conn:
        row = (await conn.execute(sa.select(orders_table).where(orders_table.c.id == order_id))).first()
    if row is None or (row.user_id != user.id and user.role != "admin"):
        raise NotFound(f"no order {order_id!r}")
    return _from_auction({
        "id": row.id, "sale": row.sale_id, "status": row.status, "quantity": row.quantity,
        "amount_cents": row.amount_cents, "expires_at": None,
        # SQLite hands back naive datetimes; they were written in UTC.
        "created_at": iso_ms(int(row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC).timestamp() * 1000)),
    })


async def _acting_for(svc: Services, order_id: str, user: User) -> str:
    """The user the order scripts act for: the caller, or for an admin the order's owner (api.md: admin
    may act on any order; the scripts answer -1, a 404, to anyone but the owner)."""
    if user.role != "admin":
        return user.id
    with redis_errors():
        owner = await svc.redis.hget(keys.orders(keys.sale_of_order(order_id)), "u:" + order_id)  # type: ignore[misc]
    return owner.decode() if owner is not None else user.id


def _not_pending(status: bytes | str) -> Conflict:
    st = status.decode() if isinstance(status, bytes) else status
    return Conflict(f"the order is {st}, not reserved", code=ErrorCode.ORDER_NOT_PENDING, status=st)


async def _not_in_redis(svc: Services, com: Commerce, order_id: str, user: User) -> LivesaleError:
    """The answer when the scripts find no order of this user (-1). They know only the orders in Redis:
    one archived to SQL after its sale's retention is not pending either (GET still returns it), and
    an order that does not exist or is another user's stays a 404 (`_load_order` raises it)."""
    order = await _load_order(svc, com, order_id, user)
    return _not_pending(order["status"])


def _refused(com: Commerce, order_id: str, status: bytes | str) -> Conflict:
    """409 for an order that is not reserved. pay and cancel expire a lapsed hold themselves, before the
    sweeper (which then has nothing to expire, so sends no `stock` event): its units are back, so the
    sale's stock is announced here (for an order expired earlier, a redundant notice)."""
    if status in (b"expired", "expired"):
        com.stock.note(keys.sale_of_order(order_id))
    return _not_pending(status)


async def pay(request: web.Request) -> web.Response:
    svc, com = request.app[SERVICES], request.app[COMMERCE]
    user = svc.auth.from_header(request.headers.get("Authorization"))
    await _refuse_group_member(svc, request.match_info["id"], user)
    order_id = _order_id(request)
    body = await read_json(request)
    method = body.get("payment_method")
    if not isinstance(method, str) or not method:
        raise Unprocessable("payment_method is required, e.g. pm_card_visa")
    if not METHOD_RE.fullmatch(method):
        raise Unprocessable(f"unknown payment_method {method[:100]!r}")
    owner = await _acting_for(svc, order_id, user)
    with redis_errors():
        r = await inventory.pay(svc.redis, order_id, owner)
    if r[0] == -1:
        raise await _not_in_redis(svc, com, order_id, user)
    if r[0] == -2:
        if m.ENABLED:
            m.PAYMENTS.labels("not_pending").inc()
        raise _refused(com, order_id, r[1])
    order = await _load_order(svc, com, order_id, user)
    if order["amount_cents"] == 0:
        return await _pay_free(svc, com, order, owner)
    info = await com.sale_info(keys.sale_of_order(order_id))
    # Recorded before the charge: a charge whose commit never happens is refunded by the reconciler.
    await settlement.open_attempt(svc.db, order_id, user.id, method, order["amount_cents"], info.currency)
    try:
        charge = await com.provider.charge(order["amount_cents"], info.currency, method, order_id)
    except UnknownPaymentMethod:
        await settlement.close_attempt(svc.db, order_id, method, settlement.SETTLED, None)
        raise Unprocessable(f"unknown payment_method {method!r}") from None
    except ProviderUnavailable as exc:  # the attempt stays open: a retry or the reconciler settles it
        raise Unavailable(f"the payment provider is unreachable: {exc}") from None
    if not charge.ok:
        await settlement.close_attempt(svc.db, order_id, method, settlement.SETTLED, charge.id)
        if m.ENABLED:
            m.PAYMENTS.labels("declined").inc()
        raise PaymentDeclined(f"the card was declined ({charge.decline_code}); the hold stays until it expires")
    with redis_errors():
        r = await inventory.pay(svc.redis, order_id, owner, charge=charge.id)
    paid_by = r[2].decode() if r[0] == -2 and len(r) > 2 else None
    if paid_by == charge.id:
        # A double tap: the other request committed this same charge (the provider is idempotent
        # per order and card). The order is paid by it; it must not be refunded.
        r = [0, b"paid"]
    if r[0] != 0:
        # The hold lapsed while the provider was charging, or another card paid first: give this
        # charge back.
        try:
            await com.provider.refund(charge.id)
        except ProviderUnavailable as exc:  # the attempt stays open: the reconciler refunds it
            log.warning("refund of %s for order %s failed (%s); left to the reconciler", charge.id, order_id, exc)
        else:
            await settlement.close_attempt(svc.db, order_id, method, settlement.REFUNDED, charge.id)
            if m.ENABLED:
                m.PAYMENTS.labels("refunded").inc()
        raise _refused(com, order_id, r[1] if len(r) > 1 else "unknown")
    await settlement.close_attempt(svc.db, order_id, method, settlement.SETTLED, charge.id)
    if m.ENABLED:
        m.PAYMENTS.labels("paid").inc()
    order["status"] = "paid"
    order["expires_at"] = None
    return json_response(order)


async def _pay_free(svc: Services, com: Commerce, order: dict[str, Any], owner: str) -> web.Response:
    """A giveaway (price 0): paid with no charge. A card charge of 0 is an error at real providers,
    and there is nothing to take; the payment method is still validated like any other."""
    with redis_errors():
        r = await inventory.pay(svc.redis, order["id"], owner, charge="")
    if r[0] == -2 and len(r) > 2 and r[2] == b"":
        r = [0, b"paid"]  # a double tap: the other request paid it, the same way
    if r[0] != 0:
        raise _refused(com, order["id"], r[1] if len(r) > 1 else "unknown")
    if m.ENABLED:
        m.PAYMENTS.labels("paid").inc()
    return json_response(dict(order, status="paid", expires_at=None))


async def cancel(request: web.Request) -> web.Response:
    svc, com = request.app[SERVICES], request.app[COMMERCE]
    user = svc.auth.from_header(request.headers.get("Authorization"))
    await _refuse_group_member(svc, request.match_info["id"], user)
    order_id = _order_id(request)
    owner = await _acting_for(svc, order_id, user)
    with redis_errors():
        r = await inventory.cancel(svc.redis, order_id, owner)
    if r[0] == -1:
        raise await _not_in_redis(svc, com, order_id, user)
    if r[0] == -2:
        raise _refused(com, order_id, r[1])
    if m.ENABLED:
        m.ORDERS_CANCELLED.inc()
    com.stock.note(keys.sale_of_order(order_id), int(r[1]))
    order = await _load_order(svc, com, order_id, user)
    return json_response(order)


async def _refuse_group_member(svc: Services, order_id: str, user: User) -> None:
    """A group-buy member's order is charged when they join and settled when the group closes
    (docs/groupbuy.md): it is never pending, so pay and cancel answer 409 (404 for another user's)."""
    if groupbuys.MEMBER_ID_RE.match(order_id):
        order = await groupbuys.get_member_order(svc, order_id, user.id, user.role == "admin")
        raise _not_pending(order["status"])


async def get_order(request: web.Request) -> web.Response:
    svc, com = request.app[SERVICES], request.app[COMMERCE]
    user = svc.auth.from_header(request.headers.get("Authorization"))
    if groupbuys.MEMBER_ID_RE.match(request.match_info["id"]):  # a group-buy member's order
        return json_response(await groupbuys.get_member_order(svc, request.match_info["id"], user.id,
                                                              user.role == "admin"))
    return json_response(await _load_order(svc, com, _order_id(request), user))


