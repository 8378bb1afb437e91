"""Products: created by hosts, pinned on streams, sold in flash sales."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.exc import IntegrityError

from commerce.schema import products
from livesale.auth import require_role
from livesale.errors import Conflict, NotFound, Unprocessable
from livesale.services import SERVICES, Services
from livesale.web import current_user, json_response, read_json

SKU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
MAX_PRICE = 100_000_000_00


def _product(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "sku": row.sku,
        "title": row.title,
        "price_cents": row.price_cents,
        "currency": row.currency,
        "image_url": row.image_url,
    }


def validate_product(body: dict[str, Any]) -> dict[str, Any]:
    sku, title, price = body.get("sku"), body.get("title"), body.get("price_cents")
    currency, image = body.get("currency", "USD"), body.get("image_url")
    if not isinstance(sku, str) or not SKU_RE.match(sku):
        raise Unprocessable("sku must be 1-64 characters of letters, digits, '.', '_' or '-'")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise Unprocessable("title must be a string of 1-200 characters")
    if type(price) is not int or not 0 <= price <= MAX_PRICE:
        raise Unprocessable("price_cents must be a non-negative integer")
    if not isinstance(currency, str) or not CURRENCY_RE.match(currency):
        raise Unprocessable("currency must be a 3-letter ISO 4217 code such as USD")
    if image is not None and (not isinstance(image, str) or len(image) > 500):
        raise Unprocessable("image_url must be a string of at most 500 characters")
    return {"sku": sku, "title": title.strip(), "price_cents": price, "currency": currency, "image_url": image}


async def get_product(svc: Services, sku: str) -> dict[str, Any]:
    async with svc.db.connect() as conn:
        row = (await conn.execute(sa.select(products).where(products.c.sku == sku))).first()
    if row is None:
        raise NotFound(f"no product with sku {sku!r}")
    return _product(row)


async def create_product(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    user = current_user(request)
    require_role(user, "host")
    values = validate_product(await read_json(request))
    values.update(id="pr" + secrets.token_hex(6), owner=user.id, created_at=datetime.now(UTC))
    try:
        async with svc.db.begin() as conn:
            await conn.execute(products.insert().values(**values))
    except IntegrityError as exc:
        raise Conflict(f"a product with sku {values['sku']!r} exists") from exc
    return json_response({k: values[k] for k in ("id", "sku", "title", "price_cents", "currency", "image_url")}, 201)


async def get_product_handler(request: web.Request) -> web.Response:
    return json_response(await get_product(request.app[SERVICES], request.match_info["sku"]))
