"""HTTP plumbing shared by the API handlers: JSON in and out, auth, and the error middleware that
turns the exception tree into `{"error": code, "message": ...}` bodies."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.exceptions as rx
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, PayloadEncodingError
from aiohttp.web_protocol import RequestHandler

from livesale.auth import User
from livesale.codes import ErrorCode
from livesale.db import unavailable as sql_unavailable
from livesale.errors import BadRequest, LivesaleError, Unavailable
from livesale.redis_client import REDIS_DOWN, refuses_writes
from livesale.services import SERVICES
from monitoring import metrics as m

log = logging.getLogger("livesale.http")

_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}


MAX_BODY = 64 * 1024  # the app's client_max_size: a larger request body is 413 payload_too_large


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def json_bytes_response(body: bytes, status: int = 200) -> web.Response:
    """A response whose JSON body is already encoded (answers the hot path keeps ready)."""
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(exc: LivesaleError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return json_response(exc.body(), exc.status, headers)


async def read_body(request: web.Request) -> bytes:
    content = request.content
    length = request.content_length
    try:
        if length is not None and length <= MAX_BODY and content.is_eof():
            # The whole body has arrived with the headers (a small JSON body almost always does): take
            # it as it is, without read()'s chunk loop.
            return content.read_nowait()
        return await request.read()  # enforces client_max_size (413)
    except (PayloadEncodingError, web.RequestPayloadError) as exc:  # a body its Content-Encoding cannot decode
        raise BadRequest("request body could not be decoded (Content-Encoding)") from exc


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


async def read_json(request: web.Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request))


def current_user(request: web.Request) -> User:
    return request.app[SERVICES].auth.from_header(request.headers.get("Authorization"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_series(route: str, method: str, status: int) -> tuple[m.DeferredCounter, m.DeferredHistogram]:
    return (m.counter(m.HTTP_REQUESTS, route, method, str(status)), m.histogram(m.HTTP_LATENCY, route, method))


def guarded(handler: Handler, route: str | None = None) -> Handler:
    """`handler` under our error contract, with the HTTP metrics: every LivesaleError becomes its
    `{"error": code, "message": ...}` body, aiohttp's own HTTP errors get the same shape, a lost Redis is
    503 `unavailable`, anything else a logged 500.

    Each route's handler is wrapped when it is registered (`app.router.add_post(path, guarded(h))`)
    instead of all of them sharing an aiohttp middleware: a middleware chain puts two more coroutine
    frames under every request, which a handler that waits re-enters when it resumes (the purchase
    path does, for its Redis batch): 3.5 us of a ~50 us purchase, measured with bench/inventory.py.
    Paths no route matches are answered by `unmatched` (live/app.py registers it last)."""
    series: dict[tuple[str, int], tuple[m.DeferredCounter, m.DeferredHistogram]] = {}

    @functools.wraps(handler)
    async def guarded_handler(request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = http_error_response(exc)
        except Exception as exc:
            status, body, headers = error_answer(exc, request.method, request.path)
            resp = web.Response(body=body, status=status, headers=headers, content_type="application/json")
        if m.ENABLED:
            key = (request.method, resp.status)
            pair = series.get(key)
            if pair is None:
                label = route or request.match_info.route.resource.canonical  # type: ignore[union-attr]
                pair = series[key] = http_series(label, request.method, resp.status)
            pair[0].inc()
            pair[1].observe(time.perf_counter() - start)
        return resp

    return guarded_handler


def error_answer(exc: Exception, method: str, path: str) -> tuple[int, bytes, dict[str, str] | None]:
    """Status, JSON body and extra headers of our error contract for `exc`, raised by a handler (shared
    by `guarded` and livesale.fasthttp): a LivesaleError as its body, a lost Redis, one that refuses
    writes or a database that cannot serve as 503 `unavailable` with Retry-After, anything else a
    logged 500 `internal`."""
    if isinstance(exc, LivesaleError):
        if m.ENABLED and isinstance(exc.__cause__, REDIS_DOWN):  # redis_errors() mapped a lost Redis
            m.REDIS_ERRORS.labels("http").inc()
        err = exc
    elif isinstance(exc, REDIS_DOWN):
        if isinstance(exc, rx.RedisError):
            if m.ENABLED:
                m.REDIS_ERRORS.labels("http").inc()
            err = Unavailable(f"redis unreachable: {exc.__class__.__name__}")
        else:  # a socket error outside redis-py: PostgreSQL's driver raises these as they are
            log.warning("%s %s: %r", method, path, exc)
            err = Unavailable(f"a backing service is unreachable: {exc.__class__.__name__}")
    elif refuses_writes(exc):
        err = Unavailable(f"redis refuses writes: {str(exc)[:80]}")
    elif sql_unavailable(exc):
        log.warning("%s %s: database unavailable: %s", method, path, str(exc).splitlines()[0][:200])
        err = Unavailable(f"database unavailable: {exc.__class__.__name__}")
    else:
        log.error("unhandled error on %s %s", method, path, exc_info=exc)
        return 500, _INTERNAL, None
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return err.status, orjson.dumps(err.body()), headers


_INTERNAL = orjson.dumps({"error": str(ErrorCode.INTERNAL), "message": "internal server error"})


def http_error_response(exc: web.HTTPException) -> web.Response:
    """One of aiohttp's HTTP errors (413 from a body too large, ...) in our error shape."""
    code = _HTTP_CODES.get(exc.status, ErrorCode.BAD_REQUEST if exc.status < 500 else ErrorCode.INTERNAL)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return json_response({"error": str(code), "message": exc.reason}, exc.status, headers)


def catch_all(app: web.Application) -> None:
    """Answer every path no route matched: 405 `method_not_allowed` (with Allow) when the path exists
    under other methods, 404 `not_found` otherwise. Registered after every other route."""
    resource = app.router.add_resource("/{path:.*}")

    async def unmatched(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for other in request.app.router.resources():
            if other is not resource:
                match, methods = await other.resolve(request)
                if match is not None:  # cannot happen: the router would have chosen it
                    raise web.HTTPInternalServerError()
                allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    resource.add_route("*", guarded(unmatched, route="unmatched"))


class QuietClientErrors(logging.Filter):
    """aiohttp logs each request its parser refuses (a client's malformed HTTP: two Content-Lengths,
    a bare LF, ...) as an ERROR with a full traceback, so any client could flood the log. Such a record
    becomes one INFO line naming the problem; aiohttp's own errors (5xx) stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            first = str(exc.message).strip().splitlines()[0] if exc.message else ""
            record.msg = f"{record.getMessage()}: {exc.code} {first}"
            record.args = ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection protocol, whose own answers use our error shape: a request its parser
    refuses (two Content-Lengths, a bare LF, a header line too long, ...) gets 400 `bad_request` with
    the parser's reason as JSON instead of aiohttp's text/plain page. Logging, and closing the
    connection afterwards, stay aiohttp's."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if a response was under way
        body = _INTERNAL
        if status < 500:
            reason = (message or "").strip().splitlines()
            body = orjson.dumps({
                "error": str(_HTTP_CODES.get(status, ErrorCode.BAD_REQUEST)),
                "message": f"malformed HTTP request: {reason[0].rstrip(': ')}" if reason else "malformed HTTP request",
            })
        resp = web.Response(status=status, body=body, content_type="application/json")
        resp.force_close()
        return resp


class JsonErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """aiohttp's AppRunner whose connections answer in our error shape (`JsonErrorsHandler`); what
    `livesale serve` and the tests run the app with."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorsServer  # same object and state; only the protocol it makes differs
        return server


def quiet_client_errors() -> None:
    """Install `QuietClientErrors` on aiohttp's server logger (once per process)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietClientErrors) for f in server_log.filters):
        server_log.addFilter(QuietClientErrors())
