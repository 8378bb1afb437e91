"""`livesale demo`: a seeded stream with two products, a running flash sale and a group-buy, and how to buy."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import orjson
import sqlalchemy as sa
from aiohttp import web

from commerce import catalog, groupbuys, sales
from commerce.schema import products
from live import keys
from live.schema import streams
from livesale.auth import mint
from livesale.services import SERVICES, Services

PRODUCTS = [
    {"sku": "DEMO-TEE", "title": "Livesale tee, black", "price_cents": 1900, "currency": "USD", "image_url": None},
    {"sku": "DEMO-MUG", "title": "Livesale mug", "price_cents": 1200, "currency": "USD", "image_url": None},
]


async def _live_demo_stream(svc: Services, host: str) -> str | None:
    """The demo stream seeded earlier on this data, if it is still live in Redis and SQL."""
    async with svc.db.connect() as conn:
        ids = (await conn.execute(
            sa.select(streams.c.id).where(streams.c.host == host, streams.c.status == "live")
            .order_by(streams.c.created_at.desc())
        )).scalars().all()
    for stream_id in ids:
        if await svc.redis.hget(keys.meta(stream_id), "status") == b"live":  # type: ignore[misc]
            return str(stream_id)
    return None


async def seed_on_startup(app: web.Application) -> None:
    svc = app[SERVICES]
    host = "demo-host"
    now = datetime.now(UTC)
    async with svc.db.begin() as conn:
        for p in PRODUCTS:
            exists = (await conn.execute(products.select().where(products.c.sku == p["sku"]))).first()
            if exists is None:
                await conn.execute(products.insert().values(id="pr" + secrets.token_hex(6), owner=host,
                                                            created_at=now, **p))
    tee = await catalog.get_product(svc, "DEMO-TEE")
    # A restart on the same data (make run again) shows the demo stream and sale it seeded before.
    stream_id = await _live_demo_stream(svc, host)
    if stream_id is None:
        stream_id = "st" + secrets.token_hex(6)
        async with svc.db.begin() as conn:
            await conn.execute(streams.insert().values(id=stream_id, host=host, title="Demo drop", status="live",
                                                       created_at=now, started_at=now))
        await svc.redis.hset(keys.meta(stream_id), mapping={  # type: ignore[misc]
            "host": host, "title": "Demo drop", "status": "live", "created_at": now.timestamp(),
            "started_at": now.timestamp(), "pinned": orjson.dumps(tee),
        })
    sale = next((x for x in await sales.list_for_stream(svc, stream_id) if x["status"] == "active"), None)
    if sale is None:
        spec = {"sku": "DEMO-TEE", "price_cents": 1500, "stock": 100, "per_user_limit": 2, "duration_s": 3600,
                "hold_s": 120, "starts_at": int(now.timestamp() * 1000)}
        sale = await sales.create_sale(svc, stream_id, spec, tee)
    gb = next((x for x in await groupbuys.list_for_stream(svc, stream_id) if x["status"] == "active"), None)
    if gb is None:
        spec = {"sku": "DEMO-MUG", "stock": 50, "group_ttl_s": 3600,
                "tiers": [(2, 1000), (3, 900), (5, 800)]}
        gb = await groupbuys.create_groupbuy(svc, stream_id, spec, await catalog.get_product(svc, "DEMO-MUG"))
    s = svc.settings
    base = f"http://{s.host}:{s.port}"
    ttl = min(86400, s.jwt_max_lifetime_s or 86400)  # docs/auth.md: no token outlives the maximum
    viewer = mint(s.secret, "alice", "viewer", ttl)
    hosttok = mint(s.secret, host, "host", ttl)
    print(f"""
livesale demo is up on {base}
  landing:       {base}/
  viewer page:   {base}/s/{stream_id}
  host console:  {base}/host/{stream_id}   (sign in as {host})

  stream {stream_id} (live), flash sale {sale['id']}: {sale['stock']} x {sale['sku']} at $15.00, limit 2 per buyer

  viewer token (alice):  export TOKEN={viewer}
  host token:            export HOST_TOKEN={hosttok}

  # look at the sale
  curl -s {base}/api/sales/{sale['id']}
  # reserve 1 unit (retrying with the same Idempotency-Key returns the same order)
  curl -s -X POST {base}/api/sales/{sale['id']}/orders -H "Authorization: Bearer $TOKEN" \\
       -H 'Idempotency-Key: my-first-order' -d '{{"quantity": 1}}'
  # pay it (pm_card_chargeDeclined declines), or cancel it
  curl -s -X POST {base}/api/orders/<order id>/pay -H "Authorization: Bearer $TOKEN" -d '{{"payment_method": "pm_card_visa"}}'
  # group-buy {gb['id']}: mugs at $10 for 2, $9 for 3, $8 for 5 (docs/groupbuy.md); open a group, share /g/<group>
  curl -s -X POST {base}/api/groupbuys/{gb['id']}/groups -H "Authorization: Bearer $TOKEN" \
       -H 'Idempotency-Key: my-group' -d '{{"payment_method": "pm_card_visa"}}'
  # watch the stream: websocket {base.replace('http', 'ws')}/ws/streams/{stream_id}?token=$TOKEN
  # metrics: curl -s {base}/metrics
""", flush=True)
