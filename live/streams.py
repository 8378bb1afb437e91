"""Stream lifecycle as an explicit state machine (CONTRIBUTING.md #2): scheduled -> live -> ended."""

from __future__ import annotations

from enum import StrEnum

from livesale.codes import ErrorCode
from livesale.errors import Conflict


class StreamStatus(StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


_ALLOWED: dict[str, dict[StreamStatus, StreamStatus]] = {
    "start": {StreamStatus.SCHEDULED: StreamStatus.LIVE},
    "end": {StreamStatus.SCHEDULED: StreamStatus.ENDED, StreamStatus.LIVE: StreamStatus.ENDED},
}


def transition(current: str, action: str) -> StreamStatus:
    """The state after `action`, or a 409 naming the current state."""
    try:
        return _ALLOWED[action][StreamStatus(current)]
    except KeyError:
        raise Conflict(f"cannot {action} a stream that is {current}", code=ErrorCode.INVALID_STATE) from None


def can_pin(current: str) -> bool:
    return current != StreamStatus.ENDED
