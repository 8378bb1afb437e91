"""A lean HTTP/1.1 path for the purchase route, in front of aiohttp on the same socket.

A flash sale is tens of thousands of `POST /api/sales/{id}/orders` in a few seconds. aiohttp's
per-request machinery (request and response objects, header multidicts, a task, the router, the
response writer) costs ~26 us of CPU per request on the bench machine, more than our whole purchase
logic. So each new connection starts on `FastProtocol`, which serves purchase requests itself and
hands the connection to aiohttp, for good, at the first request that is anything else.

It takes only a strict subset of HTTP/1.1, and hands everything outside it to aiohttp untouched: the
request line must be exactly `POST /api/sales/<id>/orders HTTP/1.1` (`<id>` of letters, digits, `_` and
`-`, no query), every line must end in CRLF, header names must be tokens and values free of control
characters, there must be a `Host` and exactly one `Content-Length` (digits only, at most the app's body
limit), no header twice, and no `Transfer-Encoding`, `Content-Encoding`, `Expect`, `Upgrade` or
`Proxy-Connection`; the head must be within aiohttp's parser limits (`MAX_HEAD`, `MAX_HEADERS`).
Requests aiohttp's parser refuses (no Host in HTTP/1.1, a repeated Host or Content-Type, too many or too
long headers) are thus aiohttp's to refuse. A request in that subset has one framing under any HTTP
parser (head up to the blank line, then Content-Length bytes), so the hand-off happens at a request
boundary that aiohttp's parser sees the same way: it then parses the handed-over bytes from that request
on. Requests on a connection are answered one at a time, in order; a pipelined request waits in the
buffer, as under aiohttp.

The answers carry the same status line and headers aiohttp writes (Content-Type, Content-Length,
Date, Server, and Connection: close when asked to close), and the same bodies: both paths call one
handler and map errors through `livesale.web.error_answer`. tests/test_fasthttp.py checks the two
paths answer byte-for-byte alike (but the Date), the hand-off, pipelining and partial reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from livesale.limits import ConnectionGate, GatedSite
from livesale.web import MAX_BODY, error_answer, http_series
from monitoring import metrics as m

# The outcome of a purchase: (status, JSON body), or the exception that refused it (answered through
# livesale.web.error_answer).
Reply = Callable[["tuple[int, bytes] | BaseException"], None]
# (app, sale id, Authorization, Idempotency-Key, body, reply): calls `reply` once, later; may raise at
# once instead (a refusal made before any waiting).
PurchaseHandler = Callable[[web.Application, str, "str | None", "str | None", bytes, Reply], None]

ROUTE = "/api/sales/{id}/orders"
_PREFIX = b"POST /api/sales/"
_REQUEST_LINE = re.compile(rb"POST /api/sales/([A-Za-z0-9_-]{1,64})/orders HTTP/1\.1\r\n")
# One whole header line: a token, a colon, a value of visible characters, spaces, tabs and obs-text,
# CRLF; nothing else (no bare CR or LF, no NUL or other controls, no obs-fold). `_next` checks that it
# matched every line of the head. (A lazy value with its trailing whitespace outside the group costs
# 8 us per head on a long token: trailing whitespace is stripped from the values we use instead.) The
# leading whitespace is possessive (`*+`): were it given back to the value, a long run of it before a
# control character would cost quadratic backtracking, blocking the loop for seconds.
_HEADER = re.compile(rb"(?m)^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*+([\t\x20-\x7e\x80-\xff]*)\r\n")
# (aiohttp refuses Sec-WebSocket-Key1, of the old WebSocket handshake, with a 400; it decompresses a
# body by its Content-Encoding, or fails on it; llhttp reads Proxy-Connection as Connection.)
_NO_FAST = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"sec-websocket-key1", b"content-encoding",
                      b"proxy-connection"))
# aiohttp's request parser limits (RequestHandler's defaults, which live.cli keeps): a header line
# longer than max_field_size, or more than max_headers of them, is a 400. A head within MAX_HEAD
# holds no line over the limit.
MAX_HEAD = 8190
MAX_HEADERS = 128
MAX_BUFFER = 256 * 1024  # read no more while this much waits behind the request being answered
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Date:
    """The Date header value, formatted once per second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        t = int(time.time())
        if t != cls.second:
            cls.second, cls.value = t, formatdate(t, usegmt=True).encode()
        return cls.value


def _head(status: int, length: int, headers: dict[str, str] | None, close: bool) -> bytes:
    # A web.Response's own headers come first, then the Content-Type its content_type argument sets.
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()) if headers else b""
    return b"HTTP/1.1 %d %s\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\nServer: %s\r\n%s\r\n" % (
        status, _REASONS.get(status, b""), extra, length, Date.now(), _SERVER,
        b"Connection: close\r\n" if close else b"",
    )


_SERVER = SERVER_SOFTWARE.encode()


def _aiohttp_keepalive(server: web.Server) -> float:
    """The keep-alive timeout of aiohttp's connections on `server`: the runner's `keepalive_timeout`
    (web.Server hands its keyword arguments to each RequestHandler), else RequestHandler's default
    (3630 s in aiohttp 3.14)."""
    kwargs: dict[str, Any] = getattr(server, "_kwargs", {})
    default = inspect.signature(RequestHandler).parameters["keepalive_timeout"].default
    return float(kwargs.get("keepalive_timeout", default))


class FastServer:
    """The protocol factory of a listening socket: new connections start on `FastProtocol`."""

    def __init__(self, app: web.Application, aiohttp_server: web.Server, handler: PurchaseHandler,
                 keepalive_timeout: float | None = None, header_timeout: float | None = None) -> None:
        self.app = app
        self.aiohttp_server = aiohttp_server  # its __call__ makes aiohttp's protocol for a connection
        self.handler = handler
        if keepalive_timeout is None:  # the one aiohttp's connections on this server get
            keepalive_timeout = _aiohttp_keepalive(aiohttp_server)
        self.keepalive_timeout = keepalive_timeout
        if header_timeout is None:  # likewise (livesale.web.JsonErrorsServer), else none
            header_timeout = getattr(aiohttp_server, "header_timeout", None) or float("inf")
        self.header_timeout = header_timeout
        # Closes connections at the cap's count (livesale.limits), when the connections come through it.
        self.gate: ConnectionGate | None = getattr(aiohttp_server, "gate", None)
        # Loop time as of the last sweep: what connections stamp themselves with (a clock read per
        # request would cost more than the precision is worth; the sweeps come every second at most).
        self.clock = 0.0
        self.connections: set[FastProtocol] = set()
        self.closing = False
        self.served = 0  # requests answered on the fast path
        self.handoffs = 0  # connections handed to aiohttp
        self._drained = asyncio.Event()  # set when closing and the last connection is gone
        self._series: dict[int, tuple[m.DeferredCounter, m.DeferredHistogram]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> FastProtocol:
        if self._sweeper is None:
            self._sweep()
        return FastProtocol(self)

    def _sweep(self) -> None:
        """Close connections idle past the keep-alive timeout, and those whose request has not all
        arrived within the header timeout of its first byte (docs/limits.md), checked every second
        (or quarter timeout) rather than with a timer per request."""
        loop = asyncio.get_running_loop()
        period = max(0.05, min(1.0, self.keepalive_timeout / 4, self.header_timeout / 4))
        # Stamps are the clock of the sweep before the event, up to one period early: a connection is
        # closed only once it is certainly past its timeout, at most two periods after.
        self.clock = now = loop.time()
        idle_since = now - self.keepalive_timeout - period
        head_since = now - self.header_timeout - period
        for conn in list(self.connections):
            if conn.busy or conn.write_paused:
                # Not one waiting for its client to read: aiohttp has no timeout on a write either.
                continue
            if conn.head_since and conn.head_since <= head_since:
                if m.ENABLED:
                    m.LIMIT_REFUSALS.labels("header_timeout").inc()
                conn.close()
            elif conn.last_active < idle_since:
                conn.close()
        self._sweeper = loop.call_later(period, self._sweep)

    def record(self, status: int, seconds: float) -> None:
        pair = self._series.get(status)
        if pair is None:  # the series livesale.web.guarded records for this route on aiohttp
            pair = self._series[status] = http_series(ROUTE, "POST", status)
        pair[0].inc()
        pair[1].observe(seconds)

    def forget(self, conn: FastProtocol) -> None:
        self.connections.discard(conn)
        if self.closing and not self.connections:
            self._drained.set()

    async def shutdown(self, grace_s: float) -> None:
        """Stop: idle connections close now, busy ones after their answer (for up to `grace_s`)."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._drained.wait()
        for conn in list(self.connections):
            conn.close()


class FastProtocol(asyncio.Protocol):
    """One connection, while it only carries purchase requests in the fast subset (module docstring)."""

    __slots__ = ("server", "transport", "buf", "busy", "started", "close_after", "last_active",
                 "write_paused", "read_paused", "eof", "handing_off", "head_since")

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a request is being answered
        self.started = 0.0
        self.close_after = False
        self.last_active = 0.0
        self.write_paused = False
        self.read_paused = False
        self.eof = False
        self.handing_off = False
        self.head_since = 0.0  # server.clock when the request at the buffer's start began to arrive

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.server.closing:  # accepted just as the server stopped: nothing will sweep it later
            transport.close()
            return
        self.transport = transport  # type: ignore[assignment]
        self.last_active = self.server.clock
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy and not self.write_paused:
            self._next()
        elif len(self.buf) > MAX_BUFFER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.busy and not self.write_paused:
            self._next()  # nothing in hand: closes now (`_more`), as there is nothing whole to answer
        return True  # answer the whole requests that have arrived, then close

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        self.transport = None  # a request being answered still completes; its answer is dropped
        if self.server.gate is not None:
            self.server.gate.closed()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_active = self.server.clock  # idle from now on, if nothing waits
        if not self.busy:
            self._next()

    # --- requests -----------------------------------------------------------------------------------

    def close(self) -> None:
        self.server.forget(self)
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _next(self) -> None:
        """Start on the next complete request in the buffer, or hand the connection to aiohttp."""
        buf = self.buf
        if not buf or self.transport is None:
            if self.eof and self.transport is not None:
                self.close()
            return
        if self.server.closing:
            self.close()
            return
        if not buf.startswith(_PREFIX[: len(buf)]):
            return self._hand_off()
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD or (len(buf) > len(_PREFIX) and b"\n" in buf.replace(b"\r\n", b"")):
                return self._hand_off()
            return self._more()  # the head is not all here yet
        line = _REQUEST_LINE.match(buf)
        if line is None:
            return self._hand_off()
        start, stop = line.end(), end + 2
        lines = buf.count(b"\r\n", start, stop)
        if end > MAX_HEAD or lines > MAX_HEADERS:
            return self._hand_off()
        fields = _HEADER.findall(buf, start, stop)
        if len(fields) != lines or buf.count(b"\n", start, stop) != lines or buf.count(b"\r", start, stop) != lines:
            return self._hand_off()  # a line that is not a plain `name: value`
        length = auth = key = None
        close = False
        seen: set[bytes] = set()
        for name, value in fields:
            name = name.lower()
            if name in seen:
                return self._hand_off()  # aiohttp refuses a second Host, Content-Type, User-Agent, ...
            seen.add(name)
            if name == b"content-length":
                value = value.rstrip(b" \t")
                if not value.isdigit() or len(value) > 9:
                    return self._hand_off()
                length = int(value)
            elif name == b"authorization":
                auth = value.rstrip(b" \t").decode("utf-8", "surrogateescape")  # as aiohttp decodes headers
            elif name == b"idempotency-key":
                key = value.rstrip(b" \t").decode("utf-8", "surrogateescape")
            elif name == b"connection":
                tokens = {t.strip(b" \t") for t in value.lower().split(b",")}
                if b"upgrade" in tokens:
                    return self._hand_off()
                close = b"close" in tokens
            elif name in _NO_FAST:
                return self._hand_off()
        if length is None or length > MAX_BODY or b"host" not in seen:
            return self._hand_off()
        body_at = end + 4
        if len(buf) < body_at + length:
            return self._more()  # the body is not all here yet
        body = buf[body_at : body_at + length]
        self.buf = buf[body_at + length :]
        self.close_after = close
        self.started = time.perf_counter()
        self.busy = True
        self.head_since = 0.0
        try:
            self.server.handler(self.server.app, line.group(1).decode(), auth, key, body, self._answered)
        except Exception as exc:  # noqa: BLE001 - a refusal made before any waiting
            # Answered on the next loop turn, not from inside this call: a pipeline of refusals would
            # otherwise recurse through _answered -> _next once per request.
            asyncio.get_running_loop().call_soon(self._answered, exc)

    def _more(self) -> None:
        """Wait for the rest of the request at the start of the buffer (for up to the header timeout
        from its first byte, `FastServer._sweep`), unless the client has half-closed: then it never
        comes, and the connection closes (as aiohttp closes it)."""
        if self.eof:
            self.close()
        elif not self.head_since:
            self.head_since = self.server.clock

    def _answered(self, outcome: tuple[int, bytes] | BaseException) -> None:
        if not self.busy:
            return  # told twice: the first answer stands
        self.busy = False
        headers: dict[str, str] | None = None
        if isinstance(outcome, asyncio.CancelledError):
            self.close()
            return
        if isinstance(outcome, Exception):
            status, body, headers = error_answer(outcome, "POST", ROUTE)
        elif isinstance(outcome, BaseException):
            self.close()
            raise outcome
        else:
            status, body = outcome
        server = self.server
        server.served += 1
        if m.ENABLED:
            server.record(status, time.perf_counter() - self.started)
        transport = self.transport
        if transport is None:
            return
        close = self.close_after or server.closing or (self.eof and not self.buf)
        transport.write(_head(status, len(body), headers, close) + body)
        self.last_active = server.clock
        if close:
            self.close()
            return
        if self.read_paused and len(self.buf) <= MAX_BUFFER:
            self.read_paused = False
            transport.resume_reading()
        if self.handing_off:
            self._hand_off()
        elif not self.write_paused:
            self._next()

    def _hand_off(self) -> None:
        """From the request at the start of the buffer on, aiohttp serves this connection."""
        transport = self.transport
        if transport is None:
            return
        if self.busy:  # answer the request in hand first: responses go out in order
            self.handing_off = True
            return
        self.server.forget(self)
        self.server.handoffs += 1
        proto: Any = self.server.aiohttp_server()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if self.write_paused:
            proto.pause_writing()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        data, self.buf = self.buf, b""
        self.transport = None
        if data:
            proto.data_received(data)
        if self.eof and not proto.eof_received():
            # What the transport does on EOF when the protocol does not keep the connection half-open
            # (aiohttp's does not): the EOF reached us, so it is ours to do.
            transport.close()


class FastSite(GatedSite):
    """aiohttp's TCP site whose connections start on the fast path (`FastServer`), accepted under the
    connection cap (livesale.limits.GatedSite)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, handler: PurchaseHandler, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        assert runner.server is not None
        self.fast = FastServer(runner.app, runner.server, handler)

    def factory(self) -> Callable[[], asyncio.Protocol]:
        return self.fast

    async def stop(self) -> None:
        await super().stop()  # stop listening
        await self.fast.shutdown(grace_s=5.0)
