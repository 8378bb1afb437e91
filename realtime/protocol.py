"""The viewer wire protocol without I/O (CONTRIBUTING.md #1, docs/design.md "WebSocket").

`parse(frame)` turns one client frame into a command or a `ProtocolError` (never raises);
`encode_*` turn events into the bytes every viewer receives; `text_frame` wraps a payload in an
unmasked WebSocket text frame, so a frame encoded once can be written to every viewer's transport.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from livesale.codes import ErrorCode

MAX_FRAME_BYTES = 4096
COMMENT_MAX_CHARS = 280
LIKE_MAX_COUNT = 50


@dataclass(frozen=True, slots=True)
class Comment:
    text: str


@dataclass(frozen=True, slots=True)
class Like:
    count: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class ProtocolError:
    code: ErrorCode
    message: str


Command = Comment | Like | Ping
PING = Ping()

# Errors that mean the frame itself was bad: only these count toward the 4029 flood close (docs/design.md
# "more than 20 invalid frames in 10 s"). A well-formed frame refused for who sent it or when
# (`unauthenticated`, `muted`, `rate_limited`, `unavailable`) is not a flood: an anonymous viewer
# tapping like must not be closed, reconnect, and tap again.
INVALID_FRAME_CODES = frozenset({ErrorCode.INVALID_FRAME, ErrorCode.UNKNOWN_TYPE, ErrorCode.INVALID_COMMENT,
                                 ErrorCode.INVALID_LIKE})


def parse(frame: bytes | str) -> Command | ProtocolError:
    """One client text frame -> a command, or the documented error for it."""
    if len(frame) > MAX_FRAME_BYTES:  # the server closes with 1009 first; kept for direct callers
        return ProtocolError(ErrorCode.INVALID_FRAME, f"frame over {MAX_FRAME_BYTES} bytes")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return ProtocolError(ErrorCode.INVALID_FRAME, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return ProtocolError(ErrorCode.INVALID_FRAME, "frame must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return ProtocolError(ErrorCode.INVALID_FRAME, "frame needs a string 'type'")
    if kind == "ping":
        return PING
    if kind == "comment":
        return _comment(obj)
    if kind == "like":
        return _like(obj)
    return ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:40]!r}")


def _comment(obj: dict[str, Any]) -> Comment | ProtocolError:
    text = obj.get("text")
    if not isinstance(text, str):
        return ProtocolError(ErrorCode.INVALID_COMMENT, "'text' must be a string")
    text = text.strip()
    if not 1 <= len(text) <= COMMENT_MAX_CHARS:
        return ProtocolError(ErrorCode.INVALID_COMMENT, f"comment must be 1-{COMMENT_MAX_CHARS} characters")
    return Comment(text)


def _like(obj: dict[str, Any]) -> Like | ProtocolError:
    count = obj.get("count", 1)
    if type(count) is not int or not 1 <= count <= LIKE_MAX_COUNT:
        return ProtocolError(ErrorCode.INVALID_LIKE, f"'count' must be an integer 1-{LIKE_MAX_COUNT}")
    return Like(count)


class WordFilter:
    """Blocked words, matched case-insensitively as whole words."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = frozenset(w.strip().lower() for w in words if w.strip())

    def check(self, text: str) -> ProtocolError | None:
        if not self.words:
            return None
        tokens = "".join(c if c.isalnum() else " " for c in text.lower()).split()
        if any(t in self.words for t in tokens):
            return ProtocolError(ErrorCode.INVALID_COMMENT, "comment contains a blocked word")
        return None


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def encode_error(code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "code": str(code), "message": message})


PONG = b'{"type":"pong"}'


def batch(payloads: Sequence[bytes]) -> bytes:
    """Several encoded events in one frame: a JSON array (one event stays a bare object)."""
    if len(payloads) == 1:
        return payloads[0]
    return b"[" + b",".join(payloads) + b"]"


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed RFC 6455 text frame (server -> client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload
