"""Streams: the lifecycle state machine (pure) and the host controls over HTTP."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
import redis.asyncio as aioredis

from live.streams import StreamStatus, transition
from livesale.bus import log_key
from livesale.config import Settings
from livesale.errors import Conflict
from tests.helpers import Api, spawn_server, stop_server


def test_lifecycle_transitions() -> None:
    """scheduled -> live -> ended; anything else is a 409 that names the current state."""
    assert transition("scheduled", "start") is StreamStatus.LIVE
    assert transition("live", "end") is StreamStatus.ENDED
    assert transition("scheduled", "end") is StreamStatus.ENDED
    for cur, action in (("live", "start"), ("ended", "start"), ("ended", "end")):
        with pytest.raises(Conflict, match=cur):
            transition(cur, action)


async def test_host_runs_a_stream(api: Api) -> None:
    """A host creates, starts, pins and ends a stream; the stream view carries pinned, sales, counters;
    ending the stream ends its sales; others may not control it."""
    ht = api.server.token("hana", "host")
    st, p = await api.call("POST", "/api/products", token=ht, json={"sku": "HAT-1", "title": "Hat", "price_cents": 900})
    assert st == 201 and p["currency"] == "USD"
    st, s = await api.call("POST", "/api/streams", token=ht, json={"title": "Hats tonight"})
    assert st == 201 and s["status"] == "scheduled" and s["host"] == "hana"
    assert (s["viewers"], s["likes"], s["sales"], s["pinned"]) == (0, 0, [], None)
    st, body = await api.call("POST", f"/api/streams/{s['id']}/start", token=api.server.token("ivan", "host"))
    assert st == 403
    st, live = await api.call("POST", f"/api/streams/{s['id']}/start", token=ht)
    assert st == 200 and live["status"] == "live" and live["started_at"]
    st, pinned = await api.call("POST", f"/api/streams/{s['id']}/pin", token=ht, json={"sku": "HAT-1"})
    assert st == 200 and pinned["pinned"]["sku"] == "HAT-1"
    st, sale = await api.call("POST", f"/api/streams/{s['id']}/sales", token=ht, json={
        "sku": "HAT-1", "price_cents": 500, "stock": 3, "per_user_limit": 1, "duration_s": 60, "hold_s": 30})
    assert st == 201 and sale["status"] == "scheduled" and sale["available"] == 3
    st, _ = await api.call("POST", f"/api/sales/{sale['id']}/start", token=ht)
    st, view = await api.call("GET", f"/api/streams/{s['id']}")
    assert [x["id"] for x in view["sales"]] == [sale["id"]] and view["sales"][0]["status"] == "active"
    st, ended = await api.call("POST", f"/api/streams/{s['id']}/end", token=ht)
    assert st == 200 and ended["status"] == "ended" and ended["sales"][0]["status"] == "ended"
    st, again = await api.call("POST", f"/api/streams/{s['id']}/start", token=ht)
    assert st == 409 and again["error"] == "invalid_state" and "ended" in again["message"]
    st, late = await api.call("POST", f"/api/streams/{s['id']}/sales", token=ht, json={
        "sku": "HAT-1", "price_cents": 500, "stock": 3, "per_user_limit": 1, "duration_s": 60, "hold_s": 30})
    assert st == 409


async def test_health_and_readiness(api: Api) -> None:
    """/healthz and /readyz answer 200 while Redis and SQL are up."""
    assert (await api.call("GET", "/healthz"))[0] == 200
    st, body = await api.call("GET", "/readyz")
    assert st == 200 and body["status"] == "ready"


async def test_concurrent_pins_leave_snapshot_and_live_viewers_agreeing(settings: Settings, redis_url: str) -> None:
    """Many pins at once, over two server processes: the stream's pinned product (what a snapshot
    shows) is the product of the last `pin` event in the stream log (what live viewers saw last)."""
    srv = await asyncio.to_thread(spawn_server, settings, workers=2)
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with Api(srv) as api:
            host = srv.token("pinner", "host")
            skus = []
            for i in range(6):
                sku = f"PIN-{i}-{os.urandom(3).hex()}"
                st, _ = await api.call("POST", "/api/products", token=host,
                                       json={"sku": sku, "title": f"P{i}", "price_cents": 100})
                assert st == 201
                skus.append(sku)
            st, stream = await api.call("POST", "/api/streams", token=host, json={"title": "pins"})
            assert (await api.call("POST", f"/api/streams/{stream['id']}/start", token=host))[0] == 200
            path = f"/api/streams/{stream['id']}/pin"
            for _ in range(25):
                answers = await asyncio.gather(*(
                    api.call("POST", path, token=host, json={"sku": skus[i % len(skus)]}) for i in range(24)))
                assert {a[0] for a in answers} == {200}
                log = [orjson.loads(d[b"d"]) for _, d in await r.xrevrange(log_key(stream["id"]), count=50)]
                last_pin = next(ev for ev in log if ev["type"] == "pin")
                st, now = await api.call("GET", f"/api/streams/{stream['id']}")
                assert now["pinned"]["sku"] == last_pin["product"]["sku"]
    finally:
        await r.aclose()
        await asyncio.to_thread(stop_server, srv)


async def test_stream_times_are_rfc3339_with_milliseconds(api: Api) -> None:
    """created_at, started_at and ended_at use the API's one time format (docs/api.md): milliseconds and a Z."""
    import re

    ht = api.server.token("tess", "host")
    st, s = await api.call("POST", "/api/streams", token=ht, json={"title": "Clock"})
    assert st == 201
    await api.call("POST", f"/api/streams/{s['id']}/start", token=ht)
    st, ended = await api.call("POST", f"/api/streams/{s['id']}/end", token=ht)
    assert st == 200
    fmt = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    for name in ("created_at", "started_at", "ended_at"):
        assert fmt.match(ended[name]), (name, ended[name])
