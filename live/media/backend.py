"""The media backend seam: what the WHIP/WHEP handlers ask of whoever carries the video.

`live.media.http` authenticates, finds the stream and checks the offer; a backend turns a checked
offer into an answer and owns the sessions. `LocalBackend` (live/media/local.py) runs the media in this
process with aiortc; `ProxyBackend` (live/media/proxy.py) hands WHIP/WHEP to an SFU or media server
that speaks them, for audiences one process cannot carry (docs/media.md, "Large audiences").
Chosen by LIVESALE_MEDIA_BACKEND.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from livesale.services import Services


class Kind(StrEnum):
    WHIP = "whip"  # a publisher
    WHEP = "whep"  # a viewer


@dataclass(frozen=True)
class Answer:
    session: str  # unguessable: an anonymous viewer's session URL is its own capability
    sdp: str


class MediaBackend(ABC):
    @abstractmethod
    async def start(self, svc: Services) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Close every session (server shutdown)."""

    @abstractmethod
    async def publish(self, stream_id: str, offer: str) -> Answer:
        """A publisher's answer; Conflict `publisher_exists` when the stream has one."""

    @abstractmethod
    async def play(self, stream_id: str, offer: str, codec: str) -> Answer:
        """A viewer's answer, video in `codec`; Conflict `no_publisher`, Unavailable `at_capacity`."""

    @abstractmethod
    async def end_session(self, kind: Kind, stream_id: str, session: str) -> None:
        """End one session (a DELETE on its Location); NotFound when there is none."""

    @abstractmethod
    async def end_stream(self, stream_id: str) -> None:
        """Close the stream's publisher and viewers (the stream ended)."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Sessions open in this process: {"publishers", "viewers", "peer_connections"}."""


MEDIA = web.AppKey("livesale_media", MediaBackend)
