"""WHIP ingest and WHEP playback with real aiortc peers on loopback (docs/media.md)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from live.media import MEDIA, relay
from livesale.config import Settings
from livesale.embedded_redis import free_port
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


async def test_obs_style_publisher_reaches_two_viewers_with_its_picture(msrv: LiveServer, mapi: Api,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An offer without candidates gets a 201 answer carrying ours; two WHEP viewers decode the pattern
    (sent one viewer per loop turn, so the fan-out lets go of the loop between them)."""
    monkeypatch.setattr(relay, "_FAN_OUT_SLICE", 1)
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
        await wait_for(lambda: v1.audio_frames >= 10 and v2.audio_frames >= 10, 10)  # the publisher's audio too
        assert counts(msrv) == {"publishers": 1, "viewers": 2, "peer_connections": 3}
        async with mapi.session.get(msrv.url + "/metrics") as r:
            scrape = await r.text()
        series = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
                  if line.startswith("livesale_media")}
        assert series["livesale_media_publishers"] == 1 and series["livesale_media_viewers"] == 2
        encoded = series['livesale_media_frames_total{stage="encoded"}']
        assert series['livesale_media_frames_total{stage="received"}'] >= encoded >= 10
        assert series['livesale_media_frames_total{stage="sent"}'] >= 20  # one per viewer per frame
        # One H.264 encode per frame for both viewers (aiortc offers VP8 first; we prefer H.264).
        assert series['livesale_media_encode_seconds_count{codec="H264"}'] == encoded
        assert series['livesale_media_encode_seconds_count{codec="VP8"}'] == 0
    finally:
        await close_all(pub, v1, v2)


def media_threads() -> list[str]:
    """Threads the media plane starts: aiortc's decoder threads and our per-stream encode threads."""
    return [t.name for t in threading.enumerate() if "decoder_worker" in t.name or t.name.startswith("media-")]


async def assert_all_closed(srv: LiveServer, mapi: Api, sid: str) -> None:
    await wait_for(lambda: counts(srv) == {"publishers": 0, "viewers": 0, "peer_connections": 0}, 10)
    await wait_for(lambda: not media_threads(), 10)
    st, view = await mapi.call("GET", f"/api/streams/{sid}")
    assert view["video"] == "none"
    assert m_gauge("livesale_media_publishers") == 0 and m_gauge("livesale_media_viewers") == 0


def m_gauge(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


async def live_stream_with_viewers(srv: LiveServer, mapi: Api, n: int = 2) -> tuple[str, str, Peer, list[Peer]]:
    sid, ht = await new_stream(mapi)
    pub, resp = await publisher(mapi.session, srv.url, sid, ht)
    assert resp.status == 201, await resp.text()
    viewers = []
    for _ in range(n):
        v, r = await viewer(mapi.session, srv.url, sid)
        assert r.status == 201, await r.text()
        viewers.append(v)
    await wait_for(lambda: all(v.matching >= 3 for v in viewers), 30)
    return sid, ht, pub, viewers


async def test_publisher_delete_ends_viewers_and_frees_everything(msrv: LiveServer, mapi: Api) -> None:
    """DELETE on the WHIP Location: 200, the viewers' video ends, peer connections and threads back to zero."""
    sid, ht, pub, viewers = await live_stream_with_viewers(msrv, mapi)
    assert media_threads()
    try:
        st, _ = await mapi.call("DELETE", pub.location, token=ht)
        assert st == 200
        await wait_for(lambda: all(v.pc.connectionState in ("closed", "failed") or v.ended.is_set()
                                   for v in viewers), 15)
    finally:
        await close_all(pub, *viewers)
    await assert_all_closed(msrv, mapi, sid)
    st, body = await mapi.call("DELETE", pub.location, token=ht)
    assert (st, body["error"]) == (404, "not_found")


async def test_viewer_delete_ends_only_that_viewer(msrv: LiveServer, mapi: Api) -> None:
    """DELETE on a WHEP Location (no credentials) ends that viewer; the publisher and the other go on."""
    sid, ht, pub, (v1, v2) = await live_stream_with_viewers(msrv, mapi)
    try:
        assert (await mapi.call("DELETE", v1.location))[0] == 200
        await wait_for(lambda: counts(msrv)["viewers"] == 1, 10)
        seen = v2.matching
        await wait_for(lambda: v2.matching >= seen + 10, 20)
    finally:
        await close_all(pub, v1, v2)
    await assert_all_closed(msrv, mapi, sid)


async def test_stream_end_closes_its_media(msrv: LiveServer, mapi: Api) -> None:
    """Ending the stream closes its publisher and viewers; a new WHIP POST is 409 invalid_state."""
    sid, ht, pub, viewers = await live_stream_with_viewers(msrv, mapi)
    try:
        assert (await mapi.call("POST", f"/api/streams/{sid}/end", token=ht))[0] == 200
        await assert_all_closed(msrv, mapi, sid)
        again, resp = await publisher(mapi.session, msrv.url, sid, ht, expect=409)
        body = await resp.json()
        await again.close()
        assert (resp.status, body["error"]) == (409, "invalid_state")
    finally:
        await close_all(pub, *viewers)
    await assert_all_closed(msrv, mapi, sid)


async def test_shutdown_closes_every_peer_connection(media_env: None, settings: Settings) -> None:
    """Stopping the server closes every peer connection and joins every media thread."""
    async with start_app_server(settings) as srv, Api(srv) as api:
        sid, ht, pub, viewers = await live_stream_with_viewers(srv, api)
        backend = srv.app[MEDIA]  # type: ignore[index]
        assert backend.counts()["peer_connections"] == 3
    try:
        assert backend.counts() == {"publishers": 0, "viewers": 0, "peer_connections": 0}
    finally:
        await close_all(pub, *viewers)
    await wait_for(lambda: not media_threads(), 10)


async def test_one_publisher_per_stream_under_concurrency(msrv: LiveServer, mapi: Api) -> None:
    """Eight publishers at once on one stream: exactly one 201, seven 409 publisher_exists, one claim."""
    sid, ht = await new_stream(mapi)
    results = await asyncio.gather(*(publisher(mapi.session, msrv.url, sid, ht, expect=0) for _ in range(8)))
    try:
        statuses = sorted(r.status for _, r in results)
        assert statuses == [201] + [409] * 7
        for _, r in results:
            if r.status == 409:
                assert (await r.json())["error"] == "publisher_exists"
        assert counts(msrv) == {"publishers": 1, "viewers": 0, "peer_connections": 1}
        # The winner's answer is usable: a second publisher after it is still refused.
        late, resp = await publisher(mapi.session, msrv.url, sid, ht, expect=409)
        await late.close()
        assert resp.status == 409
    finally:
        await close_all(*(p for p, _ in results))
        for _, r in results:
            if r.status == 201:
                await mapi.call("DELETE", r.headers["Location"], token=ht)
    await assert_all_closed(msrv, mapi, sid)


async def test_publishing_needs_the_host_or_the_current_stream_key(msrv: LiveServer, mapi: Api) -> None:
    """No token 401, a viewer 403, another host 403; the stream key works and rotating it revokes the old one."""
    sid, ht = await new_stream(mapi)
    for token, status in ((None, 401), ("garbage", 401), (msrv.token("vic", "viewer"), 403),
                          (msrv.token("other", "host"), 403), ("sk_not-the-key", 401)):
        peer, resp = await publisher(mapi.session, msrv.url, sid, token, expect=status)
        await peer.close()
        assert resp.status == status, (token, await resp.text())
    assert (await mapi.call("POST", f"/api/streams/{sid}/key", token=msrv.token("vic", "viewer")))[0] == 403
    assert (await mapi.call("POST", f"/api/streams/{sid}/key", token=msrv.token("other", "host")))[0] == 403
    st, first = await mapi.call("POST", f"/api/streams/{sid}/key", token=ht)
    assert st == 200 and first["stream_key"].startswith("sk_")
    assert first["whip_url"] == f"{msrv.url}/whip/{sid}"
    st, second = await mapi.call("POST", f"/api/streams/{sid}/key", token=ht)
    assert second["stream_key"] != first["stream_key"]
    old, resp = await publisher(mapi.session, msrv.url, sid, first["stream_key"], expect=401)
    await old.close()
    assert resp.status == 401
    assert counts(msrv)["peer_connections"] == 0
    pub, resp = await publisher(mapi.session, msrv.url, sid, second["stream_key"])
    try:
        assert resp.status == 201
        assert (await mapi.call("DELETE", pub.location, token=msrv.token("vic", "viewer")))[0] == 403
        assert (await mapi.call("DELETE", pub.location, token=second["stream_key"]))[0] == 200
    finally:
        await pub.close()
    await assert_all_closed(msrv, mapi, sid)


_OFFER_HEAD = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
               "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
               "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n")


def video_offer(*rtpmaps: str, extra: str = "", direction: str = "sendonly") -> str:
    pts = " ".join(str(96 + i) for i in range(len(rtpmaps)))
    lines = [f"m=video 9 UDP/TLS/RTP/SAVPF {pts}", "c=IN IP4 0.0.0.0", "a=mid:0", f"a={direction}", "a=rtcp-mux"]
    for i, name in enumerate(rtpmaps):
        lines.append(f"a=rtpmap:{96 + i} {name}/90000")
        if name == "H264":
            lines.append(f"a=fmtp:{96 + i} level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
    return _OFFER_HEAD + "\r\n".join(lines) + "\r\n" + extra


async def test_bad_offers_are_refused_and_leave_no_state(msrv: LiveServer, mapi: Api) -> None:
    """415, 400, 422 and 404 answers, in our error shape, create no session, claim or event."""
    sid, ht = await new_stream(mapi)
    seq_before = await msrv_seq(msrv, sid)
    sdp_h = {"Content-Type": "application/sdp"}
    cases: list[tuple[str, dict[str, str], bytes | str, int, str]] = [
        (f"/whip/{sid}", {"Content-Type": "application/json"}, "{}", 415, "unsupported_media_type"),
        (f"/whip/{sid}", sdp_h, "hello", 400, "bad_request"),
        (f"/whip/{sid}", sdp_h, b"\xff\xfe", 400, "bad_request"),
        (f"/whip/{sid}", sdp_h, video_offer("H264").replace("a=fingerprint", "a=x-fingerprint"), 400, "bad_request"),
        (f"/whip/{sid}", sdp_h, video_offer("AV1"), 422, "unsupported_media"),
        (f"/whip/{sid}", sdp_h, video_offer("H264", extra="a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n"),
         422, "unsupported_media"),
        (f"/whip/{sid}", sdp_h, video_offer("H264").replace("m=video", "m=audio"), 422, "unsupported_media"),
        ("/whip/nosuchstream", sdp_h, video_offer("H264"), 404, "not_found"),
        (f"/whep/{sid}", {"Content-Type": "text/plain"}, "v=0", 415, "unsupported_media_type"),
        (f"/whep/{sid}", sdp_h, "m=video", 400, "bad_request"),
        (f"/whep/{sid}", sdp_h, video_offer("AV1", direction="recvonly"), 422, "unsupported_media"),
        ("/whep/nosuchstream", sdp_h, video_offer("H264", direction="recvonly"), 404, "not_found"),
    ]
    for path, headers, body, status, code in cases:
        h = dict(headers)
        if path.startswith("/whip"):
            h["Authorization"] = f"Bearer {ht}"
        st, answer = await mapi.call("POST", path, data=body, headers=h)
        assert (st, answer["error"]) == (status, code), (path, body, answer)
        assert isinstance(answer["message"], str)
    assert counts(msrv) == {"publishers": 0, "viewers": 0, "peer_connections": 0}
    assert await msrv_seq(msrv, sid) == seq_before  # no video event
    st, view = await mapi.call("GET", f"/api/streams/{sid}")
    assert (st, view["video"]) == (200, "none")
    assert (await mapi.call("GET", "/healthz"))[0] == 200


async def msrv_seq(srv: LiveServer, sid: str) -> int:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(srv.settings.redis_url or "")
    try:
        return int(await r.get(f"{{stream:{sid}}}:seq") or 0)
    finally:
        await r.aclose()


async def test_whep_without_publisher_and_past_capacity(media_env: None, settings: Settings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """409 no_publisher with Retry-After; with LIVESALE_WHEP_MAX=2, six viewers at once: two 201, four 503."""
    monkeypatch.setenv("LIVESALE_WHEP_MAX", "2")
    async with start_app_server(settings) as srv, Api(srv) as api:
        sid, ht = await new_stream(api)
        nobody, resp = await viewer(api.session, srv.url, sid, expect=409)
        await nobody.close()
        assert resp.status == 409 and resp.headers["Retry-After"].isdigit()
        assert (await resp.json())["error"] == "no_publisher"
        pub, resp = await publisher(api.session, srv.url, sid, ht)
        assert resp.status == 201
        results = await asyncio.gather(*(viewer(api.session, srv.url, sid, expect=0) for _ in range(6)))
        try:
            statuses = sorted(r.status for _, r in results)
            assert statuses == [201, 201, 503, 503, 503, 503]
            for _, r in results:
                if r.status == 503:
                    assert (await r.json())["error"] == "at_capacity" and r.headers["Retry-After"].isdigit()
            assert counts(srv)["viewers"] == 2
        finally:
            await close_all(pub, *(p for p, _ in results))
        await assert_all_closed(srv, api, sid)


async def test_a_peer_that_never_connects_is_closed(media_env: None, settings: Settings,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A 201 whose peer never completes ICE is closed after the connect timeout, claim and all."""
    monkeypatch.setenv("LIVESALE_MEDIA_CONNECT_TIMEOUT_S", "1")
    async with start_app_server(settings) as srv, Api(srv) as api:
        sid, ht = await new_stream(api)
        st, answer = await api.call("POST", f"/whip/{sid}", data=video_offer("H264"),
                                    headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {ht}"})
        assert st == 201, answer
        assert counts(srv)["publishers"] == 1
        await assert_all_closed(srv, api, sid)


async def test_options_patch_and_cors(mapi: Api) -> None:
    """OPTIONS is 204 with Accept-Post and CORS exposing Location; PATCH is 405; DELETE of no session 404."""
    sid, ht = await new_stream(mapi)
    for path in (f"/whip/{sid}", f"/whep/{sid}", f"/whip/{sid}/x", f"/whep/{sid}/x"):
        async with mapi.session.options(mapi.server.url + path) as r:
            assert r.status == 204
            assert r.headers["Accept-Post"] == "application/sdp"
            assert "Location" in r.headers["Access-Control-Expose-Headers"]
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
    st, body = await mapi.call("PATCH", f"/whip/{sid}/x", token=ht, data="a=candidate",
                               headers={"Content-Type": "application/trickle-ice-sdpfrag"})
    assert (st, body["error"]) == (405, "method_not_allowed")
    assert (await mapi.call("PATCH", f"/whep/{sid}/x"))[0] == 405
    async with mapi.session.delete(mapi.server.url + f"/whep/{sid}/nosuch") as r:
        assert r.status == 404 and r.headers["Access-Control-Allow-Origin"] == "*"


async def test_viewers_hear_video_go_live_and_stop(msrv: LiveServer, mapi: Api) -> None:
    """The WebSocket snapshot carries stream.video; viewers get `video` live then none, with seqs."""
    import websockets

    from tests.test_realtime_ws import collect, of_type, ws_url

    sid, ht = await new_stream(mapi)
    async with websockets.connect(ws_url(msrv, sid)) as ws:
        snap = await collect(ws, lambda ev: bool(of_type(ev, "snapshot")))
        assert of_type(snap, "snapshot")[0]["stream"]["video"] == "none"
        pub, resp = await publisher(mapi.session, msrv.url, sid, ht)
        try:
            assert resp.status == 201
            live = await collect(ws, lambda ev: bool(of_type(ev, "video")))
            assert of_type(live, "video")[0]["status"] == "live"
            assert (await mapi.call("DELETE", pub.location, token=ht))[0] == 200
            gone = await collect(ws, lambda ev: bool(of_type(ev, "video")))
            assert of_type(gone, "video")[0]["status"] == "none"
            assert of_type(gone, "video")[0]["seq"] > of_type(live, "video")[0]["seq"]
        finally:
            await pub.close()
    async with websockets.connect(ws_url(msrv, sid)) as ws:
        snap = await collect(ws, lambda ev: bool(of_type(ev, "snapshot")))
        assert of_type(snap, "snapshot")[0]["stream"]["video"] == "none"


@pytest.fixture
def upstream_port() -> Iterator[int]:
    """A real WHIP/WHEP server to proxy to: bench/media_ref.py (aiortc's MediaRelay) in a subprocess."""
    port = free_port()
    ref = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "bench" / "media_ref.py"),
                            "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _up(f"http://127.0.0.1:{port}/healthz"):
            assert time.monotonic() < deadline and ref.poll() is None, "bench/media_ref.py did not start"
            time.sleep(0.1)
        yield port
    finally:
        ref.terminate()
        ref.wait(10)


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def test_proxy_backend_hands_whip_and_whep_to_an_upstream(media_env: None, settings: Settings, upstream_port: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """LIVESALE_MEDIA_BACKEND=proxy: auth and the video field stay ours, the media goes through a real
    upstream WHIP/WHEP server (bench/media_ref.py, aiortc), and a viewer decodes the picture."""
    monkeypatch.setenv("LIVESALE_MEDIA_BACKEND", "proxy")
    monkeypatch.setenv("LIVESALE_MEDIA_UPSTREAM", f"http://127.0.0.1:{upstream_port}/{{kind}}/{{stream}}")
    async with start_app_server(settings) as srv, Api(srv) as api:
        sid, ht = await new_stream(api)
        denied, resp = await publisher(api.session, srv.url, sid, srv.token("vic"), expect=403)
        await denied.close()
        assert resp.status == 403
        pub, resp = await publisher(api.session, srv.url, sid, ht)
        v, r = await viewer(api.session, srv.url, sid)
        try:
            assert (resp.status, r.status) == (201, 201)
            assert (await api.call("GET", f"/api/streams/{sid}"))[1]["video"] == "live"
            await wait_for(lambda: v.matching >= 5, 30)
            assert counts(srv) == {"publishers": 1, "viewers": 1, "peer_connections": 0}
            assert (await api.call("DELETE", pub.location, token=ht))[0] == 200
            assert (await api.call("GET", f"/api/streams/{sid}"))[1]["video"] == "none"
        finally:
            await close_all(pub, v)
