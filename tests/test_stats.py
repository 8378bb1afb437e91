"""Stream analytics (docs/api.md "Stream analytics"): the per-process tally and the figures' arithmetic
without I/O, then a scripted show over real sockets on two `livesale serve` processes whose every
stats field is checked against what happened, and the 401/403/404 answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from live.stats import SaleFigures, compose
from livesale.config import Settings
from realtime.analytics import Tally, identity, minute_of
from tests.helpers import Api, LiveServer, spawn_server, stop_server, wait_for
from tests.test_realtime_ws import collect, of_type, recv_events, ws_url

# Figures move within 2 s of what moves them (docs/api.md: the hub's 1 s tick); tests never assert
# timings, and on the shared 2-core machine a tick can be seconds late, so the waits allow more.
MOVE_S = 10.0


def test_tally_counts_views_identities_and_watch_time() -> None:
    """Views count every socket, identities are distinct, a user's two tabs watch once, and a report
    that Redis refused is counted again with the next."""
    t = Tally(0.0)
    t.join("u:a", 0.0)
    t.join("u:a", 1.0)  # a second tab
    t.join("a:x", 2.0)
    t.comment(60_000)
    t.likes(5, 61_000)
    t.likes(0, 61_000)
    r = t.take(4.0)
    assert (r.open, r.views, r.identities, r.watch_ms) == (3, 3, {"u:a", "a:x"}, 4000 + 2000)
    assert r.comments == {1: 1} and r.likes == {1: 5}
    t.leave("u:a", 5.0)  # one tab left: alice still watches
    t.leave("a:x", 6.0)
    t.restore(r)
    r2 = t.take(8.0)
    assert r2.open == 1 and r2.views == 3 and r2.watch_ms == 6000 + (2000 + 2000 + 2000)
    t.leave("u:a", 9.0)
    r3 = t.take(10.0)
    assert (r3.open, r3.views, r3.watch_ms, r3.empty()) == (0, 0, 1000, False)
    assert t.take(11.0).empty()
    assert identity("bob") == "u:bob" and identity(None) != identity(None)


def test_watch_time_accrues_only_while_live() -> None:
    """Time in a scheduled stream's waiting room or on an ended stream's page is not watch time."""
    t = Tally(0.0, live=False)
    t.join("u:a", 0.0)
    t.set_live(True, 10.0)
    t.set_live(True, 12.0)  # no change
    t.join("u:b", 14.0)
    t.set_live(False, 20.0)
    assert t.take(30.0).watch_ms == 10_000 + 6_000
    t.set_live(True, 40.0)
    assert t.take(41.0).watch_ms == 2_000


def test_compose_follows_the_definitions() -> None:
    """conversion, GPM, the watch-time cap, buyers across sales and the per-minute series."""
    start = 60_000 * 1000
    aud = {"viewers_now": 2, "viewers_peak": 7, "views": 9, "unique_viewers": 4, "watch_ms": 4 * 300_000,
           "comments": 3, "likes": 10, "minutes": {"1000:v": 7, "1000:c": 3, "1002:l": 10}}
    s1 = SaleFigures("sale", "sa1", "A", orders=3, paid_orders=2, units_sold=3, gmv_cents=3000, buyers={"u1", "u2"},
                     minutes={"1000:o": 3, "1001:g": 3000})
    s2 = SaleFigures("sale", "sa2", "B", orders=1, paid_orders=1, units_sold=1, gmv_cents=500, buyers={"u2"},
                     minutes={"1002:o": 1, "1002:g": 500})
    out = compose(aud, [s1, s2], start, start + 150_000, start + 999_000)
    assert out["buyers"] == 2 and out["gmv_cents"] == 3500 and out["orders"] == 4 and out["units_sold"] == 4
    assert out["conversion"] == 0.5 and out["gpm_cents"] == 3500 * 1000 // 9
    assert out["avg_watch_s"] == 150.0  # 300 s each, capped at the stream's 150 s
    assert [e["minute"] for e in out["series"]] == ["1970-01-01T16:40:00.000Z", "1970-01-01T16:41:00.000Z",
                                                     "1970-01-01T16:42:00.000Z"]
    assert [(e["viewers_max"], e["comments"], e["likes"], e["orders"], e["gmv_cents"]) for e in out["series"]] == [
        (7, 3, 0, 3, 0), (0, 0, 0, 0, 3000), (0, 0, 10, 1, 500)]
    empty = compose({**aud, "views": 0, "unique_viewers": 0}, [], None, None, start)
    assert (empty["conversion"], empty["gpm_cents"], empty["avg_watch_s"], empty["series"]) == (0, 0, 0.0, [])
    assert minute_of(start + 59_999) == 1000


@contextlib.asynccontextmanager
async def _socket(server: LiveServer, stream_id: str, user: str | None = None,
                  role: str = "viewer") -> AsyncIterator[ClientConnection]:
    token = server.token(user, role) if user else None
    async with websockets.connect(ws_url(server, stream_id, token)) as ws:
        first = await recv_events(ws)
        assert first[0]["type"] == "snapshot"
        yield ws


class Watch:
    """The test's own account of each identity's connected time (the union of its sockets' spans), as
    two bounds on what the server can have counted: `inner` from the snapshot's arrival (the server had
    the socket) to the start of the close, `outer` from before the connect to after the close."""

    def __init__(self) -> None:
        self.inner: dict[str, list[tuple[float, float]]] = {}
        self.outer: dict[str, list[tuple[float, float]]] = {}

    @contextlib.asynccontextmanager
    async def viewer(self, server: LiveServer, stream_id: str, ident: str,
                     user: str | None = None) -> AsyncIterator[ClientConnection]:
        t0 = time.monotonic()
        async with _socket(server, stream_id, user) as ws:
            t_in = time.monotonic()
            yield ws
            t_out = time.monotonic()
        self.inner.setdefault(ident, []).append((t_in, t_out))
        self.outer.setdefault(ident, []).append((t0, time.monotonic()))

    @staticmethod
    def mean_s(by_ident: dict[str, list[tuple[float, float]]]) -> float:
        total = 0.0
        for spans in by_ident.values():
            end = float("-inf")
            for a, b in sorted(spans):
                a = max(a, end)
                if b > a:
                    total += b - a
                end = max(end, b)
        return total / len(by_ident)


async def _stats(api: Api, server: LiveServer, stream_id: str, token: str) -> dict[str, Any]:
    st, body = await api.call("GET", f"/api/streams/{stream_id}/stats", token=token)
    assert st == 200, body
    return dict(body)


async def test_scripted_show_on_two_processes(settings: Settings) -> None:
    """Viewers on two processes, a host socket, comments (some refused), likes, reserves, a payment, a
    cancel and a hold expiry: every stats field, read from either process, matches what happened
    within moments; after the end and the last hold the figures turn final and stop moving."""
    srv_a, srv_b = await asyncio.gather(asyncio.to_thread(spawn_server, settings),
                                        asyncio.to_thread(spawn_server, settings))
    try:
        async with Api(srv_a) as api_a, Api(srv_b) as api_b:
            await _show(api_a, api_b)
    finally:
        await asyncio.gather(asyncio.to_thread(stop_server, srv_a), asyncio.to_thread(stop_server, srv_b))


async def _show(api_a: Api, api_b: Api) -> None:
    a, b = api_a.server, api_b.server
    ht = a.token("hostess", "host")
    s = await api_a.setup_sale(stock=10, per_user_limit=5, hold_s=60, host="hostess")
    sid, sale1, sku = s["stream_id"], s["sale_id"], s["sku"]
    st, sale2 = await api_b.call("POST", f"/api/streams/{sid}/sales", token=ht, json={
        "sku": sku, "price_cents": 500, "stock": 5, "per_user_limit": 5, "duration_s": 600, "hold_s": 2})
    assert st == 201
    sale2 = sale2["id"]
    assert (await api_b.call("POST", f"/api/sales/{sale2}/start", token=ht))[0] == 200

    async def stats(api: Api = api_a) -> dict[str, Any]:
        return await _stats(api, api.server, sid, ht)

    async def until(pred: Any, api: Api = api_a) -> dict[str, Any]:
        box: dict[str, Any] = {}

        async def check() -> bool:
            box["s"] = await stats(api)
            return bool(pred(box["s"]))

        await wait_for(check, MOVE_S)
        return box["s"]

    first = await stats()
    assert first["provisional"] is True and first["status"] == "live" and first["views"] == 0
    watch = Watch()
    async with contextlib.AsyncExitStack() as stack:
        host_ws = await stack.enter_async_context(_socket(a, sid, "hostess", "host"))
        alice = await stack.enter_async_context(watch.viewer(a, sid, "alice", "alice"))
        bob = await stack.enter_async_context(watch.viewer(b, sid, "bob", "bob"))
        carol = await stack.enter_async_context(watch.viewer(b, sid, "carol", "carol"))
        anon1 = await stack.enter_async_context(watch.viewer(a, sid, "anon1"))
        await stack.enter_async_context(watch.viewer(b, sid, "anon2"))
        # The host's socket never counts: 5 viewers, 5 identities.
        got = await until(lambda x: x["viewers_now"] == 5 and x["views"] == 5, api_b)
        assert got["viewers_peak"] == 5 and got["unique_viewers"] == 5
        async with watch.viewer(a, sid, "alice", "alice"):  # alice's second tab: a view, not a new viewer
            got = await until(lambda x: x["viewers_now"] == 6)
            assert (got["views"], got["unique_viewers"], got["viewers_peak"]) == (6, 5, 6)
        got = await until(lambda x: x["viewers_now"] == 5)
        assert got["viewers_peak"] == 6

        # Comments: accepted ones count (the host's too); anonymous, empty and rate-limited ones do not.
        for ws, text in ((alice, "hi"), (alice, "love it"), (bob, "price?"), (host_ws, "welcome!")):
            await ws.send(f'{{"type": "comment", "text": "{text}"}}')
        await anon1.send('{"type": "comment", "text": "anon"}')
        await bob.send('{"type": "comment", "text": "   "}')
        for i in range(7):  # a burst of 5 is allowed, then 1 per second
            await carol.send(f'{{"type": "comment", "text": "c{i}"}}')
        seen = await collect(bob, lambda ev: len(of_type(ev, "comment")) == 9 and len(of_type(ev, "error")) == 1)
        assert of_type(seen, "error")[0]["code"] == "invalid_comment"
        refused = of_type(await collect(carol, lambda ev: len(of_type(ev, "error")) == 2), "error")
        assert {e["code"] for e in refused} == {"rate_limited"}
        # Likes within each user's 50 per second; anonymous likes are refused.
        for ws, n in ((alice, 45), (bob, 20), (carol, 10), (anon1, 5)):
            await ws.send(f'{{"type": "like", "count": {n}}}')
        got = await until(lambda x: x["likes"] == 75 and x["comments"] == 9)

        # Orders over both processes: a payment, a cancel, an expiry.
        async def reserve(api: Api, sale: str, user: str, qty: int) -> str:
            st, o = await api.reserve(sale, user, f"k-{user}-{sale}", qty)
            assert st == 201, o
            return str(o["id"])

        async def act(api: Api, order: str, user: str, what: str) -> None:
            body = {"payment_method": "pm_card_visa"} if what == "pay" else None
            st, o = await api.call("POST", f"/api/orders/{order}/{what}", token=api.server.token(user), json=body)
            assert st == 200, o

        o1 = await reserve(api_a, sale1, "u1", 2)
        await act(api_b, o1, "u1", "pay")
        o2 = await reserve(api_b, sale1, "u2", 1)
        await act(api_a, o2, "u2", "cancel")
        o3 = await reserve(api_a, sale2, "u3", 1)  # left to expire (hold 2 s)
        o4 = await reserve(api_b, sale2, "u1", 1)
        await act(api_b, o4, "u1", "pay")
        o5 = await reserve(api_a, sale1, "u4", 3)
        await act(api_a, o5, "u4", "pay")
        await wait_for(lambda: _status(api_a, o3, "u3", "expired"), 10)
        statuses = {o: (await api_b.call("GET", f"/api/orders/{o}", token=b.token(u)))[1]["status"]
                    for o, u in ((o1, "u1"), (o2, "u2"), (o3, "u3"), (o4, "u1"), (o5, "u4"))}
        assert statuses == {o1: "paid", o2: "cancelled", o3: "expired", o4: "paid", o5: "paid"}

        got = await until(lambda x: x["orders"] == 5 and x["paid_orders"] == 3, api_b)
        assert (got["units_sold"], got["buyers"], got["gmv_cents"], got["refunded_cents"]) == (6, 2, 5500, 0)
        assert got["conversion"] == round(2 / 5, 4) and got["gpm_cents"] == 5500 * 1000 // 6
        assert got["products"] == [
            {"kind": "sale", "id": sale1, "sku": sku, "orders": 3, "paid_orders": 2, "units_sold": 5, "gmv_cents": 5000},
            {"kind": "sale", "id": sale2, "sku": sku, "orders": 2, "paid_orders": 1, "units_sold": 1, "gmv_cents": 500},
        ]
        series = got["series"]
        assert series and series[0]["minute"] <= got["started_at"] < _next_minute(series[0]["minute"])
        assert all(_next_minute(x["minute"]) == y["minute"] for x, y in zip(series, series[1:], strict=False))
        assert series[-1]["minute"] <= got["updated_at"] < _next_minute(series[-1]["minute"])
        assert [sum(e[k] for e in series) for k in ("comments", "likes", "orders", "gmv_cents")] == [9, 75, 5, 5500]
        assert max(e["viewers_max"] for e in series) == 6 and got["avg_watch_s"] > 0
    # Everyone left: nobody is watching, and the watch time is the sockets' own.
    got = await until(lambda x: x["viewers_now"] == 0)
    # Every leave is in once the figure reaches the inner bound; it never passes the outer one
    # (0.05: avg_watch_s has one decimal).
    got = await until(lambda x: x["avg_watch_s"] >= watch.mean_s(watch.inner) - 0.05)
    assert got["avg_watch_s"] <= watch.mean_s(watch.outer) + 0.05, (got["avg_watch_s"], watch.mean_s(watch.outer))
    assert (got["views"], got["unique_viewers"], got["viewers_peak"]) == (6, 5, 6)

    st, _ = await api_a.call("POST", f"/api/streams/{sid}/end", token=ht)
    assert st == 200
    final = await wait_for(lambda: _final(api_b, sid, ht), 15)
    assert final["status"] == "ended" and final["ended_at"]
    for k in ("views", "unique_viewers", "viewers_peak", "comments", "likes", "orders", "paid_orders",
              "units_sold", "buyers", "gmv_cents", "products"):
        assert final[k] == got[k], k
    # Final figures stay as they are: a late viewer and like change nothing but viewers_now.
    async with _socket(b, sid, "late") as late:
        await late.send('{"type": "like", "count": 3}')
        after = await until(lambda x: x["viewers_now"] == 1)
    assert {k: v for k, v in after.items() if k != "viewers_now"} == {k: v for k, v in final.items() if k != "viewers_now"}


async def _final(api: Api, stream_id: str, token: str) -> dict[str, Any] | None:
    body = await _stats(api, api.server, stream_id, token)
    return body if body["provisional"] is False else None


async def _status(api: Api, order: str, user: str, want: str) -> bool:
    st, o = await api.call("GET", f"/api/orders/{order}", token=api.server.token(user))
    return st == 200 and o["status"] == want


def _next_minute(iso: str) -> str:
    from datetime import datetime, timedelta

    t = datetime.fromisoformat(iso.replace("Z", "+00:00")) + timedelta(minutes=1)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


async def test_stats_access(api: Api) -> None:
    """The stream's host and admins read stats; other hosts, viewers and moderators get 403, no token
    401, an unknown stream 404 (error bodies in the usual shape)."""
    s = await api.setup_sale(host="owner")
    path = f"/api/streams/{s['stream_id']}/stats"
    for user, role in (("owner", "host"), ("root", "admin")):
        st, body = await api.call("GET", path, token=api.server.token(user, role))
        assert st == 200 and body["provisional"] is True and body["products"][0]["id"] == s["sale_id"]
    for user, role in (("other", "host"), ("owner", "viewer"), ("mod", "moderator")):
        st, err = await api.call("GET", path, token=api.server.token(user, role))
        assert st == 403 and err["error"] == "forbidden", (user, role)
    st, err = await api.call("GET", path)
    assert st == 401 and err["error"] == "unauthorized"
    for bad in ("stnope", "x" * 100):
        st, err = await api.call("GET", f"/api/streams/{bad}/stats", token=api.server.token("root", "admin"))
        assert st == 404 and err["error"] == "not_found"


async def test_order_figures_from_sql_once_events_left_redis(settings: Settings) -> None:
    """A sale whose order events left Redis (retention) before anyone read stats is counted from SQL,
    with the same figures."""
    import dataclasses

    import redis.asyncio as aioredis

    from commerce import keys as commerce_keys
    from tests.helpers import start_app_server

    async with start_app_server(dataclasses.replace(settings, sale_retention_s=1)) as srv, Api(srv) as api:
        s = await api.setup_sale(stock=10, per_user_limit=5, price_cents=700)
        ht, sale = s["host_token"], s["sale_id"]
        for user, qty in (("u1", 2), ("u2", 1), ("u3", 3)):
            st, o = await api.reserve(sale, user, f"k-{user}", qty)
            assert st == 201
            act = "cancel" if user == "u2" else "pay"
            st, _ = await api.call("POST", f"/api/orders/{o['id']}/{act}", token=srv.token(user),
                                   json={"payment_method": "pm_card_visa"})
            assert st == 200
        assert (await api.call("POST", f"/api/sales/{sale}/end", token=ht))[0] == 200
        r = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            await wait_for(lambda: _gone(r, commerce_keys.events(sale)), 15)
        finally:
            await r.aclose()
        got = await _stats(api, srv, s["stream_id"], ht)
    assert (got["orders"], got["paid_orders"], got["units_sold"], got["buyers"], got["gmv_cents"]) == (3, 2, 5, 2, 3500)
    assert got["products"][0]["orders"] == 3
    assert sum(e["orders"] for e in got["series"]) == 3 and sum(e["gmv_cents"] for e in got["series"]) == 3500


async def _gone(r: Any, key: str) -> bool:
    return not await r.exists(key)


async def test_auction_win_in_stats_sales_and_my_orders(api: Api) -> None:
    """An auction is a product of the stream's stats (provisional while it runs), is listed under
    `auctions` of the stream's sales, and its winner's order is in the winner's me/orders as kind
    `auction` with the stream; the loser sees nothing."""
    from tests.test_auctions import place, setup_auction

    a = await setup_auction(api, duration_s=5, hold_s=60, host="auctioneer")
    aid, sid, ht = a["id"], a["stream_id"], a["host_token"]
    assert (await place(api, aid, "alice", 2000, "k1"))[0] == 201
    assert (await place(api, aid, "bob", 1500, "k2"))[0] == 201
    st, listed = await api.call("GET", f"/api/streams/{sid}/sales")
    assert st == 200 and [x["id"] for x in listed["auctions"]] == [aid] and listed["sales"] == []
    running = await _stats(api, api.server, sid, ht)
    assert running["products"] == [{"kind": "auction", "id": aid, "sku": a["sku"], "orders": 0, "paid_orders": 0,
                                    "units_sold": 0, "gmv_cents": 0}]

    async def won() -> dict[str, Any] | None:
        st, view = await api.call("GET", f"/api/auctions/{aid}")
        return view if st == 200 and view["status"] == "sold" and view.get("order") else None

    view = await wait_for(won, 15)
    assert view["winner"] == "alice" and view["price_cents"] == 1600
    st, paid = await api.call("POST", f"/api/orders/{view['order']}/pay", token=api.server.token("alice"),
                              json={"payment_method": "pm_card_visa"})
    assert st == 200, paid
    got = await _stats(api, api.server, sid, ht)
    product = got["products"][0]
    assert (product["orders"], product["paid_orders"], product["units_sold"], product["gmv_cents"]) == (1, 1, 1, 1600)
    assert (got["orders"], got["paid_orders"], got["buyers"], got["gmv_cents"]) == (1, 1, 1, 1600)

    async def mine(user: str) -> list[dict[str, Any]]:
        st, body = await api.call("GET", "/api/me/orders", token=api.server.token(user))
        assert st == 200
        return list(body["orders"])

    orders = await wait_for(lambda: mine("alice"), 10)
    assert [(o["kind"], o["id"], o["auction"], o["stream_id"], o["status"], o["amount_cents"], o["sku"])
            for o in orders] == [("auction", view["order"], aid, sid, "paid", 1600, a["sku"])]
    assert "sale" not in orders[0] and orders[0]["currency"] == "USD"
    assert await mine("bob") == []
