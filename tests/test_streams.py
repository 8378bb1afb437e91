"""Streams: the lifecycle state machine (pure) and the host controls over HTTP."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from live import keys as live_keys
from live.schema import streams
from live.streams import StreamStatus, transition
from livesale.bus import log_key
from livesale.config import Settings
from livesale.db import make_engine
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


async def test_start_and_end_at_once_leave_viewers_redis_and_sql_on_ended(settings: Settings, redis_url: str) -> None:
    """A start and an end of one stream at once, over two server processes: when both succeed, the last
    `stream` event viewers got says `ended`, as do the stream view and the SQL record."""
    import sqlalchemy as sa

    from livesale.db import make_engine

    srv = await asyncio.to_thread(spawn_server, settings, workers=2)
    r = aioredis.Redis.from_url(redis_url)
    engine = make_engine(settings.sql_url)
    try:
        async with Api(srv) as api, Api(srv) as other:
            host = srv.token("racer", "host")
            both = 0
            for _ in range(40):
                st, s = await api.call("POST", "/api/streams", token=host, json={"title": "race"})
                sid = s["id"]
                (st1, _), (st2, _) = await asyncio.gather(
                    api.call("POST", f"/api/streams/{sid}/start", token=host),
                    other.call("POST", f"/api/streams/{sid}/end", token=host))
                if (st1, st2) != (200, 200):
                    continue
                both += 1
                log = [orjson.loads(d[b"d"]) for _, d in await r.xrange(log_key(sid))]
                assert [ev["status"] for ev in log if ev["type"] == "stream"][-1] == "ended", log
                st, view = await api.call("GET", f"/api/streams/{sid}")
                assert view["status"] == "ended"
                async with engine.connect() as conn:
                    row = (await conn.execute(sa.text("SELECT status FROM streams WHERE id = :i"), {"i": sid})).one()
                assert row.status == "ended", sid
            assert both > 0
    finally:
        await engine.dispose()
        await r.aclose()
        await asyncio.to_thread(stop_server, srv)


async def test_viewer_sees_the_stream_end_and_its_sale_end(api: Api) -> None:
    """A connected viewer gets `stream {status: ended}` and then the `sale` event ending the stream's
    running sale, in seq order; the socket stays open (docs/design.md names no close for an ended stream)."""
    from tests.test_realtime_ws import collect, of_type, viewer

    s = await api.setup_sale()
    async with viewer(api.server, s["stream_id"], "vera") as (ws, first):
        snap = of_type(first, "snapshot")[0]
        assert snap["stream"]["status"] == "live"
        st, _ = await api.call("POST", f"/api/streams/{s['stream_id']}/end", token=s["host_token"])
        assert st == 200
        evs = await collect(ws, lambda evs: bool(of_type(evs, "sale")))
        logged = [e for e in evs if "seq" in e]
        assert [(e["type"], e["status"]) for e in logged] == [("stream", "ended"), ("sale", "ended")]
        assert logged[0]["seq"] == snap["seq"] + 1 and logged[1]["seq"] == snap["seq"] + 2
        await ws.send('{"type": "ping"}')
        assert of_type(await collect(ws, lambda evs: bool(of_type(evs, "pong"))), "pong")


async def test_an_end_retried_after_it_failed_midway_finishes_it(api: Api, redis_url: str) -> None:
    """The first end got through its Redis step and then failed (Redis or SQL lost: a 503), leaving the
    stream's sale running and SQL saying live. The retry is 409 (the stream is ended, as docs/design.md has
    it) and completes the rest: the sale ends and SQL says ended."""
    s = await api.setup_sale(stock=5)
    stream_id, host = s["stream_id"], s["host_token"]
    r = aioredis.Redis.from_url(redis_url)
    await r.hset(live_keys.meta(stream_id), mapping={"status": "ended", "ended_at": "1795500000.5"})
    await r.aclose()
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert sale["status"] == "active"  # what the failed end left behind
    st, body = await api.call("POST", f"/api/streams/{stream_id}/end", token=host)
    assert st == 409 and body["error"] == "invalid_state", body
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert sale["status"] == "ended", sale
    engine = make_engine(api.server.settings.sql_url)
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(streams).where(streams.c.id == stream_id))).one()
    await engine.dispose()
    assert row.status == "ended" and row.ended_at is not None
