"""What an offer asks for, checked before aiortc sees it (pure, no I/O: CONTRIBUTING.md #1).

WHIP (RFC 9725) and WHEP take one SDP offer per POST. We answer 400 for text that is not an SDP offer
we can parse, 422 `unsupported_media` for one we parse but will not serve (docs/media.md, "Errors").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Video we decode (ingest) and encode (playback): one encoder per codec per stream.
VIDEO_CODECS = ("H264", "VP8")

_LINE = re.compile(r"^[a-z]=")
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([A-Za-z0-9_.-]+)/")
_FMTP_PM = re.compile(r"^a=fmtp:(\d+) .*packetization-mode=(\d)")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """Not an SDP offer we can parse (400)."""


class UnsupportedOffer(ValueError):
    """A well-formed offer we do not serve (422 unsupported_media)."""


@dataclass
class Section:
    kind: str
    payload_types: list[str]
    codecs: dict[str, str] = field(default_factory=dict)  # payload type -> codec name (upper case)
    packetization: dict[str, str] = field(default_factory=dict)  # H.264 payload type -> mode
    direction: str = "sendrecv"
    simulcast: bool = False

    def offered(self) -> list[str]:
        """Codec names in the offer's order of preference, H.264 only with packetization-mode 1
        (the mode aiortc speaks)."""
        names = []
        for pt in self.payload_types:
            name = self.codecs.get(pt, "")
            if name == "H264" and self.packetization.get(pt, "0") != "1":
                continue
            if name and name not in names:
                names.append(name)
        return names


@dataclass
class Offer:
    sections: list[Section]

    @property
    def video(self) -> list[Section]:
        return [s for s in self.sections if s.kind == "video"]


def parse(body: bytes) -> Offer:
    """The media sections of an SDP offer; SdpError when `body` is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpError("the offer is not UTF-8 text") from exc
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != "v=0":
        raise SdpError("not an SDP offer: the first line must be v=0")
    sections: list[Section] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not _LINE.match(line):
            raise SdpError(f"line {n} is not an SDP line (<type>=<value>)")
        seen.add(line[:2])
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4 or not parts[1].isdigit():
                raise SdpError(f"line {n}: malformed m= line")
            sections.append(Section(parts[0], parts[3:]))
        elif sections:
            _attribute(sections[-1], line)
    for needed in ("o=", "s="):
        if needed not in seen:
            raise SdpError(f"the offer has no {needed} line")
    if not sections:
        raise SdpError("the offer has no media section (m= line)")
    attrs = "\n".join(lines)
    for needed in ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:"):
        if needed not in attrs:
            raise SdpError(f"the offer has no {needed[2:-1]} (WebRTC needs ICE credentials and DTLS)")
    return Offer(sections)


def _attribute(section: Section, line: str) -> None:
    if m := _RTPMAP.match(line):
        section.codecs[m.group(1)] = m.group(2).upper()
    elif m := _FMTP_PM.match(line):
        section.packetization[m.group(1)] = m.group(2)
    elif line[2:] in _DIRECTIONS:
        section.direction = line[2:]
    elif line.startswith(("a=simulcast", "a=rid:")):
        section.simulcast = True


def check_publish(offer: Offer) -> None:
    """A WHIP offer we ingest: one video section sending H.264 or VP8, no simulcast (audio may ride
    along; it is received and dropped)."""
    video = offer.video
    if not video:
        raise UnsupportedOffer("the offer has no video: send H.264 or VP8 video")
    if any(s.simulcast for s in video):
        raise UnsupportedOffer("simulcast is not supported: send one video encoding")
    if len(video) > 1:
        raise UnsupportedOffer("send one video track")
    if video[0].direction not in ("sendonly", "sendrecv"):
        raise UnsupportedOffer("the video section does not send (direction must be sendonly)")
    if not set(video[0].offered()) & set(VIDEO_CODECS):
        raise UnsupportedOffer(f"no supported video codec offered ({', '.join(VIDEO_CODECS)}; "
                               "H.264 with packetization-mode=1)")


def check_play(offer: Offer) -> str:
    """The codec a WHEP viewer gets: H.264 if it takes it, else VP8 (so a stream usually runs one
    encoder for all its viewers)."""
    receiving = [s for s in offer.video if s.direction in ("recvonly", "sendrecv")]
    if not receiving:
        raise UnsupportedOffer("the offer receives no video (a recvonly video section is needed)")
    offered = receiving[0].offered()
    for name in VIDEO_CODECS:
        if name in offered:
            return name
    raise UnsupportedOffer(f"the offer takes none of our video codecs ({', '.join(VIDEO_CODECS)})")


def receives_audio(offer: Offer) -> bool:
    return any(s.kind == "audio" and s.direction in ("recvonly", "sendrecv") and "OPUS" in s.offered()
               for s in offer.sections)


def prefer(sdp: str, codec: str, kind: str = "video") -> str:
    """`sdp` with `codec` first in every `kind` section: first on the m= line, and its a=rtpmap lines
    first (aiortc reads the offer's preference from the order of the rtpmap lines). aiortc answers
    with the offer's own order of preference, and Chromium lists VP8 first; this keeps one encoder
    per stream for every viewer that can take H.264."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    names = {m.group(1): m.group(2).upper() for line in lines if (m := _RTPMAP.match(line))}
    section = ""
    rtpmaps: list[int] = []

    def reorder() -> None:
        ordered = sorted((lines[i] for i in rtpmaps), key=lambda ln: _RTPMAP.match(ln).group(2).upper() != codec)  # type: ignore[union-attr]
        for i, line in zip(rtpmaps, ordered, strict=True):
            lines[i] = line
        rtpmaps.clear()

    for i, line in enumerate(lines):
        if line.startswith("m="):
            reorder()
            section = line[2:].split(" ", 1)[0]
            if section == kind:
                head, fmts = line.split()[:3], line.split()[3:]
                first = [pt for pt in fmts if names.get(pt) == codec]
                lines[i] = " ".join(head + first + [pt for pt in fmts if pt not in first])
        elif section == kind and _RTPMAP.match(line):
            rtpmaps.append(i)
    reorder()
    return eol.join(lines)


def answer_codec(sdp: str, kind: str = "video") -> str | None:
    """The codec of the first `kind` m= line of an answer (its first payload type)."""
    pt = None
    for line in sdp.splitlines():
        if pt is None and line.startswith(f"m={kind} "):
            parts = line.split()
            pt = parts[3] if len(parts) > 3 else None
        elif pt is not None and (m := _RTPMAP.match(line)) and m.group(1) == pt:
            return m.group(2).upper()
    return None
