"""The reference for bench/media.py: aiortc's MediaRelay pattern, the way aiortc's own examples relay
a publisher to viewers. Each viewer's sender gets decoded frames from `MediaRelay.subscribe()` and runs
its own H.264 encoder: one full encode per viewer. Same WHIP/WHEP surface as livesale (no auth, no
stream checks), same ICE setting, and the encoders at livesale's preset and rate (ultrafast, Baseline,
1.5 Mbit/s) so the ratio measures the pattern, not the preset.

    python bench/media_ref.py --port 8090 [--preset ultrafast]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import secrets
import sys
from pathlib import Path

import av
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, rtcrtpsender
from aiortc.codecs import h264
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from live.media.ice import gather_on  # noqa: E402

PRESET = "ultrafast"
BITRATE = 1_500_000


class PresetH264Encoder(h264.H264Encoder):
    """aiortc's H.264 encoder with livesale's preset and a fixed rate (aiortc's default preset is x264's
    `medium`, about 6x the CPU; its default rate follows REMB from 1 Mbit/s)."""

    def __init__(self) -> None:
        super().__init__()
        self.target_bitrate = BITRATE

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool):  # type: ignore[no-untyped-def]
        if self.codec is None or (frame.width, frame.height) != (self.codec.width, self.codec.height):
            codec = av.CodecContext.create("libx264", "w")
            codec.width, codec.height = frame.width, frame.height
            codec.bit_rate = BITRATE
            codec.pix_fmt = "yuv420p"
            codec.framerate = fractions.Fraction(h264.MAX_FRAME_RATE, 1)
            codec.time_base = fractions.Fraction(1, h264.MAX_FRAME_RATE)
            codec.options = {"level": "31", "tune": "zerolatency", "preset": PRESET}
            codec.profile = "Baseline"
            self.codec, self.buffer_data, self.buffer_pts = codec, b"", None
        self.target_bitrate = BITRATE  # REMB may have moved it; a change > 10% would reopen the codec
        return super()._encode_frame(frame, force_keyframe)


def get_encoder(codec):  # type: ignore[no-untyped-def]
    return PresetH264Encoder() if codec.mimeType.lower() == "video/h264" else _aiortc_get_encoder(codec)


_aiortc_get_encoder = rtcrtpsender.get_encoder
rtcrtpsender.get_encoder = get_encoder  # this reference process only

relay = MediaRelay()
source: dict[str, MediaStreamTrack] = {}
pcs: set[RTCPeerConnection] = set()


async def answer(pc: RTCPeerConnection, offer: str) -> str:
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await gather_on(pc, ("127.0.0.1",))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


async def drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass


async def whip(request: web.Request) -> web.Response:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.add(pc)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            source["video"] = track
        else:
            asyncio.ensure_future(drain(track))

    sdp = await answer(pc, await request.text())
    return web.Response(status=201, text=sdp, content_type="application/sdp",
                        headers={"Location": f"/whip/x/{secrets.token_hex(8)}"})


async def whep(request: web.Request) -> web.Response:
    if "video" not in source:
        return web.Response(status=409)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.add(pc)
    pc.addTrack(relay.subscribe(source["video"]))  # one encoder per viewer: the pattern measured
    sdp = await answer(pc, await request.text())
    return web.Response(status=201, text=sdp, content_type="application/sdp",
                        headers={"Location": f"/whep/x/{secrets.token_hex(8)}"})


async def on_shutdown(_app: web.Application) -> None:
    await asyncio.gather(*(pc.close() for pc in pcs))


def main() -> None:
    global PRESET
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--preset", default=PRESET)
    args = ap.parse_args()
    PRESET = args.preset
    app = web.Application()
    app.router.add_post("/whip/{stream}", whip)
    app.router.add_post("/whep/{stream}", whep)
    app.router.add_get("/healthz", lambda _r: web.Response(text="ok"))
    app.on_shutdown.append(on_shutdown)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
