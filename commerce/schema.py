"""SQL system of record for the catalogue, sales and orders (SQLAlchemy Core)."""

from __future__ import annotations

import sqlalchemy as sa

from livesale.db import metadata

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False, unique=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("price_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("image_url", sa.String(500)),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

sales = sa.Table(
    "sales",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("stream_id", sa.String(40), nullable=False, index=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("price_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("stock", sa.Integer, nullable=False),
    sa.Column("per_user_limit", sa.Integer, nullable=False),
    sa.Column("duration_s", sa.Integer, nullable=False),
    sa.Column("hold_s", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("sale_id", sa.String(40), nullable=False, index=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # Rises with every transition; an event older than the row never overwrites it (replays are safe).
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("sale_id", "user_id", "idempotency_key", name="uq_order_idempotency"),
    sa.Index("ix_orders_user_created", "user_id", "created_at"),  # a user's orders, newest first (me/orders)
)

# One row per (order, card): the provider's idempotency key. Written before the charge, closed after
# the commit; commerce/settlement.py settles the ones left open.
payment_attempts = sa.Table(
    "payment_attempts",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("method", sa.String(100), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("charge_id", sa.String(100)),
    sa.Column("state", sa.String(16), nullable=False),  # open | settled | refunded
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

# Auctions (docs/auctions.md): the record of each auction and how it ended. The winner's order is a
# row of `orders` (sale_id = the auction id), written by the order writer like any other.
auctions = sa.Table(
    "auctions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("stream_id", sa.String(40), nullable=False, index=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("starting_bid_cents", sa.BigInteger, nullable=False),
    sa.Column("reserve_cents", sa.BigInteger, nullable=False),
    sa.Column("duration_s", sa.Integer, nullable=False),
    sa.Column("sudden_death", sa.Boolean, nullable=False),
    sa.Column("hold_s", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # scheduled | active | sold | unsold
    sa.Column("price_cents", sa.BigInteger),
    sa.Column("bids", sa.Integer),
    sa.Column("winner", sa.String(128)),
    sa.Column("order_id", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
)

# Group-buys (docs/groupbuy.md). Hot state lives in Redis (commerce/keys.py); these are the record.
groupbuys = sa.Table(
    "groupbuys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("stream_id", sa.String(40), nullable=False, index=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("stock", sa.Integer, nullable=False),
    sa.Column("tiers", sa.String(400), nullable=False),  # "size:price,size:price,..."
    sa.Column("group_ttl_s", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per member (its order), written before its card is charged and again when its group closes
# and its money has moved; `version` only rises (pending 1, joined 2, paid/refunded 3, declined 4).
group_orders = sa.Table(
    "group_orders",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("groupbuy_id", sa.String(40), nullable=False, index=True),
    sa.Column("group_id", sa.String(64), nullable=False, index=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("ref", sa.String(128)),  # the sharer whose link brought this member (referrals)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("charged_cents", sa.BigInteger, nullable=False),
    sa.Column("refunded_cents", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_group_orders_user_created", "user_id", "created_at"),
)

# Every movement of a member's money, recorded before the provider is called (`open`) and closed after
# (`done`, or for a charge `declined`/`refunded`): kind `charge` (at the first tier's price, when
# joining) and `refund` (at the close: the difference, or everything). The provider's idempotency key
# is the order id for the charge and "<order id>:refund" for the refund, so a row left `open` by a
# crash is finished by making the same call again (commerce/group_money.py).
group_payments = sa.Table(
    "group_payments",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("method", sa.String(100), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("charge_id", sa.String(100)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
