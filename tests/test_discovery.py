"""Discovery over HTTP (docs/api.md "Discovery"): stream listings and their paging, a stream's sales and
comment history, a user's own orders, unpinning; and the 404/403/422 answers to bad requests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from live import paging
from livesale.errors import Unprocessable
from tests.helpers import Api, wait_for
from tests.test_realtime_ws import collect, of_type, viewer


async def _stream(api: Api, host: str = "h1", title: str = "Show", start: bool = False) -> str:
    ht = api.server.token(host, "host")
    st, s = await api.call("POST", "/api/streams", token=ht, json={"title": title})
    assert st == 201, s
    if start:
        st, _ = await api.call("POST", f"/api/streams/{s['id']}/start", token=ht)
        assert st == 200
    return str(s["id"])


async def _page_all(api: Api, query: str, limit: int, between: Any = None) -> list[dict[str, Any]]:
    """Every page of GET /api/streams?{query}; `between()` runs after each page."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        path = f"/api/streams?limit={limit}" + (f"&{query}" if query else "") + (f"&cursor={cursor}" if cursor else "")
        st, body = await api.call("GET", path)
        assert st == 200, body
        assert len(body["streams"]) <= limit
        out += body["streams"]
        cursor = body["next"]
        if between is not None:
            await between()
        if cursor is None:
            return out


def test_paging_params_refuse_bad_values() -> None:
    """limit outside 1..100 or not ASCII digits, and cursors that are not ours, raise a 422."""
    for raw in ("0", "101", "-1", "1.5", "abc", "", "²", "١", "0001"):
        with pytest.raises(Unprocessable):
            paging.limit({"limit": raw}, 20)
    assert paging.limit({}, 20) == 20 and paging.limit({"limit": "100"}, 20) == 100
    good = paging.encode_cursor([1, "x"])
    assert paging.decode_cursor(good, (int, str)) == [1, "x"]
    for raw in ("", "!!", "e30", good + "A", paging.encode_cursor([True, "x"]), paging.encode_cursor(["1", "x"]),
                paging.encode_cursor([1]), "x" * 600, paging.encode_cursor([2**53, "x"]),
                paging.encode_cursor([-1, "x"])):
        with pytest.raises(Unprocessable):
            paging.decode_cursor(raw, (int, str))


@given(st.text(max_size=700), st.text(max_size=8))
def test_any_cursor_or_limit_text_is_a_value_or_a_422(raw: str, lim: str) -> None:
    """Whatever text arrives as a cursor or limit, parsing gives a value of the right shape or raises
    Unprocessable, never anything else."""
    try:
        parts = paging.decode_cursor(raw, (int, str, int, int, str))
    except Unprocessable:
        pass
    else:
        assert parts is not None and [type(p) for p in parts] == [int, str, int, int, str]
    try:
        assert 1 <= paging.limit({"limit": lim}, 20) <= 100
    except Unprocessable:
        pass


async def test_streams_listed_by_status_newest_first(api: Api) -> None:
    """No status: live streams (latest started first), then scheduled (latest created first); each
    status filter lists only its own, ended ones latest ended first."""
    a = await _stream(api, title="a")
    b = await _stream(api, title="b")
    c = await _stream(api, title="c")
    d = await _stream(api, title="d")
    e = await _stream(api, title="e")
    ht = api.server.token("h1", "host")
    for sid in (c, a):  # a started last
        assert (await api.call("POST", f"/api/streams/{sid}/start", token=ht))[0] == 200
    for sid in (e, b):  # b ended last
        assert (await api.call("POST", f"/api/streams/{sid}/end", token=ht))[0] == 200
    st, body = await api.call("GET", "/api/streams")
    assert st == 200 and body["next"] is None
    assert [s["id"] for s in body["streams"]] == [a, c, d]
    assert [s["status"] for s in body["streams"]] == ["live", "live", "scheduled"]
    assert {"title", "host", "viewers", "likes", "pinned", "sales"} <= set(body["streams"][0])
    ids = {q: [s["id"] for s in (await api.call("GET", f"/api/streams?status={q}"))[1]["streams"]]
           for q in ("live", "scheduled", "ended")}
    assert ids == {"live": [a, c], "scheduled": [d], "ended": [b, e]}


async def test_paging_lists_every_stream_once_while_streams_change(api: Api) -> None:
    """Paging two at a time while other streams are created, started and ended between pages
    returns each stream of the listing's moment exactly once, and nothing created after it."""
    ht = api.server.token("h1", "host")
    live_ids = [await _stream(api, start=True) for _ in range(5)]
    sched_ids = [await _stream(api) for _ in range(6)]
    created_later: list[str] = []
    to_start = list(sched_ids)

    async def churn() -> None:
        created_later.append(await _stream(api, start=True))  # new, and live: newest of all
        created_later.append(await _stream(api))
        if to_start:  # a scheduled stream not yet listed goes live
            assert (await api.call("POST", f"/api/streams/{to_start.pop()}/start", token=ht))[0] == 200

    listed = await _page_all(api, "", 2, churn)
    ids = [s["id"] for s in listed]
    assert len(ids) == len(set(ids))
    assert ids == live_ids[::-1] + sched_ids[::-1]
    assert not set(created_later) & set(ids)
    # The same under a status filter, with starts and ends racing the pages.
    live_now = [s["id"] for s in (await api.call("GET", "/api/streams?status=live&limit=100"))[1]["streams"]]
    live_then = set(live_now)

    async def race() -> None:
        await asyncio.gather(_stream(api, start=True), _stream(api, start=True),
                             api.call("POST", f"/api/streams/{live_now.pop()}/end", token=ht))

    again = [s["id"] for s in await _page_all(api, "status=live", 3, race)]
    assert len(again) == len(set(again)) and set(again) == live_then


async def test_bad_listing_requests_are_422(api: Api) -> None:
    """Bad limit, status or cursor (or a cursor of another filter) answer 422 with the error shape."""
    for _ in range(3):
        await _stream(api)
    st, body = await api.call("GET", "/api/streams?status=scheduled&limit=1")
    assert st == 200 and body["next"]
    for q in ("limit=0", "limit=101", "limit=x", "status=paused", "status=", "cursor=bogus",
              f"cursor={body['next']}", f"status=live&cursor={body['next']}", "cursor=" + "A" * 40,
              "cursor=" + paging.encode_cursor([2**62, "", 0, 2**62, "st"]),
              "cursor=" + paging.encode_cursor([1, "", 7, 1, "st"])):
        st, err = await api.call("GET", f"/api/streams?{q}")
        assert st == 422 and err["error"] == "validation_error" and err["message"], (q, err)
    for cur in ("nope", paging.encode_cursor([10**17, "x"])):
        st, err = await api.call("GET", f"/api/me/orders?cursor={cur}", token=api.server.token("u1"))
        assert st == 422 and err["error"] == "validation_error"
    sid = await _stream(api)
    for q in ("limit=0", "before=0", "before=x", "limit=1000"):
        st, err = await api.call("GET", f"/api/streams/{sid}/comments?{q}")
        assert st == 422 and err["error"] == "validation_error", q


async def test_unknown_stream_is_404(api: Api) -> None:
    """Sales, comments and unpin of a stream that does not exist answer 404 not_found."""
    for method, path in (("GET", "/api/streams/nope/sales"), ("GET", "/api/streams/nope/comments"),
                         ("DELETE", "/api/streams/nope/pin"), ("GET", "/api/streams/" + "x" * 80 + "/sales")):
        st, err = await api.call(method, path, token=api.server.token("h1", "host"))
        assert st == 404 and err["error"] == "not_found", path


async def test_stream_sales_oldest_first(api: Api) -> None:
    """A stream's sales come oldest first, whatever their status; another stream's are not among them."""
    s = await api.setup_sale(start=False)
    ht, sid = s["host_token"], s["stream_id"]
    made = [s["sale_id"]]
    for _ in range(3):
        st, sale = await api.call("POST", f"/api/streams/{sid}/sales", token=ht, json={
            "sku": s["sku"], "price_cents": 100, "stock": 5, "per_user_limit": 1, "duration_s": 60, "hold_s": 30})
        assert st == 201
        made.append(sale["id"])
    await api.call("POST", f"/api/sales/{made[1]}/start", token=ht)
    await api.call("POST", f"/api/sales/{made[2]}/end", token=ht)
    await api.setup_sale()  # another stream's sale
    st, body = await api.call("GET", f"/api/streams/{sid}/sales")
    assert st == 200 and [x["id"] for x in body["sales"]] == made
    assert [x["status"] for x in body["sales"]] == ["scheduled", "active", "ended", "scheduled"]
    assert all(x["stream_id"] == sid and "available" in x for x in body["sales"])


async def test_comment_history_pages_newest_first_without_deleted(api: Api) -> None:
    """Comments come newest first, `before` pages back by seq, deleted comments are left out."""
    sid = await _stream(api, start=True)
    seen: list[dict[str, Any]] = []
    async with viewer(api.server, sid) as (watcher, _):
        for i in range(7):  # one commenter each (comment rate limits are per user), in a known order
            async with viewer(api.server, sid, f"carl{i}") as (ws, _):
                await ws.send(f'{{"type": "comment", "text": "c{i}"}}')
                seen += await collect(watcher, lambda ev, i=i: any(e.get("text") == f"c{i}" for e in ev))
    by_text = {e["text"]: e for e in of_type(seen, "comment")}
    st, _ = await api.call("DELETE", f"/api/streams/{sid}/comments/{by_text['c5']['id']}",
                           token=api.server.token("h1", "host"))
    assert st == 200
    st, body = await api.call("GET", f"/api/streams/{sid}/comments?limit=3")
    assert st == 200 and [c["text"] for c in body["comments"]] == ["c6", "c4", "c3"]
    before = body["comments"][-1]["seq"]
    st, body = await api.call("GET", f"/api/streams/{sid}/comments?limit=3&before={before}")
    assert [c["text"] for c in body["comments"]] == ["c2", "c1", "c0"]
    assert body["comments"][0]["user"] == "carl2" and body["comments"][0]["ts"]
    st, body = await api.call("GET", f"/api/streams/{sid}/comments?before={body['comments'][-1]['seq']}")
    assert st == 200 and body["comments"] == []


async def test_my_orders_are_only_mine(api: Api) -> None:
    """Many buyers at once: each user's me/orders lists exactly their own orders, newest first, with
    sale and stream_id; paging covers them once; a payment shows at once; no token is 401."""
    s = await api.setup_sale(stock=200, per_user_limit=10)
    s2 = await api.setup_sale(stock=200, per_user_limit=10)
    users = [f"buyer{i}" for i in range(8)]
    made: dict[str, set[str]] = {u: set() for u in users}

    async def buy(u: str, sale: str, k: int) -> None:
        st, o = await api.reserve(sale, u, f"{u}-{sale}-{k}")
        assert st == 201, o
        made[u].add(o["id"])

    await asyncio.gather(*(buy(u, sale, k) for u in users for sale in (s["sale_id"], s2["sale_id"]) for k in range(3)))

    async def all_orders(u: str) -> list[dict[str, Any]]:
        out, cursor = [], None
        while True:
            st, body = await api.call("GET", "/api/me/orders?limit=4" + (f"&cursor={cursor}" if cursor else ""),
                                      token=api.server.token(u))
            assert st == 200, body
            out += body["orders"]
            cursor = body["next"]
            if cursor is None:
                return out

    for u in users:  # the order writer commits within moments
        await wait_for(lambda u=u: _count(all_orders(u), len(made[u])), timeout=10)
        got = await all_orders(u)
        assert [o["id"] for o in got] and {o["id"] for o in got} == made[u] and len(got) == len(made[u])
        keys = [(o["created_at"], o["id"]) for o in got]
        assert keys == sorted(keys, reverse=True)
        for o in got:
            assert o["kind"] == "sale" and o["stream_id"] == {s["sale_id"]: s["stream_id"],
                                                              s2["sale_id"]: s2["stream_id"]}[o["sale"]]
            assert o["status"] == "reserved" and o["expires_at"] and o["amount_cents"] == 1000
    paid = next(iter(made["buyer0"]))
    st, _ = await api.call("POST", f"/api/orders/{paid}/pay", token=api.server.token("buyer0"),
                           json={"payment_method": "pm_card_visa"})
    assert st == 200
    got = {o["id"]: o for o in await all_orders("buyer0")}
    assert got[paid]["status"] == "paid" and got[paid]["expires_at"] is None
    st, body = await api.call("GET", "/api/me/orders", token=api.server.token("nobody"))
    assert st == 200 and body == {"orders": [], "next": None}
    st, err = await api.call("GET", "/api/me/orders")
    assert st == 401 and err["error"] == "unauthorized"


async def _count(orders: Any, n: int) -> bool:
    return len(await orders) == n


async def test_unpin_tells_viewers(api: Api) -> None:
    """The host unpins: the view says pinned null and viewers get `pin` {product: null}; others 403."""
    s = await api.setup_sale()
    ht, sid = s["host_token"], s["stream_id"]
    assert (await api.call("POST", f"/api/streams/{sid}/pin", token=ht, json={"sku": s["sku"]}))[0] == 200
    async with viewer(api.server, sid) as (ws, first):
        assert first[0]["pinned"]["sku"] == s["sku"]
        for tok in (api.server.token("other", "host"), api.server.token("v1")):
            st, err = await api.call("DELETE", f"/api/streams/{sid}/pin", token=tok)
            assert st == 403 and err["error"] == "forbidden"
        st, view = await api.call("DELETE", f"/api/streams/{sid}/pin", token=ht)
        assert st == 200 and view["pinned"] is None
        seen = await collect(ws, lambda ev: bool(of_type(ev, "pin")))
        assert of_type(seen, "pin")[0]["product"] is None and of_type(seen, "pin")[0]["seq"]
    st, view = await api.call("GET", f"/api/streams/{sid}")
    assert view["pinned"] is None
    async with viewer(api.server, sid) as (_ws, first):
        assert first[0]["pinned"] is None
    st, err = await api.call("DELETE", f"/api/streams/{sid}/pin")
    assert st == 401

