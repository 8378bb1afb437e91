"""ProxyBackend: WHIP/WHEP handed to an SFU or media server that speaks them (docs/media.md, "Large
audiences"). livesale still authenticates the publisher, checks the stream and the offer, keeps the
one-publisher claim and the `video` field and events; the upstream carries the media.

`LIVESALE_MEDIA_UPSTREAM` is a URL template with `{kind}` (whip|whep) and `{stream}`, e.g. MediaMTX's
`http://mediamtx:8889/{stream}/{kind}`; `LIVESALE_MEDIA_UPSTREAM_TOKEN`, if set, is sent to it as
`Authorization: Bearer`. Sessions (our id -> the upstream's Location) live in this process, as they do
for the local backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass

import aiohttp
from yarl import URL

from live.media import claims
from live.media.backend import Answer, Kind, MediaBackend
from live.media.config import MediaConfig
from livesale.codes import ErrorCode
from livesale.errors import Conflict, NotFound, Unavailable, Unprocessable
from livesale.redis_client import REDIS_DOWN
from livesale.services import Services
from livesale.tasks import pause

log = logging.getLogger("livesale.media")


@dataclass
class Upstream:
    kind: Kind
    stream_id: str
    location: str  # absolute URL of the upstream session


class ProxyBackend(MediaBackend):
    def __init__(self, config: MediaConfig) -> None:
        if "{kind}" not in config.upstream or "{stream}" not in config.upstream:
            raise ValueError("LIVESALE_MEDIA_UPSTREAM must contain {kind} and {stream}")
        self.config = config
        self.proc = secrets.token_hex(8)
        self.token = os.environ.get("LIVESALE_MEDIA_UPSTREAM_TOKEN", "")
        self._svc: Services | None = None
        self._http: aiohttp.ClientSession | None = None
        self._sessions: dict[str, Upstream] = {}
        self._owners: dict[str, str] = {}  # WHIP session -> its claim's owner
        self._tick: asyncio.Task[None] | None = None

    @property
    def svc(self) -> Services:
        assert self._svc is not None, "ProxyBackend.start() first"
        return self._svc

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "ProxyBackend.start() first"
        return self._http

    async def start(self, svc: Services) -> None:
        self._svc = svc
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._tick = asyncio.create_task(self._keep_claims(), name="media-proxy-claims")

    def counts(self) -> dict[str, int]:
        kinds = [s.kind for s in self._sessions.values()]
        return {"publishers": kinds.count(Kind.WHIP), "viewers": kinds.count(Kind.WHEP), "peer_connections": 0}

    async def _forward(self, kind: Kind, stream_id: str, offer: str) -> Answer:
        url = self.config.upstream.format(kind=kind.value, stream=stream_id)
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self.http.post(url, data=offer.encode(), headers=headers) as r:
                body = await r.text()
                if r.status == 201 and "Location" in r.headers:
                    session = secrets.token_urlsafe(18)
                    location = str(r.url.join(URL(r.headers["Location"])))
                    self._sessions[session] = Upstream(kind, stream_id, location)
                    return Answer(session, body)
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"the media server is unreachable: {exc.__class__.__name__}",
                              self.config.retry_after_s) from exc
        log.info("upstream %s answered %s: %s", url, status, body[:200])
        if kind is Kind.WHEP and status in (404, 409):  # MediaMTX: 404 when the path has no publisher
            raise Conflict("nobody is publishing this stream", code=ErrorCode.NO_PUBLISHER,
                           retry_after=self.config.retry_after_s)
        if kind is Kind.WHIP and status == 409:
            raise Conflict("the stream already has a publisher", code=ErrorCode.PUBLISHER_EXISTS)
        if status in (400, 406, 415, 422):
            raise Unprocessable(f"the media server refused the offer ({status})", code=ErrorCode.UNSUPPORTED_MEDIA)
        raise Unavailable(f"the media server answered {status}", self.config.retry_after_s,
                          code=ErrorCode.AT_CAPACITY if status == 503 else None)

    async def publish(self, stream_id: str, offer: str) -> Answer:
        owner = f"{self.proc}:{secrets.token_hex(6)}"
        if not await claims.claim(self.svc, "claim", stream_id, owner):
            raise Conflict("the stream already has a publisher", code=ErrorCode.PUBLISHER_EXISTS)
        try:
            answer = await self._forward(Kind.WHIP, stream_id, offer)
        except BaseException:
            await claims.claim(self.svc, "release", stream_id, owner)
            raise
        self._owners[answer.session] = owner
        return answer

    async def play(self, stream_id: str, offer: str, codec: str) -> Answer:
        if sum(s.kind is Kind.WHEP for s in self._sessions.values()) >= self.config.whep_max:
            raise Unavailable(f"this server process serves {self.config.whep_max} viewers at most",
                              self.config.retry_after_s, code=ErrorCode.AT_CAPACITY)
        return await self._forward(Kind.WHEP, stream_id, offer)

    async def end_session(self, kind: Kind, stream_id: str, session: str) -> None:
        up = self._sessions.get(session)
        if up is None or up.kind is not kind or up.stream_id != stream_id:
            raise NotFound("no such session (it ended, or lives on another server process)")
        await self._end(session)

    async def _end(self, session: str) -> None:
        up = self._sessions.pop(session, None)
        if up is None:
            return
        owner = self._owners.pop(session, None)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            async with self.http.delete(up.location, headers=headers):
                pass
        if owner is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await claims.claim(self.svc, "release", up.stream_id, owner)

    async def end_stream(self, stream_id: str) -> None:
        for session, up in list(self._sessions.items()):
            if up.stream_id == stream_id:
                await self._end(session)

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick
            self._tick = None
        for session in list(self._sessions):
            await self._end(session)
        if self._http is not None:
            await self._http.close()

    async def _keep_claims(self) -> None:
        while True:
            await pause(claims.TICK_S)
            for session, owner in list(self._owners.items()):
                up = self._sessions.get(session)
                if up is None:
                    continue
                try:
                    wanted = await claims.still_wanted(self.svc, up.stream_id, owner)
                except REDIS_DOWN as exc:
                    log.warning("media claim refresh of %s failed: %r", up.stream_id, exc)
                    continue
                if not wanted:
                    await self._end(session)
