"""Real aiortc peers for the media tests: a publisher that sends a recognisable picture the way OBS
offers it (no ICE candidates in the offer), and viewers that decode what WHEP sends them."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from dataclasses import dataclass, field

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

from live.media.ice import gather_on

LOOPBACK = ("127.0.0.1",)
WIDTH, HEIGHT = 320, 240
# The picture: left half red, right half blue (BT.601 studio-range YUV).
LEFT_YUV = (81, 90, 240)
RIGHT_YUV = (41, 240, 110)


def pattern_frame(pts: int, time_base: fractions.Fraction) -> av.VideoFrame:
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for i, plane in enumerate(frame.planes):
        w = WIDTH if i == 0 else WIDTH // 2
        rows = HEIGHT if i == 0 else HEIGHT // 2
        row = bytes([LEFT_YUV[i]]) * (w // 2) + bytes([RIGHT_YUV[i]]) * (w - w // 2)
        row += b"\0" * (plane.line_size - w)
        plane.update(row * rows)
    frame.pts, frame.time_base = pts, time_base
    return frame


class PatternTrack(VideoStreamTrack):
    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
        pts, time_base = await self.next_timestamp()
        return pattern_frame(pts, time_base)


def sample(frame: av.VideoFrame) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(Y, U, V) at the middle of the left and of the right half of a decoded frame."""
    frame = frame.reformat(format="yuv420p")
    out = []
    for fx in (0.25, 0.75):
        yuv = []
        for i, plane in enumerate(frame.planes):
            scale = 1 if i == 0 else 2
            x, y = int(frame.width * fx) // scale, frame.height // 2 // scale
            yuv.append(bytes(plane)[y * plane.line_size + x])
        out.append(tuple(yuv))
    return out[0], out[1]  # type: ignore[return-value]


def looks_like_pattern(frame: av.VideoFrame, tolerance: int = 24) -> bool:
    left, right = sample(frame)
    return all(abs(a - b) <= tolerance for a, b in zip(left + right, LEFT_YUV + RIGHT_YUV, strict=True))


def strip_candidates(sdp: str) -> str:
    """The offer as OBS posts it: no candidates, no end-of-candidates (it gathers after our 201)."""
    return "".join(line + "\r\n" for line in sdp.splitlines()
                   if not line.startswith(("a=candidate", "a=end-of-candidates")))


@dataclass
class Peer:
    pc: RTCPeerConnection
    location: str = ""
    frames: list[av.VideoFrame] = field(default_factory=list)
    matching: int = 0
    audio_frames: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.pc.close()


async def _post(http: aiohttp.ClientSession, url: str, offer: str, token: str | None) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = await http.post(url, data=offer.encode(), headers=headers)
    await resp.read()
    return resp


async def publisher(http: aiohttp.ClientSession, base: str, stream_id: str, token: str | None,
                    *, expect: int = 201) -> tuple[Peer, aiohttp.ClientResponse]:
    """An OBS-like publisher: H.264 video (the pattern) and audio, offer without candidates."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(PatternTrack(), direction="sendonly")
    video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == "H264"])
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await gather_on(pc, LOOPBACK)
    await pc.setLocalDescription(await pc.createOffer())
    resp = await _post(http, f"{base}/whip/{stream_id}", strip_candidates(pc.localDescription.sdp), token)
    peer = Peer(pc)
    if resp.status == expect == 201:
        peer.location = resp.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
    return peer, resp


async def viewer(http: aiohttp.ClientSession, base: str, stream_id: str,
                 *, expect: int = 201) -> tuple[Peer, aiohttp.ClientResponse]:
    """A WHEP viewer that decodes the video it gets and counts the frames showing the pattern."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    peer = Peer(pc)

    @pc.on("track")
    def on_track(track: object) -> None:
        if getattr(track, "kind", "") == "video":
            peer.tasks.append(asyncio.create_task(_watch(peer, track)))
        else:
            peer.tasks.append(asyncio.create_task(_listen(peer, track)))

    await gather_on(pc, LOOPBACK)
    await pc.setLocalDescription(await pc.createOffer())
    resp = await _post(http, f"{base}/whep/{stream_id}", pc.localDescription.sdp, None)
    if resp.status == expect == 201:
        peer.location = resp.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
    return peer, resp


async def _listen(peer: Peer, track: object) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()  # type: ignore[attr-defined]
            peer.audio_frames += 1


async def _watch(peer: Peer, track: object) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()  # type: ignore[attr-defined]
            peer.frames.append(frame)
            del peer.frames[:-3]
            if looks_like_pattern(frame):
                peer.matching += 1
    peer.ended.set()
