"""A lean HTTP/1.1 path for the hot POST routes, in front of aiohttp on the same socket.

A flash sale is tens of thousands of `POST /api/sales/{id}/orders` in a few seconds, an auction's last
seconds thousands of `POST /api/auctions/{id}/bids`. aiohttp's per-request machinery (request and
response objects, header multidicts, a task, the router, the response writer) costs ~26 us of CPU per
request on the bench machine, more than our whole purchase logic. So each new connection starts on
`FastProtocol`, which serves those routes itself and hands the connection to aiohttp, for good, at the
first request that is anything else.

Requests are parsed by httptools (llhttp, the parser aiohttp's own C parser is built on, strict as
aiohttp runs it for requests). The fast path takes only a subset of what it accepts, and hands
everything else to aiohttp untouched: method POST, HTTP/1.1, a target exactly one of the routes'
paths (`<id>` of letters, digits, `_` and `-`, no query), a `Host` and exactly one `Content-Length`
(digits only, at most the app's body limit), no header twice, and no `Transfer-Encoding`,
`Content-Encoding`, `Expect`, `Upgrade`, `Proxy-Connection` or `Connection: upgrade`; the head must
end in the first CRLF CRLF and be within aiohttp's parser limits (`MAX_HEAD`, `MAX_HEADERS`).
Anything llhttp refuses, and the requests aiohttp refuses beyond it (no Host in HTTP/1.1, a repeated
Host or Content-Type, too many or too long headers), are thus aiohttp's to refuse. A request in that
subset has one framing under any HTTP parser (head up to the blank line, then Content-Length bytes),
so the hand-off happens at a request boundary that aiohttp's parser sees the same way: it then parses
the handed-over bytes from that request on. Requests on a connection are answered one at a time, in
order; a pipelined request waits in the buffer, as under aiohttp.

The answers carry the same status line and headers aiohttp writes (Content-Type, Content-Length,
Date, Server, and Connection: close when asked to close), and the same bodies: both paths call one
handler and map errors through `livesale.web.error_answer`. tests/test_fasthttp*.py check the two
paths answer byte-for-byte alike (but the Date), the hand-off, pipelining and partial reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from livesale.limits import ConnectionGate, GatedSite
from livesale.web import MAX_BODY, error_answer, http_series
from monitoring import metrics as m

# The outcome of a request: (status, JSON body), or the exception that refused it (answered through
# livesale.web.error_answer).
Reply = Callable[["tuple[int, bytes] | BaseException"], None]
# (app, the path's id, Authorization, Idempotency-Key, body, reply): calls `reply` once, later; may
# raise at once instead (a refusal made before any waiting).
FastHandler = Callable[[web.Application, str, "str | None", "str | None", bytes, Reply], None]

_ID = rb"([A-Za-z0-9_-]{1,64})"
# (aiohttp refuses Sec-WebSocket-Key1, of the old WebSocket handshake, with a 400; it decompresses a
# body by its Content-Encoding, or fails on it; llhttp reads Proxy-Connection as Connection.)
_NO_FAST = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"sec-websocket-key1", b"content-encoding",
                      b"proxy-connection"))
_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
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


class FastRoute:
    """One route the fast path serves: its template (`/api/sales/{id}/orders`, the metrics' label),
    the pattern of its paths and its handler."""

    __slots__ = ("template", "path", "handler", "series")

    def __init__(self, template: str, handler: FastHandler) -> None:
        head, sep, tail = template.partition("{id}")
        assert sep and "{" not in tail, template
        self.template = template
        self.path = re.compile(re.escape(head.encode()) + _ID + re.escape(tail.encode()))
        self.handler = handler
        # status -> the series livesale.web.guarded records for this route on aiohttp
        self.series: dict[int, tuple[m.DeferredCounter, m.DeferredHistogram]] = {}

    def record(self, status: int, seconds: float) -> None:
        pair = self.series.get(status)
        if pair is None:
            pair = self.series[status] = http_series(self.template, "POST", status)
        pair[0].inc()
        pair[1].observe(seconds)


class FastServer:
    """The protocol factory of a listening socket: new connections start on `FastProtocol`, which
    serves `routes` (template -> handler: all POST, each with one `{id}`)."""

    def __init__(self, app: web.Application, aiohttp_server: web.Server, routes: Mapping[str, FastHandler],
                 keepalive_timeout: float | None = None, header_timeout: float | None = None) -> None:
        self.app = app
        self.aiohttp_server = aiohttp_server  # its __call__ makes aiohttp's protocol for a connection
        self.routes = tuple(FastRoute(t, h) for t, h in routes.items())
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
    """One connection, while it only carries requests in the fast subset (module docstring). It is
    also the httptools parser's callback object (`on_url` ... `on_message_complete`)."""

    __slots__ = ("server", "transport", "buf", "busy", "started", "close_after", "last_active",
                 "write_paused", "read_paused", "eof", "handing_off", "head_since", "parser", "fed", "url",
                 "fields", "head_done", "message_done", "keep_alive", "length", "route", "path", "auth", "key")

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
        # The request at the buffer's start, as the parser has seen it: `fed` bytes of it fed so far
        # (its head, then its body when all here), and what its callbacks told.
        self.parser = httptools.HttpRequestParser(self)
        self.fed = 0
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.message_done = False
        self.keep_alive = True
        # Once its head is taken: its body's length (-1 before), route, id, Authorization, Idempotency-Key.
        self.length = -1
        self.route: FastRoute | None = None
        self.path = ""
        self.auth: str | None = None
        self.key: str | None = None

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

    # --- httptools callbacks (within `parser.feed_data`) -------------------------------------------

    def on_url(self, part: bytes) -> None:
        self.url += part  # in parts when it spans reads

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # read here: reset once the message is done

    def on_message_complete(self) -> None:
        self.message_done = True

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
        if self.length < 0 and not self._head(buf):
            return  # handed off, or waiting for the rest of the head
        body_at, length = self.fed, self.length
        if len(buf) < body_at + length:
            return self._more()  # the body is not all here yet
        body = buf[body_at : body_at + length]
        if length:
            try:
                self.parser.feed_data(body)
            except _PARSE_ERRORS:
                return self._hand_off()
        if not self.message_done:  # llhttp ends it elsewhere: not ours to frame
            return self._hand_off()
        route = self.route
        assert route is not None
        self.buf = buf[body_at + length :]
        self.close_after = not self.keep_alive
        self.started = time.perf_counter()
        self.busy = True
        self.head_since = 0.0
        path, auth, key = self.path, self.auth, self.key
        self.fed, self.url, self.fields, self.head_done, self.message_done, self.length = 0, b"", [], False, False, -1
        try:
            route.handler(self.server.app, path, auth, key, body, self._answered)
        except Exception as exc:  # noqa: BLE001 - a refusal made before any waiting
            # Answered on the next loop turn, not from inside this call: a pipeline of refusals would
            # otherwise recurse through _answered -> _next once per request.
            asyncio.get_running_loop().call_soon(self._answered, exc)

    def _head(self, buf: bytes) -> bool:
        """Feed the parser what has arrived of the request's head; True once all of it is in and the
        request is in the fast subset (its route and fields taken), else hand off or wait."""
        fed = self.fed
        if not fed and not buf.startswith(b"POST /"[: len(buf)]):
            self._hand_off()
            return False
        end = buf.find(b"\r\n\r\n", fed - 3 if fed > 3 else 0)
        stop = len(buf) if end < 0 else end + 4
        if stop > MAX_HEAD + 4:  # past aiohttp's line limits, or a head it has yet to find the end of
            self._hand_off()
            return False
        try:
            self.parser.feed_data(buf if not fed and stop == len(buf) else buf[fed:stop])
        except _PARSE_ERRORS:
            self._hand_off()
            return False
        self.fed = stop
        if end < 0:
            if self.head_done:  # llhttp ended the head before a CRLF CRLF
                self._hand_off()
            else:
                self._more()  # the head is not all here yet
            return False
        if not self.head_done or self._take_head():
            self._hand_off()
            return False
        return True

    def _take_head(self) -> bool:
        """Take the parsed head's route and fields; True if the request is outside the fast subset."""
        fields = self.fields
        if len(fields) > MAX_HEADERS or self.parser.get_method() != b"POST" or self.parser.get_http_version() != "1.1":
            return True
        for route in self.server.routes:
            match = route.path.fullmatch(self.url)
            if match is not None:
                break
        else:
            return True
        length = auth = key = None
        seen: set[bytes] = set()
        for name, value in fields:
            name = name.lower()
            if name in seen:
                return True  # aiohttp refuses a second Host, Content-Type, User-Agent, ...
            seen.add(name)
            if name == b"content-length":
                value = value.rstrip(b" \t")
                if not value.isdigit() or len(value) > 9:
                    return True
                length = int(value)
            elif name == b"authorization":
                # Trailing whitespace stripped and decoded as aiohttp does.
                auth = value.rstrip(b" \t").decode("utf-8", "surrogateescape")
            elif name == b"idempotency-key":
                key = value.rstrip(b" \t").decode("utf-8", "surrogateescape")
            elif name == b"connection":
                if b"upgrade" in value.lower():
                    return True
            elif name in _NO_FAST:
                return True
        if length is None or length > MAX_BODY or b"host" not in seen or self.message_done != (length == 0):
            return True
        self.length, self.route, self.path, self.auth, self.key = length, route, match.group(1).decode(), auth, key
        return False

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
        route = self.route
        assert route is not None
        if isinstance(outcome, Exception):
            status, body, headers = error_answer(outcome, "POST", route.template)
        elif isinstance(outcome, BaseException):
            self.close()
            raise outcome
        else:
            status, body = outcome
        server = self.server
        server.served += 1
        if m.ENABLED:
            route.record(status, time.perf_counter() - self.started)
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

    def __init__(self, runner: web.AppRunner, host: str, port: int, routes: Mapping[str, FastHandler],
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        assert runner.server is not None
        self.fast = FastServer(runner.app, runner.server, routes)

    def factory(self) -> Callable[[], asyncio.Protocol]:
        return self.fast

    async def stop(self) -> None:
        await super().stop()  # stop listening
        await self.fast.shutdown(grace_s=5.0)
