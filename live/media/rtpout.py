"""A viewer's video RTP, sent by the stream's fan-out itself (docs/media.md, "One encode per stream").

aiortc's RTCRtpSender runs a task per viewer that packetizes every frame on its own and sends each
RTP packet down four coroutine levels (DTLS transport, ICE transport, ICE connection, socket). Every
viewer of one codec gets the same packets, so here a stream packetizes each encoded frame once per
codec (`Packetizer`, aiortc's own packetizers) and `RtpOut.send` puts it on each viewer's wire in one
synchronous pass: one header per frame from aiortc's `RtpPacket.serialize`, with the sequence number
and marker set per packet, SRTP with the viewer's own session, and `sendto` on the socket of the
nominated ICE pair. Everything else stays aiortc's: negotiation, RTCP (sender and receiver reports),
NACK retransmissions (from the history kept here, resent through aiortc's transport) and PLI (which
asks the stream's encoder for a keyframe).

This reads internals of aiortc 1.16 and aioice 0.13 (pinned in pyproject.toml): RTCRtpSender's
name-mangled RTP task events, header-extension map, RTX fields and sender-report counters,
RTCDtlsTransport's SRTP session, and the ICE connection's nominated pair. `check_supported` fails at
start-up if they moved. tests/test_media_units.py checks the bytes against aiortc's own sender.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from aioice import Connection
from aioice.ice import StunProtocol
from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket, wrap_rtx
from aiortc.utils import random32

_MIME = {"H264": "video/H264", "VP8": "video/VP8"}
_S = "_RTCRtpSender__"  # RTCRtpSender's private fields, as Python mangles them
_SENDER_FIELDS = ("rtp_started", "rtp_exited", "rtp_header_extensions_map", "mid", "rtx_payload_type",
                  "rtx_sequence_number", "ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count")


@dataclass(frozen=True, slots=True)
class Packed:
    """One encoded frame as RTP payloads (timestamp in the codec's 90 kHz clock, from 0)."""

    payloads: list[bytes]
    timestamp: int
    keyframe: bool
    size: int  # bytes of payload in all


class Packetizer:
    """A stream's packetizer for one codec: aiortc's, run once per frame for every viewer."""

    def __init__(self, codec: str) -> None:
        self._encoder = get_encoder(RTCRtpCodecParameters(mimeType=_MIME[codec], clockRate=90000, payloadType=96))

    def pack(self, packet: av.Packet) -> Packed:
        payloads, timestamp = self._encoder.pack(packet)
        return Packed(payloads, timestamp, bool(packet.is_keyframe), sum(map(len, payloads)))


def check_supported() -> None:
    """At start-up: aiortc and aioice still have the fields RtpOut uses."""
    sender_fields = {f"{_S}{f}" for f in _SENDER_FIELDS}
    init = RTCRtpSender.__init__.__code__.co_names
    missing = [f for f in sender_fields if f not in init]
    if "_tx_srtp" not in RTCDtlsTransport.__init__.__code__.co_names:
        missing.append("RTCDtlsTransport._tx_srtp")
    if not hasattr(Connection(ice_controlling=False), "_nominated"):
        missing.append("aioice Connection._nominated")
    if missing:
        raise RuntimeError(f"live/media/rtpout.py needs aiortc 1.16 / aioice 0.13 internals: {sorted(missing)}")


class RtpOut:
    """The RTP side of one viewer's video sender. aiortc starts its RTP task once the answer is set;
    this replaces that task with one that only marks the sender ready, and `send` does the sending."""

    def __init__(self, sender: RTCRtpSender, on_keyframe_request: Callable[[], None]) -> None:
        self.sender = sender
        self.ready = False
        self.packets = 0
        self._history: dict[int, bytes] = {}
        self._ext_map: Any = None
        self._pt = 0
        self._seq = random_sequence_number()
        self._ts_origin = random32()
        self._mid: str | None = None
        self._stopped = asyncio.Event()
        self._relayed: set[asyncio.Task[None]] = set()
        # RTCRtpSender.send() starts `self._run_rtp(codec)`; its RTCP handler calls `_retransmit` for a
        # NACK and `_send_keyframe` for a PLI or FIR. Instance attributes take their place.
        sender._run_rtp = self._run  # type: ignore[method-assign]
        sender._retransmit = self._retransmit  # type: ignore[method-assign]
        sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]

    def _field(self, name: str) -> Any:
        return getattr(self.sender, _S + name)

    async def _run(self, codec: RTCRtpCodecParameters) -> None:
        self._pt = codec.payloadType or 0
        self._ext_map = self._field("rtp_header_extensions_map")
        self._mid = self._field("mid")
        self._field("rtp_started").set()
        self.ready = True
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            pass
        finally:
            self.ready = False
            self._field("rtp_exited").set()

    def stop(self) -> None:
        """No more sending; the sender's RTP task ends."""
        self.ready = False
        self._stopped.set()

    def send(self, frame: Packed, ntp: int) -> bool:
        """Put one frame on this viewer's wire; False when its transport is not (or no longer) up."""
        if not self.ready:
            return False
        dtls = self.sender.transport
        srtp = dtls._tx_srtp
        if srtp is None or dtls.state != "connected":
            return False
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return False
        timestamp = (self._ts_origin + frame.timestamp) & 0xFFFFFFFF
        head = RtpPacket(payload_type=self._pt, sequence_number=self._seq, timestamp=timestamp,
                         ssrc=self.sender._ssrc)
        head.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
        head.extensions.mid = self._mid
        template = bytearray(head.serialize(self._ext_map))
        protect, history, seq, last = srtp.protect, self._history, self._seq, len(frame.payloads) - 1
        out: list[bytes] = []
        for i, payload in enumerate(frame.payloads):
            h = template.copy()
            h[1] = self._pt | 0x80 if i == last else self._pt
            h[2], h[3] = seq >> 8, seq & 0xFF
            h += payload
            data = bytes(h)
            history[seq % RTP_HISTORY_SIZE] = data
            out.append(protect(data))
            seq = (seq + 1) & 0xFFFF
        self._seq = seq
        protocol = pair.protocol
        if type(protocol) is StunProtocol and protocol.transport is not None:
            sendto, addr = protocol.transport.sendto, pair.remote_addr
            for data in out:
                sendto(data, addr)
        else:  # a TURN relay wraps each datagram: its own (async) path, in order
            task = asyncio.get_running_loop().create_task(_send_all(protocol, out, pair.remote_addr))
            self._relayed.add(task)
            task.add_done_callback(self._relayed.discard)
        s, n = self.sender, len(out)
        setattr(s, _S + "ntp_timestamp", ntp)
        setattr(s, _S + "rtp_timestamp", timestamp)
        setattr(s, _S + "octet_count", self._field("octet_count") + frame.size)
        setattr(s, _S + "packet_count", self._field("packet_count") + n)
        self.packets += n
        return True

    async def _retransmit(self, sequence_number: int) -> None:
        """A NACKed packet, again (over RTX when negotiated), as aiortc's sender does it."""
        data = self._history.get(sequence_number % RTP_HISTORY_SIZE)
        if data is None or not self.ready:
            return
        packet = RtpPacket.parse(data, self._ext_map)
        if packet.sequence_number != sequence_number:
            return
        rtx_pt = self._field("rtx_payload_type")
        if rtx_pt is not None:
            rtx_seq = self._field("rtx_sequence_number")
            packet = wrap_rtx(packet, payload_type=rtx_pt, sequence_number=rtx_seq, ssrc=self.sender._rtx_ssrc)
            setattr(self.sender, _S + "rtx_sequence_number", (rtx_seq + 1) & 0xFFFF)
        with contextlib.suppress(ConnectionError):
            await self.sender.transport._send_rtp(packet.serialize(self._ext_map))


async def _send_all(protocol: Any, datagrams: list[bytes], addr: tuple[str, int]) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        for data in datagrams:
            await protocol.send_data(data, addr)
