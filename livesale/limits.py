"""Connection-level limits under hostile load (docs/limits.md), in one place.

- `ConnectionGate`: the process's connection cap. Sockets are accepted by our own loop over
  `loop.sock_accept` (not `loop.create_server`'s, which cannot pause), which stops accepting at the
  cap until a connection closes: new clients wait in the kernel's backlog while every open
  connection keeps being served. It also backs off when accept() itself runs out of descriptors.
- `release`: a WebSocket whose close left unsent data behind (a peer that does not read) loses its
  transport, so its socket and buffers go now instead of whenever the peer reads.
- `ClientFrames`: RFC 6455 §5.1, a server closes the connection (1002) on an unmasked client frame;
  aiohttp's frame reader, shared with its client, accepts them.

The header and keep-alive timeouts live where the connections are served: livesale.fasthttp (its
sweeper) and livesale.web.JsonErrorsHandler (aiohttp's keep-alive timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import web

from monitoring import metrics as m

log = logging.getLogger("livesale.limits")

# accept() failures that concern only the one connection being accepted (it was reset in the backlog)
# are skipped; any other (out of descriptors or memory: EMFILE, ENFILE, ENOBUFS) waits and retries.
_GONE = frozenset((errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM))
_BACKOFF_MAX_S = 1.0
_BURST = 128  # connections taken per wake-up of the accept loop (aiohttp's listen backlog)


class ConnectionGate:
    """Counts a process's open client connections and pauses accepting at `cap`.

    `opened` is called by the accept loop, `closed` by the connection's protocol when it is lost
    (livesale.fasthttp.FastProtocol, livesale.web.JsonErrorsHandler): a socket counts until its
    descriptor is released, not merely until a close was asked."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self._below = asyncio.Event()
        self._below.set()

    def opened(self) -> None:
        self.open += 1
        if self.open >= self.cap:
            self._below.clear()
        if m.ENABLED:
            m.OPEN_CONNECTIONS.inc()

    def closed(self) -> None:
        self.open -= 1
        if self.open < self.cap:
            self._below.set()
        if m.ENABLED:
            m.OPEN_CONNECTIONS.dec()

    async def accept_loop(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        """Accept on `sock` until it is closed or this task cancelled: never ends on a failure, as a
        process that stopped accepting would be up but unreachable. Each wake-up takes every
        connection waiting (up to the listen backlog and the cap), as the loop's own accept does: one
        per loop turn lets a burst of connects overflow the backlog, and its clients get resets."""
        loop = asyncio.get_running_loop()
        backoff = 0.01
        while sock.fileno() != -1:
            if self.open >= self.cap:
                if m.ENABLED:
                    m.LIMIT_REFUSALS.labels("connection_cap").inc()
                log.warning("at the connection cap (%d open): not accepting until some close", self.open)
                await self._below.wait()
            try:
                conn, _addr = await loop.sock_accept(sock)
                accepted = [conn]
                while len(accepted) < _BURST and self.open + len(accepted) < self.cap:
                    try:
                        conn, _addr = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    accepted.append(conn)
            except OSError as exc:
                if exc.errno in _GONE or sock.fileno() == -1:
                    continue
                if m.ENABLED:
                    m.LIMIT_REFUSALS.labels("accept_error").inc()
                log.warning("accept() failed (%s): retrying in %.2f s", exc.strerror or exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = 0.01
            for _ in accepted:
                self.opened()
            results = await asyncio.gather(*(loop.connect_accepted_socket(factory, conn) for conn in accepted),
                                           return_exceptions=True)
            for conn, result in zip(accepted, results, strict=True):
                if isinstance(result, BaseException):  # the peer left before its transport was made, or a bug
                    log.warning("could not serve an accepted connection: %r", result)
                    conn.close()
                    self.closed()


def listen(host: str, port: int, *, backlog: int, reuse_port: bool) -> socket.socket:
    """A non-blocking listening TCP socket, set up as asyncio's create_server sets one up."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class GatedServer:
    """What an aiohttp site keeps in `_server` (it reads `sockets` and calls `close`): one listening
    socket served by `ConnectionGate.accept_loop`."""

    def __init__(self, sock: socket.socket, gate: ConnectionGate, factory: Callable[[], asyncio.Protocol]) -> None:
        self.sockets = [sock]
        self._task = asyncio.get_running_loop().create_task(gate.accept_loop(sock, factory))

    def close(self) -> None:
        # The socket closes once the accept loop has let go of it (its reader unregistered).
        self._task.add_done_callback(self._close_sockets)
        self._task.cancel()

    def _close_sockets(self, _task: asyncio.Task[None]) -> None:
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class GatedSite(web.TCPSite):
    """aiohttp's TCP site, accepting through the runner's `ConnectionGate` (livesale.web.Runner makes
    it, as `server.gate`) when there is one, else as aiohttp does."""

    def factory(self) -> Callable[[], asyncio.Protocol]:
        assert self._runner.server is not None
        return self._runner.server  # type: ignore[return-value]

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner (what TCPSite.start does first)
        gate: ConnectionGate | None = getattr(self._runner.server, "gate", None)
        if gate is None:
            server = await asyncio.get_running_loop().create_server(
                self.factory(), self._host, self._port, backlog=self._backlog,
                reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            )
            self._server = server
            self._bound_port = server.sockets[0].getsockname()[1]
            return
        assert self._host is not None
        sock = listen(self._host, self._port, backlog=self._backlog, reuse_port=bool(self._reuse_port))
        self._server = GatedServer(sock, gate, self.factory())  # type: ignore[assignment]
        self._bound_port = sock.getsockname()[1]

    async def stop(self) -> None:
        server = self._server
        await super().stop()
        if isinstance(server, GatedServer):
            await server.wait_closed()  # the port is free when stop returns


def release(transport: Any, *, abnormal: bool = False) -> None:
    """Drop a closed WebSocket's transport if the peer left data unsent, or did not answer the close
    (`abnormal`: aiohttp's close code 1006, also after a missed heartbeat): `transport.close()` (what
    aiohttp calls) keeps the socket until that data is written, forever for a peer that never reads,
    and the kernel keeps what it holds for such a peer after the descriptor is gone."""
    if transport is not None and transport.is_closing() and (abnormal or transport.get_write_buffer_size()):
        drop(transport)


def drop(transport: Any) -> None:
    """Abort `transport` with a reset (SO_LINGER 0): the kernel discards what the peer left unread
    too, where a plain close would keep it, and the socket, while it tries to deliver it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ClientFrames:
    """Follows the frame boundaries of a client's WebSocket byte stream (RFC 6455 §5.2) and reports
    the first frame sent without a mask. Only the headers are read; payloads are skipped."""

    __slots__ = ("_skip", "_head")

    def __init__(self) -> None:
        self._skip = 0  # payload bytes of the current frame still to come
        self._head = b""  # the start of a frame header split across reads

    def feed(self, data: bytes) -> bool:
        """False once an unmasked frame is seen."""
        if self._skip >= len(data):
            self._skip -= len(data)
            return True
        buf = self._head + data[self._skip :]
        self._head, self._skip = b"", 0
        pos, end = 0, len(buf)
        while pos < end:
            if end - pos < 2:
                self._head = buf[pos:]
                return True
            second = buf[pos + 1]
            if not second & 0x80:
                return False
            length = second & 0x7F
            size = 6 if length < 126 else 8 if length == 126 else 14
            if end - pos < size:
                self._head = buf[pos:]
                return True
            if length == 126:
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            pos += size + length
        self._skip = pos - end
        return True
