"""Query parameters of the listing endpoints (docs/api.md "Discovery"): `limit`, opaque cursors.

Pure functions: a bad value raises Unprocessable (422), which the handlers' error contract answers.
A cursor is URL-safe base64 of a small JSON array; it is opaque to clients (they only hand it back),
and anything that does not decode to the shape the endpoint expects is a 422.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from livesale.errors import Unprocessable

MAX_LIMIT = 100
MAX_CURSOR = 512  # characters; ours are well under 200


def limit(query: Mapping[str, str], default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    # isascii: str.isdigit() also accepts "²" and "١"; the length bound keeps int() cheap.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 or not 1 <= int(raw) <= MAX_LIMIT:
        raise Unprocessable(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def positive_int(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise Unprocessable(f"{name} must be a positive integer")
    return int(raw)


def encode_cursor(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def decode_cursor(raw: str | None, kinds: tuple[type, ...]) -> list[Any] | None:
    """The cursor's parts, checked against `kinds` (one type per part); None when there is none."""
    if raw is None:
        return None
    bad = Unprocessable("cursor is not one this endpoint gave out; start again without it")
    if not raw or len(raw) > MAX_CURSOR or not raw.isascii():
        raise bad
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(parts, list) or len(parts) != len(kinds):
        raise bad
    for part, kind in zip(parts, kinds, strict=True):
        # bool is an int to isinstance; a cursor never holds one. Our integers (times in epoch µs,
        # indexes) are within 0..2^53: a larger one would overflow a datetime.
        if not isinstance(part, kind) or isinstance(part, bool):
            raise bad
        if (isinstance(part, int) and not 0 <= part < 2**53) or (isinstance(part, str) and len(part) > 200):
            raise bad
    return parts
