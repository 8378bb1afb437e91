"""The exception tree. Handlers raise these; one middleware turns them into
`{"error": code, "message": ...}` bodies (CONTRIBUTING.md #3).

    LivesaleError (500 internal)
    ├── BadRequest (400 bad_request, or a 422 code given)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409 with a code: sold_out, limit_reached, ...)
    ├── UnsupportedMediaType (415)
    ├── Unprocessable (422 with a code)
    ├── PaymentDeclined (402 card_declined)
    └── Unavailable (503 unavailable, Retry-After) <- every redis-py connection/timeout error
"""

from __future__ import annotations

from typing import Any

from livesale.codes import ErrorCode


class LivesaleError(Exception):
    status = 500
    code: str = ErrorCode.INTERNAL
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str = "", *, code: str | None = None, retry_after: int | None = None,
                 **extra: Any) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": str(self.code), "message": self.message, **self.extra}


class BadRequest(LivesaleError):
    status = 400
    code = ErrorCode.BAD_REQUEST


class Unauthorized(LivesaleError):
    status = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(LivesaleError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(LivesaleError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(LivesaleError):
    status = 409
    code = ErrorCode.CONFLICT


class UnsupportedMediaType(LivesaleError):
    status = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class Unprocessable(LivesaleError):
    status = 422
    code = ErrorCode.VALIDATION


class PaymentDeclined(LivesaleError):
    status = 402
    code = ErrorCode.CARD_DECLINED


class Unavailable(LivesaleError):
    status = 503
    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str = "a backing service is unreachable", retry_after: int = 1, *,
                 code: str | None = None) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
