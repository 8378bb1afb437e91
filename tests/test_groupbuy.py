"""Group-buys (docs/groupbuy.md) on a real server, real Redis and the built-in test provider: tiers,
joins, closing at each tier and at expiry, the money read back from the provider, declines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from commerce import group_money, keys
from commerce.orders import COMMERCE
from commerce.schema import group_orders, group_payments
from livesale.bus import log_key
from livesale.config import Settings
from livesale.services import SERVICES
from tests.groupbuy_helpers import TIERS, expire_now, join_group, money, open_group, setup_groupbuy
from tests.helpers import Api, LiveServer, wait_for
from tests.test_realtime_ws import collect, of_type, viewer


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(settings.redis_url or "")
    yield r
    await r.aclose()


async def units(api: Api, gb_id: str) -> dict[str, Any]:
    st, gb = await api.call("GET", f"/api/groupbuys/{gb_id}")
    assert st == 200, gb
    return gb


async def group_events(redis: aioredis.Redis, stream_id: str) -> list[dict[str, Any]]:
    out = []
    for _, f in await redis.xrange(log_key(stream_id)):
        ev = orjson.loads(f[b"d"])
        if ev["type"] == "group":
            out.append(ev)
    return out


async def fill(api: Api, gb_id: str, n: int, prefix: str = "u") -> tuple[str, list[str]]:
    """A group of n members (one leader, n-1 joiners); returns its id and the member order ids."""
    st, first = await open_group(api, gb_id, f"{prefix}0")
    assert st == 201, first
    members = [first["member"]]
    for i in range(1, n):
        st, body = await join_group(api, first["group"], f"{prefix}{i}")
        assert st == 201, body
        members.append(body["member"])
    return first["group"], members


@pytest.mark.parametrize("tiers", [
    [], [{"size": 1, "price_cents": 900}], [{"size": 2, "price_cents": 900}, {"size": 2, "price_cents": 800}],
    [{"size": 2, "price_cents": 900}, {"size": 3, "price_cents": 900}],
    [{"size": 3, "price_cents": 800}, {"size": 2, "price_cents": 900}],
    [{"size": 2, "price_cents": 0}], [{"size": 2.0, "price_cents": 900}], [{"size": 2}], "2:900", [[2, 900]],
    [{"size": 2, "price_cents": 900}] * 11, [{"size": 10**30, "price_cents": 900}],
])
async def test_bad_tiers_are_refused(api: Api, redis: aioredis.Redis, tiers: Any) -> None:
    """Tiers that are not sizes rising from 2 with prices falling get 422 invalid_tiers and create nothing."""
    s = await setup_groupbuy(api)
    st, body = await api.call("POST", f"/api/streams/{s['stream_id']}/groupbuys", token=s["host_token"],
                              json={"sku": s["sku"], "stock": 5, "tiers": tiers, "group_ttl_s": 600})
    assert st == 422 and body["error"] == "invalid_tiers", body
    assert await redis.smembers(keys.stream_groupbuys(s["stream_id"])) == {s["gb_id"].encode()}


@pytest.mark.parametrize("ttl", [59, 86401, "600", None])
async def test_bad_group_ttl_is_refused(api: Api, ttl: Any) -> None:
    """group_ttl_s outside 60..86400 (or not an integer) is a 422; a viewer may not create one (403)."""
    s = await setup_groupbuy(api)
    path = f"/api/streams/{s['stream_id']}/groupbuys"
    body = {"sku": s["sku"], "stock": 5, "tiers": TIERS, "group_ttl_s": ttl}
    st, err = await api.call("POST", path, token=s["host_token"], json=body)
    assert st == 422 and err["error"] == "validation_error", err
    st, err = await api.call("POST", path, token=api.server.token("v"), json=dict(body, group_ttl_s=600))
    assert st == 403


@pytest.mark.parametrize("size,price", [(2, 900), (3, 800), (5, 700)])
async def test_success_at_each_tier_pays_the_tier_and_refunds_the_difference(
        api: Api, redis: aioredis.Redis, size: int, price: int) -> None:
    """A group closing with `size` members: each was charged the first tier's 900 on joining, pays the
    tier reached and gets the difference back once; the units are sold."""
    s = await setup_groupbuy(api, stock=10)
    gid, members = await fill(api, s["gb_id"], size)
    if size < 5:
        st, g = await api.call("GET", f"/api/groups/{gid}")
        assert g["status"] == "open" and g["members"] == size and g["price_cents"] == price
        assert g["share_path"] == f"/g/{gid}" and g["next_tier"]["size"] > size
        await expire_now(redis, gid)

    async def closed() -> bool:
        st, g = await api.call("GET", f"/api/groups/{gid}")
        return bool(g["status"] == "succeeded")
    await wait_for(closed, timeout=10)

    async def settled() -> bool:
        for oid in members:
            st, o = await api.call("GET", f"/api/orders/{oid}", token=api.server.token(f"u{members.index(oid)}"))
            if o["refund_pending"]:
                return False
        return True
    await wait_for(settled, timeout=10)
    paid = await money(redis, members)
    for i, oid in enumerate(members):
        assert paid[oid] == (1, 900, 900 - price)
        st, o = await api.call("GET", f"/api/orders/{oid}", token=api.server.token(f"u{i}"))
        assert st == 200 and o["group"] == gid and o["status"] == "paid"
        assert (o["charged_cents"], o["refunded_cents"], o["amount_cents"]) == (900, 900 - price, price)
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (10 - size, 0, size)
    events = await group_events(redis, s["stream_id"])
    final = [e for e in events if e["status"] != "open"]
    assert [(e["status"], e["members"], e["price_cents"]) for e in final] == [("succeeded", size, price)]
    # One event per join; the join that fills the group is announced by the close.
    assert [e["members"] for e in events if e["status"] == "open"] == list(range(1, min(size + 1, 5)))
    assert all(isinstance(e["seq"], int) for e in events)


async def test_failure_at_expiry_refunds_everyone_in_full_and_returns_the_units(
        api: Api, redis: aioredis.Redis, server: LiveServer) -> None:
    """A group below the smallest tier at expiry fails: each member's charge refunded in full, once."""
    s = await setup_groupbuy(api, stock=4, tiers=[{"size": 3, "price_cents": 900}])
    gid, members = await fill(api, s["gb_id"], 2)
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (2, 2, 0)
    await expire_now(redis, gid)

    async def refunded() -> bool:
        return all(m == (1, 900, 900) for m in (await money(redis, members)).values())
    await wait_for(refunded, timeout=10)
    st, g = await api.call("GET", f"/api/groups/{gid}")
    assert g["status"] == "failed" and g["next_tier"] is None
    for i, oid in enumerate(members):
        st, o = await api.call("GET", f"/api/orders/{oid}", token=api.server.token(f"u{i}"))
        assert (o["status"], o["charged_cents"], o["refunded_cents"], o["amount_cents"]) == ("refunded", 900, 900, 0)
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (4, 0, 0)
    # The members are free to open a new group; SQL holds the record of the money.
    st, _ = await open_group(api, s["gb_id"], "u0", key="again")
    assert st == 201
    assert server.app is not None
    async with server.app[SERVICES].db.connect() as conn:
        rows = (await conn.execute(sa.select(group_payments).where(group_payments.c.order_id.in_(members)))).all()
        orders = (await conn.execute(sa.select(group_orders).where(group_orders.c.id.in_(members)))).all()
    assert sorted((r.kind, r.state, r.amount_cents) for r in rows) == [("charge", "done", 900)] * 2 + [
        ("refund", "done", 900)] * 2
    assert {(o.status, o.charged_cents, o.refunded_cents) for o in orders} == {("refunded", 900, 900)}


async def test_declined_cards_hold_nothing(api: Api, redis: aioredis.Redis) -> None:
    """A declined card, opening or joining (30 at once), is a 402 that leaves no member, no unit held
    and no idempotency key used; the same key then succeeds with a good card."""
    s = await setup_groupbuy(api, stock=5)
    st, err = await open_group(api, s["gb_id"], "d0", method="pm_card_chargeDeclined")
    assert st == 402 and err["error"] == "card_declined"
    gid, _ = await fill(api, s["gb_id"], 1)
    outs = await asyncio.gather(*(join_group(api, gid, f"d{i}", method="pm_card_chargeDeclinedInsufficientFunds")
                                  for i in range(1, 31)))
    # Members being charged hold their place: a joiner may find the group full meanwhile.
    assert {(st, body["error"]) for st, body in outs} <= {(402, "card_declined"), (409, "group_full")}
    assert sum(st == 402 for st, _ in outs) >= 4
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (4, 1, 0)
    st, g = await api.call("GET", f"/api/groups/{gid}")
    assert g["members"] == 1
    users = await redis.hkeys(keys.groupbuy_keys(s["gb_id"])[2])
    assert users == [b"u0"]
    st, ok = await open_group(api, s["gb_id"], "d0")  # the same key, now with a good card
    assert st == 201, ok
    st, j = await join_group(api, gid, "d1", method="pm_card_visa")
    assert st == 201, j
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (2, 3, 0)


async def test_join_refusals_and_idempotent_retries(api: Api) -> None:
    """Retries of a key answer 200 with the same member; a key reused elsewhere is 422; a user already in
    an open group, a full or closed group and an exhausted stock are 409s with their codes."""
    s = await setup_groupbuy(api, stock=6, tiers=[{"size": 2, "price_cents": 900}, {"size": 3, "price_cents": 800}])
    st, a = await open_group(api, s["gb_id"], "a", key="k")
    assert st == 201
    st, again = await open_group(api, s["gb_id"], "a", key="k")
    assert st == 200 and again["member"] == a["member"] and again["group"] == a["group"]
    st, err = await join_group(api, a["group"], "a", key="k")
    assert st == 422 and err["error"] == "idempotency_conflict"
    st, err = await open_group(api, s["gb_id"], "a", key="k2")
    assert st == 409 and err["error"] == "already_in_group"
    st, err = await open_group(api, s["gb_id"], "y", method="pm_card_nope")
    assert st == 422
    assert (await units(api, s["gb_id"]))["available"] == 5  # the unknown card held nothing
    st, err = await join_group(api, a["group"], "a", key="k3")
    assert st == 409 and err["error"] == "already_in_group"
    for u in ("b", "c"):
        st, _ = await join_group(api, a["group"], u)
        assert st == 201
    st, err = await join_group(api, a["group"], "d")
    assert st == 409 and err["error"] in ("group_full", "group_closed")
    st, err = await api.call("GET", f"/api/groups/{a['group']}")
    assert err["status"] == "succeeded"
    gid2, _ = await fill(api, s["gb_id"], 3, prefix="x")
    st, err = await open_group(api, s["gb_id"], "y")
    assert st == 409 and err["error"] == "sold_out"
    st, err = await join_group(api, s["gb_id"] + "-0000000000", "y")
    assert st == 404
    st, err = await api.call("POST", f"/api/groupbuys/{s['gb_id']}/groups", token=api.server.token("y"),
                             json={"payment_method": "pm_card_visa"})
    assert st == 422 and err["error"] == "missing_idempotency_key"
    st, err = await api.call("POST", f"/api/groupbuys/{s['gb_id']}/groups", token=s["host_token"],
                             json={"payment_method": "pm_card_visa"}, headers={"Idempotency-Key": "h"})
    assert st == 403
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (0, 0, 6)


async def test_concurrent_joins_never_overfill_or_double_book(api: Api, redis: aioredis.Redis) -> None:
    """160 joiners, each trying two groups at once, into 8 groups of at most 4 with stock for 24: no
    group over 4, no user in two groups that were open together, and available + in_groups + sold ==
    stock at every sampled instant and at the end."""
    stock = 24
    tiers = [{"size": 2, "price_cents": 900}, {"size": 4, "price_cents": 800}]
    s = await setup_groupbuy(api, stock=stock, tiers=tiers)
    gids = []
    for i in range(8):
        st, g = await open_group(api, s["gb_id"], f"leader{i}")
        assert st == 201, g
        gids.append(g["group"])
    samples: list[tuple[int, int, int]] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            gb = await units(api, s["gb_id"])
            samples.append((gb["available"], gb["in_groups"], gb["sold"]))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    outs = await asyncio.gather(*(join_group(api, gids[(i + k) % 8], f"j{i}") for i in range(160) for k in (0, 3)))
    done.set()
    await sampler
    assert len(samples) > 5
    assert all(a + g + sold == stock and min(a, g, sold) >= 0 for a, g, sold in samples), samples
    codes = {body.get("error") for st, body in outs if st != 201}
    assert codes <= {"group_full", "group_closed", "already_in_group", "sold_out"}, codes
    ks = keys.groupbuy_keys(s["gb_id"])
    groups = await redis.hgetall(ks[1])
    orders = await redis.hgetall(ks[4])
    joined = 0
    spans: dict[str, list[tuple[int, int]]] = {}  # user -> (joined ms, group closed ms) per membership
    for gid in gids:
        members = [m for m in groups[b"m:" + gid.encode()].decode().split(",") if m]
        assert len(members) <= 4 and int(groups[b"j:" + gid.encode()]) == len(members)
        joined += len(members)
        closed_ms = int(groups.get(b"cl:" + gid.encode(), b"9" * 15))
        for oid in members:
            user = orders[b"u:" + oid.encode()].decode()
            spans.setdefault(user, []).append((int(orders[b"c:" + oid.encode()]), closed_ms))
    for user, held in spans.items():
        held.sort()
        for (_, closed_first), (joined_next, _) in zip(held, held[1:], strict=False):
            assert joined_next >= closed_first, f"{user} was in two open groups"
    gb = await units(api, s["gb_id"])
    assert gb["available"] + gb["in_groups"] + gb["sold"] == stock
    assert joined == gb["in_groups"] + gb["sold"] == stock  # more joiners than units: every unit went
    assert sum(st == 201 for st, _ in outs) == joined - 8


async def test_two_closers_at_once_close_once(api: Api, redis: aioredis.Redis, server: LiveServer) -> None:
    """Twenty close calls at once on an expired group (plus the sweeper): one closes it, one event, and
    each member is refunded the difference exactly once."""
    s = await setup_groupbuy(api, stock=10)
    gid, members = await fill(api, s["gb_id"], 3)
    assert server.app is not None
    svc, provider = server.app[SERVICES], server.app[COMMERCE].provider
    await expire_now(redis, gid)
    results = await asyncio.gather(*(group_money.close_group(svc, provider, s["gb_id"], gid) for _ in range(20)))
    closed_by_sweeper = not any(results)
    assert sum(results) == 1 or closed_by_sweeper

    async def settled() -> bool:
        return all(m == (1, 900, 100) for m in (await money(redis, members)).values())
    await wait_for(settled, timeout=10)
    await asyncio.sleep(0.5)  # several sweeper ticks: nothing more may move
    assert all(m == (1, 900, 100) for m in (await money(redis, members)).values())
    assert [e["status"] for e in await group_events(redis, s["stream_id"])].count("succeeded") == 1
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (7, 0, 3)


async def test_end_closes_open_groups(api: Api, redis: aioredis.Redis) -> None:
    """Ending a group-buy closes every open group now (by its size) and refuses new groups and joins."""
    s = await setup_groupbuy(api, stock=10)
    ok_gid, ok_members = await fill(api, s["gb_id"], 2, prefix="a")
    bad_gid, bad_members = await fill(api, s["gb_id"], 1, prefix="b")
    st, gb = await api.call("POST", f"/api/groupbuys/{s['gb_id']}/end", token=s["host_token"])
    assert st == 200 and gb["status"] == "ended"
    st, err = await api.call("POST", f"/api/groupbuys/{s['gb_id']}/end", token=s["host_token"])
    assert st == 409 and err["error"] == "invalid_state"
    st, err = await open_group(api, s["gb_id"], "c")
    assert st == 409 and err["error"] == "groupbuy_not_active"
    st, err = await join_group(api, ok_gid, "c")
    assert st == 409 and err["error"] == "group_closed"
    assert (await api.call("GET", f"/api/groups/{ok_gid}"))[1]["status"] == "succeeded"
    assert (await api.call("GET", f"/api/groups/{bad_gid}"))[1]["status"] == "failed"

    async def settled() -> bool:
        m = await money(redis, ok_members + bad_members)
        return [m[o] for o in ok_members + bad_members] == [(1, 900, 0)] * 2 + [(1, 900, 900)]
    await wait_for(settled, timeout=10)
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"], gb["sold"]) == (8, 0, 2)

    async def retired() -> bool:
        return not await redis.sismember(keys.OPEN_GROUPBUYS, s["gb_id"])  # type: ignore[misc]
    await wait_for(retired, timeout=10)  # the sweeper stops following it


async def test_refs_are_recorded_per_member(api: Api, server: LiveServer) -> None:
    """A joiner's `ref` (the sharer) is kept on their order and in SQL; a self-referral is dropped; the
    order is the member's alone and cannot be paid or cancelled apart from its group (409)."""
    s = await setup_groupbuy(api)
    st, lead = await open_group(api, s["gb_id"], "alice", ref="alice")
    st, b = await join_group(api, lead["group"], "bob", ref="alice")
    assert st == 201
    st, o = await api.call("GET", f"/api/orders/{b['member']}", token=api.server.token("bob"))
    assert o["ref"] == "alice"
    st, o = await api.call("GET", f"/api/orders/{b['member']}", token=api.server.token("alice"))
    assert st == 404  # another user's order is not revealed
    for action in ("pay", "cancel"):
        st, err = await api.call("POST", f"/api/orders/{b['member']}/{action}", token=api.server.token("bob"),
                                 json={"payment_method": "pm_card_visa"})
        assert st == 409 and err["error"] == "order_not_pending" and err["status"] == "joined"
        st, _ = await api.call("POST", f"/api/orders/{b['member']}/{action}", token=api.server.token("alice"),
                               json={"payment_method": "pm_card_visa"})
        assert st == 404
    st, o = await api.call("GET", f"/api/orders/{lead['member']}", token=api.server.token("alice"))
    assert o["ref"] is None
    assert server.app is not None
    async with server.app[SERVICES].db.connect() as conn:
        refs = (await conn.execute(sa.select(group_orders.c.user_id, group_orders.c.ref))).all()
    assert sorted(refs) == [("alice", None), ("bob", "alice")]


async def test_member_orders_in_me_orders_and_groupbuys_in_stream_sales(api: Api, redis: aioredis.Redis) -> None:
    """GET /api/me/orders lists a member's order as kind `group` with its live money; a declined
    attempt is not listed; GET /api/streams/{id}/sales lists the group-buy under `groupbuys`."""
    s = await setup_groupbuy(api, stock=5)
    st, _ = await open_group(api, s["gb_id"], "m0", key="bad", method="pm_card_chargeDeclined")
    assert st == 402
    gid, (oid, _) = await fill(api, s["gb_id"], 2, prefix="m")
    await expire_now(redis, gid)

    async def refunded() -> bool:
        st, page = await api.call("GET", "/api/me/orders", token=api.server.token("m0"))
        return bool(page["orders"] and page["orders"][0]["refunded_cents"] == 0 and page["orders"][0]["status"] == "paid")
    await wait_for(refunded, timeout=10)
    st, page = await api.call("GET", "/api/me/orders", token=api.server.token("m0"))
    (o,) = page["orders"]
    assert (o["kind"], o["id"], o["group"], o["groupbuy"], o["stream_id"]) == ("group", oid, gid, s["gb_id"], s["stream_id"])
    assert (o["amount_cents"], o["charged_cents"]) == (900, 900)
    st, listed = await api.call("GET", f"/api/streams/{s['stream_id']}/sales")
    assert st == 200 and [g["id"] for g in listed["groupbuys"]] == [s["gb_id"]] and listed["sales"] == []


async def test_viewers_see_members_and_price_move_live(api: Api, server: LiveServer) -> None:
    """A viewer's WebSocket gets a `group` event (with seq) per join, the filling join's being the close."""
    s = await setup_groupbuy(api, tiers=[{"size": 2, "price_cents": 900}, {"size": 3, "price_cents": 800}])
    async with viewer(server, s["stream_id"], "watcher") as (ws, _first):
        gid, _ = await fill(api, s["gb_id"], 3)
        events = await collect(ws, lambda seen: any(e.get("status") == "succeeded" for e in of_type(seen, "group")))
    groups = of_type(events, "group")
    assert [(e["group"], e["members"], e["price_cents"], e["status"]) for e in groups] == [
        (gid, 1, 900, "open"), (gid, 2, 900, "open"), (gid, 3, 800, "succeeded")]
    seqs = [e["seq"] for e in groups]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


async def test_stream_stats_count_groupbuys_and_referrals(api: Api, redis: aioredis.Redis) -> None:
    """GET /api/streams/{id}/stats lists the group-buy as a product (members, paid at the tier price,
    refunds beside) and `referrals` per sharer, moving as members join and groups close."""
    s = await setup_groupbuy(api, stock=10)
    st, lead = await open_group(api, s["gb_id"], "alice")
    for u in ("bob", "cat"):
        st, _ = await join_group(api, lead["group"], u, ref="alice")
        assert st == 201
    st, solo = await open_group(api, s["gb_id"], "dan", ref="bob")
    assert st == 201

    async def stats() -> dict[str, Any]:
        st, body = await api.call("GET", f"/api/streams/{s['stream_id']}/stats", token=s["host_token"])
        assert st == 200, body
        return body  # type: ignore[no-any-return]
    before = await stats()
    (gb,) = [p for p in before["products"] if p["kind"] == "groupbuy"]
    assert (gb["id"], gb["orders"], gb["paid_orders"], gb["gmv_cents"]) == (s["gb_id"], 4, 0, 0)
    assert before["referrals"] == {"alice": 2, "bob": 1} and before["provisional"] is True
    await expire_now(redis, lead["group"])
    await expire_now(redis, solo["group"])

    async def closed() -> bool:
        after = await stats()
        return bool(after["gmv_cents"] == 2400 and after["refunded_cents"] == 300)  # dan's full refund is no paid order's
    await wait_for(closed, timeout=10)
    after = await stats()
    (gb,) = [p for p in after["products"] if p["kind"] == "groupbuy"]
    assert (gb["orders"], gb["paid_orders"], gb["units_sold"], gb["gmv_cents"]) == (4, 3, 3, 2400)
    assert after["buyers"] == 3 and after["referrals"] == {"alice": 2, "bob": 1}


async def test_stream_end_ends_its_groupbuys(api: Api) -> None:
    """Ending the stream ends its group-buy; the sweeper closes the open groups by their size."""
    s = await setup_groupbuy(api, stock=10)
    gid, _ = await fill(api, s["gb_id"], 2)
    st, _ = await api.call("POST", f"/api/streams/{s['stream_id']}/end", token=s["host_token"])
    assert st == 200
    assert (await units(api, s["gb_id"]))["status"] == "ended"

    async def closed() -> bool:
        return (await api.call("GET", f"/api/groups/{gid}"))[1]["status"] == "succeeded"
    await wait_for(closed, timeout=10)
    st, err = await open_group(api, s["gb_id"], "late")
    assert st == 409 and err["error"] == "groupbuy_not_active"


async def test_the_worked_example_of_the_docs(api: Api, redis: aioredis.Redis) -> None:
    """docs/groupbuy.md's worked example, step by step: the units and money of each row of its table,
    and the group-buy metrics it moves."""
    s = await setup_groupbuy(api, stock=10)

    async def row(available: int, in_groups: int, sold: int) -> None:
        gb = await units(api, s["gb_id"])
        assert (gb["available"], gb["in_groups"], gb["sold"]) == (available, in_groups, sold)
    st, ann = await open_group(api, s["gb_id"], "ann")
    gid = ann["group"]
    st, g = await api.call("GET", f"/api/groups/{gid}")
    assert (g["members"], g["price_cents"], g["next_tier"]) == (1, 900, {"size": 2, "price_cents": 900})
    await row(9, 1, 0)
    st, _ = await join_group(api, gid, "ben", method="pm_card_chargeDeclined")
    assert st == 402
    await row(9, 1, 0)
    st, ben = await join_group(api, gid, "ben", ref="ann")
    assert st == 201 and ben["charged_cents"] == 900
    await row(8, 2, 0)
    st, cat = await join_group(api, gid, "cat")
    st, g = await api.call("GET", f"/api/groups/{gid}")
    assert (g["members"], g["price_cents"], g["next_tier"]) == (3, 800, {"size": 5, "price_cents": 700})
    await row(7, 3, 0)
    await expire_now(redis, gid)
    members = {"ann": ann["member"], "ben": ben["member"], "cat": cat["member"]}

    async def settled() -> bool:
        return all(m == (1, 900, 100) for m in (await money(redis, list(members.values()))).values())
    await wait_for(settled, timeout=10)
    await row(7, 0, 3)

    async def orders_say_it() -> bool:
        # A refund is recorded on the order just after the provider made it (refund_pending meanwhile).
        views = [(await api.call("GET", f"/api/orders/{oid}", token=api.server.token(user)))[1]
                 for user, oid in members.items()]
        return all(not o.get("refund_pending") and o["refunded_cents"] == 100 for o in views)
    await wait_for(orders_say_it, timeout=10)
    for user, oid in members.items():
        st, o = await api.call("GET", f"/api/orders/{oid}", token=api.server.token(user))
        assert (o["status"], o["amount_cents"], o["charged_cents"], o["refunded_cents"]) == ("paid", 800, 900, 100)
    async with api.session.get(api.server.url + "/metrics") as r:
        metrics = await r.text()
    for line in ('livesale_group_joins_total{outcome="declined"}', 'livesale_groups_closed_total{status="succeeded"}',
                 'livesale_group_refunds_total{kind="difference"}'):
        assert line in metrics


async def test_bad_input_changes_nothing(api: Api, redis: aioredis.Redis) -> None:
    """Malformed or unauthorised requests get their 4xx with an error code, and leave the group-buy as
    it was; the server keeps serving."""
    s = await setup_groupbuy(api, stock=5)
    ht, path = s["host_token"], f"/api/streams/{s['stream_id']}/groupbuys"
    good = {"sku": s["sku"], "stock": 5, "tiers": TIERS, "group_ttl_s": 600}
    cases = [
        ("POST", path, ht, b"not json", None, 400),
        ("POST", path, ht, None, dict(good, sku="NOPE"), 404),
        ("POST", "/api/streams/st000000000000/groupbuys", ht, None, good, 404),
        ("POST", path, None, None, good, 401),
        ("POST", f"/api/groupbuys/{s['gb_id']}/groups", "viewer", None, {"payment_method": "pm_card_visa", "ref": "a b"}, 422),
        ("POST", f"/api/groupbuys/{s['gb_id']}/groups", "viewer", None, {"payment_method": 7}, 422),
        ("POST", f"/api/groupbuys/{s['gb_id']}/groups", "viewer", b"[1]", None, 400),
        ("POST", f"/api/groupbuys/{s['gb_id']}/groups", None, None, {"payment_method": "pm_card_visa"}, 401),
        ("POST", "/api/groupbuys/gb000000000000/groups", "viewer", None, {"payment_method": "pm_card_visa"}, 404),
        ("POST", "/api/groups/nope/members", "viewer", None, {"payment_method": "pm_card_visa"}, 404),
        ("GET", "/api/groups/nope", None, None, None, 404),
        ("GET", "/api/groupbuys/nope", None, None, None, 404),
        ("POST", f"/api/groupbuys/{s['gb_id']}/end", "viewer", None, None, 403),
        ("GET", "/api/orders/gb000000000000.0000000000000000", "viewer", None, None, 404),
    ]
    before = await redis.hgetall(keys.groupbuy(s["gb_id"]))
    for method, p, tok, data, body, want in cases:
        token = api.server.token("v") if tok == "viewer" else tok
        st, err = await api.call(method, p, token=token, json=body, data=data, headers={"Idempotency-Key": "k"})
        assert st == want and isinstance(err, dict) and err["error"] and err["message"], (p, st, err)
    assert await redis.hgetall(keys.groupbuy(s["gb_id"])) == before
    assert await redis.smembers(keys.stream_groupbuys(s["stream_id"])) == {s["gb_id"].encode()}
    st, _ = await open_group(api, s["gb_id"], "v", key="fresh")
    assert st == 201


async def test_same_key_at_the_same_instant_makes_one_member(api: Api, redis: aioredis.Redis) -> None:
    """Ten taps with one Idempotency-Key at once, opening and joining: one member each, one 201, the
    rest 200 with the same member, one charge at the provider, one unit held per member."""
    s = await setup_groupbuy(api, stock=5)
    opened = await asyncio.gather(*(open_group(api, s["gb_id"], "tap", key="same") for _ in range(10)))
    joined = await asyncio.gather(*(join_group(api, opened[0][1]["group"], "tap2", key="same2") for _ in range(10)))
    for outs in (opened, joined):
        assert sorted(st for st, _ in outs) == [200] * 9 + [201], outs
        assert len({b["member"] for _, b in outs}) == 1
    members = [opened[0][1]["member"], joined[0][1]["member"]]
    assert (await money(redis, members)) == {m: (1, 900, 0) for m in members}
    gb = await units(api, s["gb_id"])
    assert (gb["available"], gb["in_groups"]) == (3, 2)
