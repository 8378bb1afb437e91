"""The API's one time format (docs/api.md): RFC 3339 UTC with milliseconds and a Z."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

_SECOND: list[Any] = [None, ""]  # the last whole second formatted, and its text (a spike's answers share it)


def iso_ms(ms: int | None) -> str | None:
    """Epoch milliseconds as `2026-11-24T19:15:28.123Z` (None or 0: None)."""
    if not ms:
        return None
    sec, milli = divmod(ms, 1000)
    if _SECOND[0] != sec:
        _SECOND[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _SECOND[0] = sec
    return f"{_SECOND[1]}.{milli:03d}Z"
