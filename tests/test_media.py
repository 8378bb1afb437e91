"""WHIP ingest and WHEP playback with real aiortc peers on loopback (docs/media.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from live.media import MEDIA
from livesale.config import Settings
from tests.helpers import Api, LiveServer, start_app_server, wait_for
from tests.media_peers import Peer, publisher, viewer


@pytest.fixture
def media_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVESALE_MEDIA_ADDRESSES", "127.0.0.1")
    monkeypatch.setenv("LIVESALE_MEDIA_CONNECT_TIMEOUT_S", "10")


@pytest.fixture
async def msrv(media_env: None, settings: Settings) -> AsyncIterator[LiveServer]:
    async with start_app_server(settings) as srv:
        yield srv


@pytest.fixture
async def mapi(msrv: LiveServer) -> AsyncIterator[Api]:
    async with Api(msrv) as a:
        yield a


async def new_stream(api: Api, host: str = "hana", start: bool = True) -> tuple[str, str]:
    ht = api.server.token(host, "host")
    st, s = await api.call("POST", "/api/streams", token=ht, json={"title": "Live video"})
    assert st == 201, s
    if start:
        assert (await api.call("POST", f"/api/streams/{s['id']}/start", token=ht))[0] == 200
    return s["id"], ht


def counts(srv: LiveServer) -> dict[str, int]:
    assert srv.app is not None
    return srv.app[MEDIA].counts()


async def close_all(*peers: Peer) -> None:
    await asyncio.gather(*(p.close() for p in peers))


async def test_obs_style_publisher_reaches_two_viewers_with_its_picture(msrv: LiveServer, mapi: Api) -> None:
    """An offer without candidates gets a 201 answer carrying ours; two WHEP viewers decode the pattern."""
    sid, ht = await new_stream(mapi)
    pub, resp = await publisher(mapi.session, msrv.url, sid, ht)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/sdp")
    assert resp.headers["Location"].startswith(f"/whip/{sid}/")
    assert "a=candidate:" in await resp.text() and "127.0.0.1" in await resp.text()
    st, view = await mapi.call("GET", f"/api/streams/{sid}")
    assert view["video"] == "live"
    v1, r1 = await viewer(mapi.session, msrv.url, sid)
    v2, r2 = await viewer(mapi.session, msrv.url, sid)
    assert (r1.status, r2.status) == (201, 201), (await r1.text(), await r2.text())
    assert r1.headers["Location"].startswith(f"/whep/{sid}/")
    try:
        await wait_for(lambda: v1.matching >= 10 and v2.matching >= 10, 30)
        assert counts(msrv) == {"publishers": 1, "viewers": 2, "peer_connections": 3}
    finally:
        await close_all(pub, v1, v2)
