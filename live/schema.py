"""SQL record of streams (hot state lives in Redis, see live/keys.py)."""

from __future__ import annotations

import sqlalchemy as sa

from livesale.db import metadata

streams = sa.Table(
    "streams",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("host", sa.String(128), nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
)
