"""`GET /ws/streams/{id}?token=&since=`: the viewer socket (docs/design.md "WebSocket").

The socket is always accepted first; bad tokens and unknown streams are then closed with 4501 and
4504, because browsers cannot read the status of a refused handshake.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from livesale.bus import meta_key, now_ms
from livesale.codes import CloseCode, ErrorCode
from livesale.errors import Unauthorized
from livesale.limits import release
from livesale.redis_client import REDIS_DOWN
from monitoring import metrics as m
from realtime import keys, protocol, snapshot, state
from realtime.conn import CLOSE_HANDSHAKE_S, Conn
from realtime.hub import REDIS_UNUSABLE, Hub, raise_unless_refused
from realtime.limits import FloodGuard, SocketCaps
from realtime.protocol import Comment, Like, Ping, ProtocolError

log = logging.getLogger("livesale.realtime")

HUB = web.AppKey("realtime_hub", Hub)
SOCKET_CAPS = web.AppKey("realtime_socket_caps", SocketCaps)


def _since(raw: str | None) -> int | None:
    """A `since` that is not a non-negative integer is ignored: the viewer gets a snapshot."""
    # isascii: str.isdigit() also holds for "²" (int() refuses it) and "١" (int() reads it as 1).
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)


async def _reject(ws: web.WebSocketResponse, code: CloseCode, message: str) -> web.WebSocketResponse:
    if m.ENABLED:
        m.WS_CLOSES.labels(str(int(code))).inc()
    await ws.close(code=int(code), message=message.encode())
    return ws


async def ws_handler(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    svc, cfg = hub.svc, hub.cfg
    stream_id = request.match_info["id"]
    # aiohttp closes with 1009 a frame of max_msg_size bytes or more; docs/design.md closes only frames over
    # 4096 bytes (tests/test_realtime_contract.py holds both edges, should aiohttp's bound change).
    ws = web.WebSocketResponse(heartbeat=cfg.heartbeat_s, max_msg_size=protocol.MAX_FRAME_BYTES + 1,
                               compress=False, decode_text=False, timeout=CLOSE_HANDSHAKE_S)
    await ws.prepare(request)
    user = None
    token = request.query.get("token")
    if token:
        try:
            user = svc.auth.verify(token)
        except Unauthorized as exc:
            return await _reject(ws, CloseCode.UNAUTHORIZED, exc.message)
    if len(stream_id) > 64:
        return await _reject(ws, CloseCode.NO_SUCH_STREAM, "no such stream")
    caps, uid, ip = request.app[SOCKET_CAPS], user.id if user is not None else None, request.remote
    over = caps.admit(uid, ip)
    if over is not None:
        if m.ENABLED:
            m.LIMIT_REFUSALS.labels(over).inc()
        return await _reject(ws, CloseCode.TOO_MANY_CONNECTIONS, "too many connections; reconnect with backoff")
    transport = request.transport
    assert transport is not None
    conn = Conn(ws, transport, user, stream_id, cfg.outbound_bytes, cfg.slow_close_s, hub.close_conn)  # type: ignore[arg-type]
    failed = False
    try:
        try:
            # Before joining: a room for a made-up id would SUBSCRIBE and report viewers to Redis.
            host, status = await svc.redis.hmget(meta_key(stream_id), "host", "status")  # type: ignore[misc]
            if host is None:
                return await _reject(ws, CloseCode.NO_SUCH_STREAM, "no such stream")
            await hub.join(conn, counted=user is None or user.id != host.decode(), live=status == b"live")
            async with hub.connecting:  # a reconnect storm must not take every Redis connection at once
                found = await _first_frames(hub, conn, _since(request.query.get("since")))
        except (*REDIS_DOWN, TimeoutError):
            if m.ENABLED:
                m.REDIS_ERRORS.labels("ws_connect").inc()
            return await _reject(ws, CloseCode.SERVER_RESTARTING, "redis unavailable; reconnect with backoff")
        if not found:
            return await _reject(ws, CloseCode.NO_SUCH_STREAM, "no such stream")
        await _receive(hub, conn, ws)
    except Exception:  # noqa: BLE001 - a bug of ours must not leave the viewer on a silent open socket
        log.exception("websocket on stream %s failed", stream_id)
        failed = True
    finally:
        caps.release(uid, ip)
        hub.leave(conn)
        conn.closed = True
        if conn.writer is not None:
            conn.writer.cancel()
    if failed and conn.closing is None and not ws.closed:
        return await _reject(ws, CloseCode.INTERNAL_ERROR, "internal error; reconnect with backoff")
    if conn.closing is not None:
        await asyncio.shield(conn.closing)
    elif not ws.closed:
        await ws.close()
    # A close aiohttp made itself (a missed heartbeat, 1009) may leave data unsent to a peer that
    # does not read: dropped here, as Conn.aclose drops it after the closes we make.
    release(transport, abnormal=ws.close_code == WSCloseCode.ABNORMAL_CLOSURE)
    return ws


async def _first_frames(hub: Hub, conn: Conn, since: int | None) -> bool:
    """Snapshot, or replay for `since`; False for an unknown stream. Runs after joining the room, so
    nothing published meanwhile is lost (the connection holds it until `start`)."""
    svc, sid = hub.svc, conn.stream_id
    seq = await snapshot.current_seq(svc, sid)
    source = await hub.snapshot_source(svc, sid)
    if source is None:
        return False
    recovered = None
    if since is not None:
        events = await snapshot.missed(svc, sid, since, seq)
        if events is not None:
            counters = await state.stream_counters(svc.redis, sid)
            conn.send_now(protocol.batch(events + snapshot.state_events(source, counters)))
            conn.start(seq)
            return True
        recovered = False
    snap = await snapshot.snapshot(svc, source, sid, seq, hub.cfg.recent_comments, recovered=recovered)
    conn.send_now(orjson.dumps(snap))
    conn.start(seq)
    return True


async def _receive(hub: Hub, conn: Conn, ws: web.WebSocketResponse) -> None:
    flood: FloodGuard | None = None  # made on the first bad frame: most viewers never send one
    while not conn.closed:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            err = await _command(hub, conn, protocol.parse(msg.data))
        elif msg.type is WSMsgType.BINARY:
            err = ProtocolError(ErrorCode.INVALID_FRAME, "frames must be text")
        else:  # close, closing, error (aiohttp already closed an oversized frame with 1009)
            if msg.type is WSMsgType.ERROR and m.ENABLED and ws.close_code is not None:
                m.WS_CLOSES.labels(str(ws.close_code)).inc()
            return
        if err is None:
            continue
        conn.send_now(protocol.encode_error(err.code, err.message))
        if m.ENABLED:
            m.WS_CLIENT_ERRORS.labels(str(err.code)).inc()
        if err.code not in protocol.INVALID_FRAME_CODES:
            continue
        if flood is None:
            flood = FloodGuard()
        if flood.hit(time.monotonic()):
            conn.close(CloseCode.RATE_LIMITED)
            return


async def _command(hub: Hub, conn: Conn, cmd: protocol.Command | ProtocolError) -> ProtocolError | None:
    if isinstance(cmd, ProtocolError):
        return cmd
    if isinstance(cmd, Ping):
        conn.send_now(protocol.PONG)
        return None
    if conn.user is None:
        return ProtocolError(ErrorCode.UNAUTHENTICATED, "anonymous viewers may watch, not write")
    if conn.user.exp <= time.time():
        # The token was checked when the socket opened; once it expires the viewer keeps watching
        # (as an anonymous viewer may) but no longer writes under that identity.
        return ProtocolError(ErrorCode.UNAUTHENTICATED, "your token has expired; reconnect with a fresh one to write")
    if isinstance(cmd, Like):
        hub.likes.add(conn.stream_id, hub.like_cap.take(conn.user.id, cmd.count, time.monotonic()))
        return None
    assert isinstance(cmd, Comment)
    return await _comment(hub, conn, cmd)


async def _comment(hub: Hub, conn: Conn, cmd: Comment) -> ProtocolError | None:
    err = hub.words.check(cmd.text)
    if err is not None:
        return err
    uid = conn.user.id
    try:
        if await hub.svc.redis.exists(keys.muted(conn.stream_id, uid)):
            return ProtocolError(ErrorCode.MUTED, "you are muted")
        if not hub.comment_limit.allow(uid, time.monotonic()):
            return ProtocolError(ErrorCode.RATE_LIMITED, "too many comments; slow down")
        await hub.svc.bus.publish_log(conn.stream_id, {
            "type": "comment", "id": secrets.token_hex(8), "user": uid, "text": cmd.text, "ts": now_ms()})
        hub.note_comment(conn.stream_id)
        if m.ENABLED:
            m.WS_PUBLISHED.labels("comment").inc()
    except REDIS_UNUSABLE as exc:
        raise_unless_refused(exc)
        if m.ENABLED:
            m.REDIS_ERRORS.labels("ws_comment").inc()
        return ProtocolError(ErrorCode.UNAVAILABLE, "comments are unavailable; try again")
    return None
