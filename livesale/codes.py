"""Every error code and WebSocket close code clients see, as data (CONTRIBUTING.md #4).

Codes double as metric label values, so the sets are closed and small.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    VALIDATION = "validation_error"
    CONFLICT = "conflict"
    INVALID_STATE = "invalid_state"
    SOLD_OUT = "sold_out"
    LIMIT_REACHED = "limit_reached"
    SALE_NOT_ACTIVE = "sale_not_active"
    INVALID_QUANTITY = "invalid_quantity"
    MISSING_IDEMPOTENCY_KEY = "missing_idempotency_key"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    ORDER_NOT_PENDING = "order_not_pending"
    CARD_DECLINED = "card_declined"
    # Auctions (docs/auctions.md).
    AUCTION_NOT_ACTIVE = "auction_not_active"
    BID_TOO_LOW = "bid_too_low"
    ALREADY_LEADING = "already_leading"
    INVALID_AMOUNT = "invalid_amount"
    # Group-buys (docs/groupbuy.md).
    INVALID_TIERS = "invalid_tiers"
    GROUPBUY_NOT_ACTIVE = "groupbuy_not_active"
    GROUP_FULL = "group_full"
    GROUP_CLOSED = "group_closed"
    ALREADY_IN_GROUP = "already_in_group"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # Media, WHIP/WHEP (docs/media.md).
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNSUPPORTED_MEDIA = "unsupported_media"
    PUBLISHER_EXISTS = "publisher_exists"
    NO_PUBLISHER = "no_publisher"
    AT_CAPACITY = "at_capacity"
    # WebSocket `error` event codes (docs/design.md "WebSocket").
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_COMMENT = "invalid_comment"
    INVALID_LIKE = "invalid_like"
    UNAUTHENTICATED = "unauthenticated"
    RATE_LIMITED = "rate_limited"
    MUTED = "muted"


class CloseCode(IntEnum):
    """4000-4499: reconnect with backoff and `since`; 4500-4999: do not reconnect."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # a bug of ours while serving the socket: reconnect with backoff
    SERVER_RESTARTING = 4000
    SLOW_CONSUMER = 4008
    TOO_MANY_CONNECTIONS = 4009  # over the per-user or per-address socket cap (docs/limits.md)
    RATE_LIMITED = 4029
    UNAUTHORIZED = 4501
    BANNED = 4503
    NO_SUCH_STREAM = 4504

    @property
    def reconnect(self) -> bool:
        return 4000 <= self.value < 4500 or self.value in (1001, 1009, 1011)
