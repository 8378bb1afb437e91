"""The media plane's pure parts: offer checks (live/media/sdp.py) and the relay's clock, encoder and
viewer queues (live/media/relay.py), without sockets."""

from __future__ import annotations

import fractions

import av
import pytest

from live.media import sdp
from live.media.config import MediaConfig
from live.media.relay import AudioEncoder, AudioViewerTrack, FrameClock, Pushed, VideoEncoder
from tests.media_peers import pattern_frame
from tests.test_media import video_offer

CHROMIUM_ORDER = ["VP8", "rtx", "H264"]


def test_parse_reads_codecs_direction_and_simulcast() -> None:
    """parse() returns each section's codecs in offer order, its direction and whether it simulcasts."""
    offer = sdp.parse(video_offer("VP8", "H264", extra="a=simulcast:send h;l\r\n").encode())
    (video,) = offer.video
    assert video.offered() == ["VP8", "H264"]
    assert video.direction == "sendonly" and video.simulcast


@pytest.mark.parametrize("body", [b"", b"hello", b"v=0\r\n", b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n",
                                  b"\xff", b"v=0\r\nnot a line\r\n", b"v=0\r\nm=video x\r\n"])
def test_parse_refuses_what_is_not_an_offer(body: bytes) -> None:
    """Anything but a complete SDP offer is SdpError (400), never another exception."""
    with pytest.raises(sdp.SdpError):
        sdp.parse(body)


def test_publish_and_play_checks() -> None:
    """WHIP needs one sending H.264/VP8 video without simulcast; WHEP gets H.264 whenever offered."""
    sdp.check_publish(sdp.parse(video_offer("H264").encode()))
    sdp.check_publish(sdp.parse(video_offer("VP8").encode()))
    for bad in (video_offer("AV1"), video_offer("H265"), video_offer("H264", direction="recvonly"),
                video_offer("H264", extra="a=rid:h send\r\n")):
        with pytest.raises(sdp.UnsupportedOffer):
            sdp.check_publish(sdp.parse(bad.encode()))
    assert sdp.check_play(sdp.parse(video_offer("VP8", "H264", direction="recvonly").encode())) == "H264"
    assert sdp.check_play(sdp.parse(video_offer("VP8", direction="recvonly").encode())) == "VP8"
    with pytest.raises(sdp.UnsupportedOffer):
        sdp.check_play(sdp.parse(video_offer("H264", direction="sendonly").encode()))


def test_prefer_moves_the_codec_first_and_answer_codec_reads_it() -> None:
    """prefer() puts H.264's payload types first on the m=video line; answer_codec() reads the first."""
    offer = video_offer("VP8", "H264", "VP9", direction="recvonly")
    moved = sdp.prefer(offer, "H264")
    assert "m=video 9 UDP/TLS/RTP/SAVPF 97 96 98\r\n" in moved
    assert moved.index("a=rtpmap:97 H264") < moved.index("a=rtpmap:96 VP8") < moved.index("a=rtpmap:98 VP9")
    assert sdp.answer_codec(moved) == "H264"
    assert sdp.answer_codec(offer) == "VP8"


def test_frame_clock_paces_to_fps_across_rtp_wraparound() -> None:
    """Slots follow the source's 90 kHz timestamps (through the 2^32 wrap); faster input is skipped."""
    clock = FrameClock(30)
    tb = fractions.Fraction(1, 90000)
    start = (1 << 32) - 6000
    slots = [clock.slot((start + i * 1500) % (1 << 32), tb, 0.0) for i in range(8)]  # 60 fps in
    assert slots == [0, None, 1, None, 2, None, 3, None]
    assert clock.slot((start + 30 * 3000) % (1 << 32), tb, 0.0) == 30


def test_one_encoder_makes_packets_with_a_keyframe_every_gop() -> None:
    enc = VideoEncoder("H264", MediaConfig(gop=5))
    packets = [p for i in range(12) for p in enc.encode(pattern_frame(i, fractions.Fraction(1, 30)), i, False)]
    assert [p.is_keyframe for p in packets][:6] == [True, False, False, False, False, True]
    assert all(p.time_base == fractions.Fraction(1, 30) for p in packets)
    vp8 = VideoEncoder("VP8", MediaConfig(gop=5))
    assert vp8.encode(pattern_frame(0, fractions.Fraction(1, 30)), 0, False)[0].is_keyframe


def test_a_listener_behind_drops_its_backlog() -> None:
    """A full audio queue drops its backlog rather than play stale sound."""
    enc = AudioEncoder()
    frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate, frame.pts, frame.time_base = 48000, 0, fractions.Fraction(1, 48000)
    packets = [p for i in range(6) for p in enc.encode(frame)]
    assert len(packets) >= 4
    late = AudioViewerTrack(max_packets=3)
    assert [late.push(p) for p in packets[:4]] == [Pushed.SENT] * 4
    assert late.dropped == 3 and late.sent == 4


def test_addresses_setting_is_checked_at_start() -> None:
    """LIVESALE_MEDIA_ADDRESSES must name addresses this machine can bind (else offers get no candidate)."""
    from live.media.ice import check_supported

    check_supported(("127.0.0.1",))
    with pytest.raises(ValueError, match="198.51.100.7"):
        check_supported(("127.0.0.1", "198.51.100.7"))
