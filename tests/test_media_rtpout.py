"""live/media/rtpout.py against aiortc's own sender, on real peer connections over loopback.

The same encoded frames go out through aiortc's RTCRtpSender (which packetizes them itself) on one
connection and through the stream fan-out's path (Packetizer once, RtpOut per viewer) on another. The
receiving peers decrypt and parse every RTP packet with aiortc; what they get must be the same but for
the random sequence-number, timestamp and SSRC origins. NACKs and PLIs go through aiortc's RTCP path
to RtpOut's retransmission and keyframe request.
"""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, clock
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket

from live.media.config import MediaConfig
from live.media.ice import gather_on
from live.media.relay import Pushed, VideoEncoder, ViewerTrack
from live.media.rtpout import Packetizer, RtpOut
from tests.media_peers import LOOPBACK, pattern_frame

FRAMES = 12


class PacketTrack(MediaStreamTrack):
    """Hands aiortc's sender the given packets (it only packetizes them), then nothing."""

    kind = "video"

    def __init__(self, packets: list[av.Packet]) -> None:
        super().__init__()
        self.packets = list(packets)
        self.more = asyncio.Event()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        while not self.packets:
            await self.more.wait()
        return self.packets.pop(0)


def encoded(codec: str) -> list[av.Packet]:
    enc = VideoEncoder(codec, MediaConfig(gop=6))
    tb = fractions.Fraction(1, 30)
    return [p for i in range(FRAMES) for p in enc.encode(pattern_frame(i, tb), i, False)]


async def connect(track: MediaStreamTrack, codec: str, on_sender: Any = None
                  ) -> tuple[RTCPeerConnection, RTCPeerConnection, RTCRtpSender, Any, list[RtpPacket]]:
    """A sending and a receiving peer on loopback; the receiver records every RTP packet it gets.
    `on_sender` gets the sender before negotiation (where live/media/local.py attaches RtpOut)."""
    tx = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    rx = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sender = tx.addTrack(track)
    if on_sender is not None:
        on_sender(sender)
    got: list[RtpPacket] = []
    transceiver = rx.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                     if c.name in (codec, "rtx")])
    receiver = transceiver.receiver

    async def record(packet: RtpPacket, arrival_time_ms: int) -> None:
        got.append(packet)

    receiver._handle_rtp_packet = record  # type: ignore[method-assign]
    await gather_on(rx, LOOPBACK)
    await rx.setLocalDescription(await rx.createOffer())
    await tx.setRemoteDescription(rx.localDescription)
    await gather_on(tx, LOOPBACK)
    await tx.setLocalDescription(await tx.createAnswer())
    await rx.setRemoteDescription(tx.localDescription)
    await wait_for(lambda: tx.connectionState == "connected" and rx.connectionState == "connected")
    return tx, rx, sender, receiver, got


async def wait_for(cond: Any, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def frames_of(packets: list[RtpPacket], pt: int) -> list[dict[str, Any]]:
    """The received video packets grouped into frames by timestamp, relative to the first."""
    media = [p for p in packets if p.payload_type == pt]
    out: list[dict[str, Any]] = []
    for p in media:
        if not out or out[-1]["ts"] != p.timestamp:
            out.append({"ts": p.timestamp, "payloads": [], "markers": [], "seqs": []})
        out[-1]["payloads"].append(p.payload)
        out[-1]["markers"].append(p.marker)
        out[-1]["seqs"].append(p.sequence_number)
    t0, s0 = media[0].timestamp, media[0].sequence_number
    for f in out:
        f["ts"] = (f["ts"] - t0) % (1 << 32)
        f["seqs"] = [(s - s0) % (1 << 16) for s in f["seqs"]]
    return out


@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_fan_out_path_sends_what_aiortcs_sender_sends(codec: str) -> None:
    packets = encoded(codec)
    ref_tx, ref_rx, ref_sender, _, ref_got = await connect(PacketTrack(packets), codec)
    track = ViewerTrack(codec)
    pli = asyncio.Event()
    tx, rx, sender, receiver, got = await connect(track, codec, lambda s: setattr(track, "out", RtpOut(s, pli.set)))
    out = track.out
    assert out is not None
    try:
        await wait_for(lambda: out.ready)
        packetizer = Packetizer(codec)
        delivered = [track.deliver(packetizer.pack(p), clock.current_ntp_time()) for p in packets]
        assert delivered == [Pushed.SENT] * FRAMES
        total = sum(len(packetizer.pack(p).payloads) for p in packets)
        await wait_for(lambda: len(got) >= total and len(ref_got) >= total)

        pt = out._pt
        ref_pt = next(p.payload_type for p in ref_got)
        ours, theirs = frames_of(got, pt), frames_of(ref_got, ref_pt)
        if codec == "VP8":  # the VP8 descriptor's picture id starts at random: compare the rest
            for f in ours + theirs:
                f["payloads"] = [p[:1] + p[4:] for p in f["payloads"]]
        assert ours == theirs
        assert len(ours) == FRAMES
        assert all(p.ssrc == sender._ssrc for p in got)
        assert {p.extensions.mid for p in got} == {p.extensions.mid for p in ref_got} != {None}
        assert all(p.extensions.abs_send_time is not None for p in got)

        # A NACK: the packet again, over RTX, as aiortc's sender does it; a PLI asks for a keyframe.
        lost = got[3]
        before = len(got)
        await receiver._send_rtcp_nack(sender._ssrc, [lost.sequence_number])
        await wait_for(lambda: len(got) > before)
        rtx = got[before]
        assert rtx.ssrc == sender._rtx_ssrc and rtx.payload_type != pt
        assert rtx.payload == lost.sequence_number.to_bytes(2, "big") + lost.payload
        await receiver._send_rtcp_pli(sender._ssrc)
        await asyncio.wait_for(pli.wait(), 10)
    finally:
        track.finish()
        for pc in (tx, rx, ref_tx, ref_rx):
            await pc.close()
    assert not out.ready
    assert sender._RTCRtpSender__rtp_exited.is_set()  # type: ignore[attr-defined]


async def test_viewer_starts_at_a_keyframe_and_restarts_at_one_after_its_transport_went() -> None:
    packets = encoded("H264")
    keys = [p.is_keyframe for p in packets]
    assert keys[:7] == [True, False, False, False, False, False, True]
    packetizer = Packetizer("H264")
    frames = [packetizer.pack(p) for p in packets]
    track = ViewerTrack("H264")
    assert track.deliver(frames[0], clock.current_ntp_time()) is Pushed.WAITING  # no transport yet
    tx, rx, sender, _, got = await connect(track, "H264", lambda s: setattr(track, "out", RtpOut(s, lambda: None)))
    out = track.out
    assert out is not None
    try:
        await wait_for(lambda: out.ready)
        assert [track.deliver(f, clock.current_ntp_time()) for f in frames[1:4]] == [Pushed.WAITING] * 3  # mid-GOP
        assert track.deliver(frames[6], clock.current_ntp_time()) is Pushed.SENT
        assert track.deliver(frames[7], clock.current_ntp_time()) is Pushed.SENT
        await tx.close()
        assert track.deliver(frames[8], clock.current_ntp_time()) is Pushed.WAITING
        assert track.sent == 2
        await wait_for(lambda: len(got) >= len(frames[6].payloads) + len(frames[7].payloads))
    finally:
        track.finish()
        await tx.close()
        await rx.close()
