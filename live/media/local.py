"""The media in this process, with aiortc: WHIP publishers, WHEP viewers, one Relay per stream.

Session lifecycle (CONTRIBUTING.md #2): CONNECTING (answered, ICE/DTLS under way) -> CONNECTED -> CLOSED. A
session that does not connect within `connect_timeout_s`, whose peer connection fails, or that is
DELETEd, closes; a publisher's close closes its stream's viewers. One publisher per stream across
processes: its claim (live/media/claims.py) is refreshed every `claims.TICK_S`; the same
tick closes the media of streams another process ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from live.media import claims, ice, rtpout, sdp
from live.media.backend import Answer, Kind, MediaBackend
from live.media.config import MediaConfig
from live.media.relay import AudioViewerTrack, Relay, ViewerTrack
from live.media.rtpout import RtpOut
from livesale.codes import ErrorCode
from livesale.errors import BadRequest, Conflict, NotFound, Unavailable
from livesale.redis_client import REDIS_DOWN
from livesale.services import Services
from livesale.tasks import pause
from monitoring import metrics as m

log = logging.getLogger("livesale.media")



class SessionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(eq=False)
class Session:
    id: str
    kind: Kind
    stream_id: str
    pc: RTCPeerConnection
    track: ViewerTrack | None = None
    audio: AudioViewerTrack | None = None
    state: SessionState = SessionState.CONNECTING
    claimed: bool = False  # a publisher whose Redis claim is made (and kept by _keep_claims)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class LocalBackend(MediaBackend):
    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self.proc = secrets.token_hex(8)
        self._svc: Services | None = None
        self._sessions: dict[str, Session] = {}
        self._relays: dict[str, Relay] = {}
        self._publisher: dict[str, str] = {}  # stream -> its publisher's session id (claimed first)
        self._viewer_slots = 0  # viewer sessions, counted from the moment a POST is admitted
        self._tick: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def svc(self) -> Services:
        assert self._svc is not None, "LocalBackend.start() first"
        return self._svc

    async def start(self, svc: Services) -> None:
        if self.config.addresses:
            ice.check_supported(self.config.addresses)
        rtpout.check_supported()
        self._svc = svc
        self._tick = asyncio.create_task(self._keep_claims(), name="media-claims")

    def counts(self) -> dict[str, int]:
        return {
            "publishers": len(self._publisher),
            "viewers": self._viewer_slots,
            "peer_connections": len(self._sessions),
        }

    # --- sessions -------------------------------------------------------------------------------

    def _peer(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=ice.ice_servers(self.config.ice_servers)))

    async def _answer(self, pc: RTCPeerConnection, offer: str) -> str:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BadRequest(f"the offer could not be used: {exc}") from exc
        await ice.gather_on(pc, self.config.addresses)
        # OBS sends its offer without candidates and never PATCHes: setLocalDescription gathers fully,
        # so the answer carries all of ours.
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def _register(self, kind: Kind, stream_id: str, pc: RTCPeerConnection) -> Session:
        session = Session(secrets.token_urlsafe(18), kind, stream_id, pc)
        self._sessions[session.id] = session
        m.MEDIA_SESSIONS.labels(kind.value).inc()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and session.state is SessionState.CONNECTING:
                session.state = SessionState.CONNECTED
                relay = self._relays.get(stream_id)
                if relay is not None:
                    for track in (session.track, session.audio):
                        if track is not None:
                            relay.add_viewer(track)
            elif pc.connectionState in ("failed", "closed"):
                session.spawn(self._close(session), f"media-close-{session.id}")

        session.spawn(self._connect_deadline(session), f"media-deadline-{session.id}")
        return session

    async def _connect_deadline(self, session: Session) -> None:
        await asyncio.sleep(self.config.connect_timeout_s)
        if session.state is SessionState.CONNECTING:
            log.info("%s session of %s did not connect in %.0f s", session.kind, session.stream_id,
                     self.config.connect_timeout_s)
            await asyncio.shield(self._close(session))

    async def _close(self, session: Session) -> None:
        """Close a session once (idempotent); a publisher takes its stream's viewers with it."""
        if session.state is SessionState.CLOSED:
            await session.closed.wait()
            return
        session.state = SessionState.CLOSED
        try:
            current = asyncio.current_task()
            for task in list(session.tasks):
                if task is not current:
                    task.cancel()
            if session.kind is Kind.WHEP:
                relay = self._relays.get(session.stream_id)
                for track in (session.track, session.audio):
                    if relay is not None and track is not None:
                        relay.remove_viewer(track)
                self._viewer_slots -= 1
                m.MEDIA_VIEWERS.dec()
            await session.pc.close()
            if session.kind is Kind.WHIP:
                await self._release(session)
        finally:
            self._sessions.pop(session.id, None)
            session.closed.set()

    async def _release(self, session: Session) -> None:
        stream_id = session.stream_id
        relay = self._relays.pop(stream_id, None)
        viewers = [s for s in self._sessions.values() if s.kind is Kind.WHEP and s.stream_id == stream_id]
        await asyncio.gather(*(self._close(v) for v in viewers))
        if relay is not None:
            await relay.close()
        if self._publisher.get(stream_id) == session.id:
            del self._publisher[stream_id]
            m.MEDIA_PUBLISHERS.dec()
        try:
            await self._claim("release", stream_id, session.id)
        except REDIS_DOWN as exc:  # the claim expires by itself
            log.warning("could not release the publisher claim of %s: %r", stream_id, exc)

    async def _claim(self, op: str, stream_id: str, session_id: str) -> bool:
        return await claims.claim(self.svc, op, stream_id, f"{self.proc}:{session_id}")

    # --- WHIP -----------------------------------------------------------------------------------

    async def publish(self, stream_id: str, offer: str) -> Answer:
        if self._closing:
            raise Unavailable("the server is shutting down")
        if stream_id in self._publisher:
            raise Conflict("the stream already has a publisher", code=ErrorCode.PUBLISHER_EXISTS)
        pc = self._peer()
        session = self._register(Kind.WHIP, stream_id, pc)
        self._publisher[stream_id] = session.id  # claimed here before any await: one POST wins
        m.MEDIA_PUBLISHERS.inc()
        relay = self._relays[stream_id] = Relay(stream_id, self.config, on_encode=_encoded)
        video_taken = False

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            nonlocal video_taken
            feed = relay if track.kind == "audio" or not video_taken else None
            video_taken = video_taken or (feed is not None and track.kind == "video")
            session.spawn(_drain(track, feed), f"media-drain-{track.kind}-{session.id}")

        try:
            answer = await self._answer(pc, offer)
            # Across processes, in one atomic step with the `video` "live" event (released by _close).
            if not await self._claim("claim", stream_id, session.id):
                raise Conflict("the stream has a publisher on another server process",
                               code=ErrorCode.PUBLISHER_EXISTS)
            session.claimed = True
        except BaseException:
            await asyncio.shield(self._close(session))
            raise
        return Answer(session.id, answer)

    # --- WHEP -----------------------------------------------------------------------------------

    async def play(self, stream_id: str, offer: str, codec: str) -> Answer:
        if self._closing:
            raise Unavailable("the server is shutting down")
        if stream_id not in self._relays:
            raise Conflict("nobody is publishing this stream (on this server process)",
                           code=ErrorCode.NO_PUBLISHER, retry_after=self.config.retry_after_s)
        if self._viewer_slots >= self.config.whep_max:
            raise Unavailable(f"this server process serves {self.config.whep_max} viewers at most",
                              self.config.retry_after_s, code=ErrorCode.AT_CAPACITY)
        self._viewer_slots += 1  # admitted before any await: concurrent POSTs never pass the cap
        m.MEDIA_VIEWERS.inc()
        pc = self._peer()
        session = self._register(Kind.WHEP, stream_id, pc)
        try:
            session.track = ViewerTrack(codec)
            # Set before the answer, so the answer says sendonly. The stream's fan-out sends its RTP.
            session.track.out = RtpOut(pc.addTrack(session.track), lambda: self._keyframe_for(stream_id))
            if sdp.receives_audio(sdp.parse(offer.encode())):
                session.audio = AudioViewerTrack(self.config.viewer_queue)
                pc.addTrack(session.audio)
            answer = await self._answer(pc, sdp.prefer(sdp.prefer(offer, codec), "OPUS", kind="audio"))
            chosen = sdp.answer_codec(answer)
            if chosen not in sdp.VIDEO_CODECS:
                raise BadRequest("no video codec in common with the offer")
            session.track.codec = chosen
            if session.audio is not None and sdp.answer_codec(answer, kind="audio") != "OPUS":
                session.audio = None  # the viewer takes no Opus: video only
            if stream_id not in self._relays:  # the publisher left while we answered
                raise Conflict("nobody is publishing this stream", code=ErrorCode.NO_PUBLISHER,
                               retry_after=self.config.retry_after_s)
        except BaseException:
            await asyncio.shield(self._close(session))
            raise
        return Answer(session.id, answer)

    def _keyframe_for(self, stream_id: str) -> None:
        relay = self._relays.get(stream_id)
        if relay is not None:
            relay.request_keyframe()

    # --- ending ---------------------------------------------------------------------------------

    async def end_session(self, kind: Kind, stream_id: str, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is None or session.kind is not kind or session.stream_id != stream_id:
            raise NotFound("no such session (it ended, or lives on another server process)")
        await self._close(session)

    async def end_stream(self, stream_id: str) -> None:
        sid = self._publisher.get(stream_id)
        session = self._sessions.get(sid) if sid else None
        if session is not None:
            await self._close(session)

    async def close(self) -> None:
        self._closing = True
        if self._tick is not None:
            self._tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick
        publishers = [s for s in self._sessions.values() if s.kind is Kind.WHIP]
        await asyncio.gather(*(self._close(s) for s in publishers), return_exceptions=True)
        await asyncio.gather(*(self._close(s) for s in list(self._sessions.values())), return_exceptions=True)

    async def _keep_claims(self) -> None:
        """Refresh this process's publisher claims, and close the media of streams that ended (here or
        in another process) or whose claim was lost."""
        while True:
            await pause(claims.TICK_S)
            for stream_id, sid in list(self._publisher.items()):
                session = self._sessions.get(sid)
                if session is None or not session.claimed or session.state is SessionState.CLOSED:
                    continue
                try:
                    wanted = await claims.still_wanted(self.svc, stream_id, f"{self.proc}:{sid}")
                except REDIS_DOWN as exc:
                    log.warning("media claim refresh of %s failed: %r", stream_id, exc)
                    continue
                if not wanted:
                    await self._close(session)


async def _drain(track: MediaStreamTrack, relay: Relay | None) -> None:
    """Read every frame a publisher's track decodes (aiortc's receiver queue is unbounded), handing
    them to the relay; a second video track is dropped here."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if relay is not None and isinstance(frame, av.AudioFrame):
            relay.feed_audio(frame)
        elif relay is not None and isinstance(frame, av.VideoFrame):
            m.MEDIA_FRAMES.labels("received").inc()
            busy = relay.stats.frames_dropped
            relay.feed(frame)
            if relay.stats.frames_dropped != busy:
                m.MEDIA_DROPPED.labels("encoder_busy").inc()


def _encoded(codec: str, seconds: float, packets: int, sent: int) -> None:
    m.MEDIA_FRAMES.labels("encoded").inc()
    m.MEDIA_ENCODE.labels(codec).observe(seconds)
    if sent:
        m.MEDIA_FRAMES.labels("sent").inc(sent)
