"""HTTP plumbing shared by the API handlers: JSON in and out, auth, and the error middleware that
turns the exception tree into `{"error": code, "message": ...}` bodies."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import redis.exceptions as rx
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError, PayloadEncodingError
from aiohttp.web_protocol import RequestHandler

from livesale.auth import User
from livesale.codes import ErrorCode
from livesale.db import unavailable as sql_unavailable
from livesale.errors import BadRequest, LivesaleError, Unavailable
from livesale.limits import ClientFrames, ConnectionGate, release
from livesale.redis_client import REDIS_DOWN, refuses_writes
from livesale.services import SERVICES
from monitoring import metrics as m

if TYPE_CHECKING:
    from livesale.config import Settings

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
        data = _out_of_range_numbers(body, exc)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _number(text: str) -> float:
    """A number too long or too large for a machine type: infinity, so that a field expecting an
    integer in a range refuses it as it refuses any other out-of-range value (422)."""
    return -math.inf if text.startswith("-") else math.inf


def _out_of_range_numbers(body: bytes, exc: orjson.JSONDecodeError) -> Any:
    """orjson refuses valid JSON holding a number beyond a double (an integer of 309+ digits, 1e400):
    that is a value out of range (422 from the field's check, docs/limits.md), not malformed JSON (400).
    Such a body is read again by the standard parser, integers over 18 digits made infinite (Python's
    int() refuses more than 4300 digits, and parsing long ones costs quadratic time)."""
    if not str(exc).startswith("number is infinity"):
        raise BadRequest("request body is not valid JSON") from exc
    try:
        return json.loads(body, parse_int=lambda t: int(t) if len(t) <= 18 else _number(t),
                          parse_constant=_not_json)  # floats: 1e400 is inf already
    except (ValueError, RecursionError) as exc2:
        raise BadRequest("request body is not valid JSON") from exc2


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
    connection afterwards, stay aiohttp's.

    It also holds the limits aiohttp lacks (docs/limits.md): a request's line and headers must arrive
    within the header timeout of its first byte (aiohttp's keep-alive timer, brought forward, closes
    the connection otherwise: it closes only a connection still waiting for a request); a WebSocket
    client's unmasked frame closes the connection with 1002; a connection lost is counted off the
    connection cap."""

    # Slots, as aiohttp's own protocol has: an instance dict would cost every connection ~0.5 KiB.
    __slots__ = ("_head_by", "_header_timeout", "_gate", "_frames")

    def __init__(self, *args: Any, header_timeout: float = 0.0, gate: ConnectionGate | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_by = 0.0  # loop time by which the request head being received must be whole; 0: none
        self._header_timeout = header_timeout  # 0: none
        self._gate = gate
        self._frames: ClientFrames | None = None  # set once the connection carries a WebSocket

    def data_received(self, data: bytes) -> None:
        if self._frames is not None:
            if data and not self._frames.feed(data):
                self._unmasked_frame()
                return
            super().data_received(data)
            return
        if not self._head_by and self._header_timeout and not self._messages and not self._request_in_progress:
            self._head_by = self._loop.time() + self._header_timeout
            # From a request's first byte the connection is no longer idle: the header deadline
            # replaces the keep-alive one (aiohttp sets that anew after the response).
            self._next_keepalive_close_time = self._head_by
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
            self._keepalive_handle = self._loop.call_at(self._head_by, self._process_keepalive)
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._head_by = 0.0

    def _process_keepalive(self) -> None:
        head = bool(self._head_by) and self._loop.time() >= self._head_by and not self._force_close
        super()._process_keepalive()
        if head and self._force_close and m.ENABLED:
            m.LIMIT_REFUSALS.labels("header_timeout").inc()

    def set_parser(self, parser: Any, data_received_cb: Any = None) -> None:
        # A WebSocket's frame reader: what arrived with the handshake goes through the mask check too.
        self._frames = ClientFrames()
        if self._message_tail and not self._frames.feed(self._message_tail):
            self._message_tail = b""
            self._unmasked_frame()
        super().set_parser(parser, data_received_cb)

    def _unmasked_frame(self) -> None:
        """RFC 6455 §5.1: close with 1002 and drop the connection (aiohttp's reader would accept it)."""
        if m.ENABLED:
            m.LIMIT_REFUSALS.labels("unmasked_frame").inc()
            m.WS_CLOSES.labels("1002").inc()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            reason = b"client frames must be masked"
            transport.write(b"\x88%c%b%b" % (2 + len(reason), (1002).to_bytes(2, "big"), reason))
        self.force_close()
        release(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        counted = self._manager is not None  # aiohttp ignores a second call; so do we
        super().connection_lost(exc)
        if counted and self._gate is not None:
            self._gate.closed()

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
    header_timeout = 0.0  # 0: none
    gate: ConnectionGate | None = None  # the connection cap, when the sites accept through it

    def __call__(self) -> RequestHandler:
        return JsonErrorsHandler(self, loop=self._loop, header_timeout=self.header_timeout, gate=self.gate,
                                 **self._kwargs)


class Runner(web.AppRunner):
    """aiohttp's AppRunner whose connections answer in our error shape (`JsonErrorsHandler`) and keep
    the limits of the app's settings (docs/limits.md): keep-alive and header timeouts, and the
    connection cap for the sites that accept through it (livesale.limits.GatedSite); what
    `livesale serve` and the tests run the app with. A `keepalive_timeout` given here wins."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorsServer  # same object and state; only the protocol it makes differs
        svc = self.app.get(SERVICES)
        if svc is not None:
            settings = svc.settings
            kwargs: dict[str, Any] = server._kwargs  # what each connection's RequestHandler is made with
            kwargs.setdefault("keepalive_timeout", settings.keepalive_s)
            server.header_timeout = settings.header_timeout_s  # type: ignore[attr-defined]
            server.gate = ConnectionGate(settings.connection_cap)  # type: ignore[attr-defined]
        return server


class QueryFreeAccessLogger(AbstractAccessLogger):
    """aiohttp's access line without the query string and the Referer: a WebSocket's `?token=` (or a
    page address carrying one) never reaches the log (docs/auth.md)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %d %.6f "%s"', request.remote, request.method,
                         request.rel_url.raw_path, request.version.major, request.version.minor,
                         response.status, response.body_length, time, request.headers.get("User-Agent", "-"))


def access_log_options(settings: Settings) -> dict[str, Any]:
    """AppRunner keywords for the access log `settings` ask for (off unless `access_log`)."""
    if not settings.access_log:
        return {"access_log": None}
    return {"access_log": logging.getLogger("aiohttp.access"), "access_log_class": QueryFreeAccessLogger}


def quiet_client_errors() -> None:
    """Install `QuietClientErrors` on aiohttp's server logger (once per process)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietClientErrors) for f in server_log.filters):
        server_log.addFilter(QuietClientErrors())
