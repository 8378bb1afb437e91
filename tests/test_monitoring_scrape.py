"""`/metrics` scraped from a real server before and after real purchases, payments, cancels, hold
expiries and a Redis outage: the right series move by exactly the right amounts."""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis

from commerce import keys
from livesale.config import Settings
from livesale.embedded_redis import EmbeddedRedis
from tests.helpers import Api, start_app_server, wait_for
from tests.metrics_scrape import Samples, delta, scrape, value

ORDERS_ROUTE = "/api/sales/{id}/orders"
PAY_ROUTE = "/api/orders/{id}/pay"


async def _scrape(api: Api) -> Samples:
    return await scrape(api.session, api.server.url)


async def _pay(api: Api, user: str, order_id: str, method: str) -> tuple[int, object]:
    return await api.call("POST", f"/api/orders/{order_id}/pay", token=api.server.token(user),
                          json={"payment_method": method})


async def _sale_units(api: Api, sale_id: str) -> dict[str, float]:
    s = await _scrape(api)
    return {st: value(s, "livesale_sale_units", sale=sale_id, state=st) for st in ("available", "held", "sold", "stock")}


async def test_reserve_outcomes_payments_and_cancel_move_their_series(api: Api) -> None:
    """Each reserve outcome, payment outcome and cancel moves its own counter by exactly one per call."""
    s = await api.setup_sale(stock=5, per_user_limit=4)
    sale = s["sale_id"]
    before = await _scrape(api)

    st, a = await api.reserve(sale, "alice", "k1", 2)
    assert st == 201
    assert (await api.reserve(sale, "alice", "k1", 2))[0] == 200  # duplicate
    assert (await api.reserve(sale, "alice", "k2", 3))[0] == 409  # limit_reached: 2 + 3 > 4
    assert (await api.reserve(sale, "alice", "k1", 1))[0] == 422  # same key, other quantity
    assert (await api.reserve(sale, "bob", "b1", 4))[0] == 409  # sold_out: 3 left
    st, b = await api.reserve(sale, "bob", "b2", 1)
    assert st == 201
    assert (await _pay(api, "alice", a["id"], "pm_card_visa"))[0] == 200
    assert (await _pay(api, "bob", b["id"], "pm_card_chargeDeclined"))[0] == 402
    st, _ = await api.call("POST", f"/api/orders/{b['id']}/cancel", token=api.server.token("bob"))
    assert st == 200
    assert (await _pay(api, "bob", b["id"], "pm_card_visa"))[0] == 409  # cancelled: not pending
    after = await _scrape(api)

    outcomes = {"reserved": 2, "duplicate": 1, "limit_reached": 1, "conflict": 1, "sold_out": 1, "not_active": 0}
    for outcome, n in outcomes.items():
        assert delta(before, after, "livesale_reserve_total", outcome=outcome) == n, outcome
    assert delta(before, after, "livesale_reserve_duration_seconds_count") == 6
    for outcome, n in {"paid": 1, "declined": 1, "not_pending": 1, "refunded": 0}.items():
        assert delta(before, after, "livesale_payments_total", outcome=outcome) == n, outcome
    assert delta(before, after, "livesale_orders_cancelled_total") == 1

    http = "livesale_http_requests_total"
    assert delta(before, after, http, route=ORDERS_ROUTE, method="POST", status="201") == 2
    assert delta(before, after, http, route=ORDERS_ROUTE, method="POST", status="200") == 1
    assert delta(before, after, http, route=ORDERS_ROUTE, method="POST", status="409") == 2
    assert delta(before, after, http, route=ORDERS_ROUTE, method="POST", status="422") == 1
    assert delta(before, after, http, route=PAY_ROUTE, method="POST", status="402") == 1
    assert delta(before, after, http, route=PAY_ROUTE, method="POST", status="409") == 1
    assert delta(before, after, "livesale_http_request_duration_seconds_count", route=ORDERS_ROUTE,
                 method="POST") == 6
    # The scrape that produced `before` is counted once it has been answered.
    assert delta(before, after, http, route="/metrics", method="GET", status="200") == 1

    # Units per open sale follow Redis: alice's 2 sold, bob's unit back after the cancel.
    want = {"available": 3.0, "held": 0.0, "sold": 2.0, "stock": 5.0}

    async def units_match() -> bool:
        return await _sale_units(api, sale) == want

    await wait_for(units_match, 5)
    assert value(await _scrape(api), "livesale_sale_invariant_violation_units", sale=sale) == 0


async def test_order_writer_counts_every_event_it_commits(api: Api, redis_url: str) -> None:
    """The writer's committed-events counter grows by exactly the number of order events in the sale's stream."""
    s = await api.setup_sale(stock=5)
    before = await _scrape(api)
    st, a = await api.reserve(s["sale_id"], "alice", "k1", 1)
    assert st == 201
    assert (await _pay(api, "alice", a["id"], "pm_card_visa"))[0] == 200
    r = aioredis.Redis.from_url(redis_url)
    try:
        events = await r.xlen(keys.events(s["sale_id"]))
    finally:
        await r.aclose()
    assert events >= 2  # the reserve and the payment

    async def all_written() -> bool:
        return delta(before, await _scrape(api), "livesale_order_writer_events_total") == events

    await wait_for(all_written, 10)
    after = await _scrape(api)
    assert delta(before, after, "livesale_sql_write_duration_seconds_count") >= 1

    async def nothing_pending() -> bool:
        return ("livesale_order_writer_pending", ()) in (s := await _scrape(api)) and value(
            s, "livesale_order_writer_pending") == 0

    await wait_for(nothing_pending, 10)


async def test_expired_hold_counts_once_and_returns_units(api: Api) -> None:
    """An unpaid hold that lapses moves holds_expired by one and its units back to available."""
    s = await api.setup_sale(stock=4, per_user_limit=3, hold_s=1)
    before = await _scrape(api)
    st, order = await api.reserve(s["sale_id"], "carol", "c1", 3)
    assert st == 201

    async def expired() -> bool:
        st, o = await api.call("GET", f"/api/orders/{order['id']}", token=api.server.token("carol"))
        return st == 200 and o["status"] == "expired"

    await wait_for(expired, 10)
    want = {"available": 4.0, "held": 0.0, "sold": 0.0, "stock": 4.0}

    async def units_back() -> bool:
        return await _sale_units(api, s["sale_id"]) == want

    await wait_for(units_back, 5)
    after = await _scrape(api)
    assert delta(before, after, "livesale_holds_expired_total") == 1
    assert delta(before, after, "livesale_reserve_total", outcome="reserved") == 1


async def test_sale_series_exist_only_while_the_sale_is_open(api: Api) -> None:
    """A sale not started answers not_active; once it has ended its per-sale series disappear (bounded labels)."""
    s = await api.setup_sale(stock=3, start=False)
    sale = s["sale_id"]
    before = await _scrape(api)
    assert (await api.reserve(sale, "dave", "d1", 1))[0] == 409
    assert delta(before, await _scrape(api), "livesale_reserve_total", outcome="not_active") == 1

    async def shown() -> bool:
        return (await _sale_units(api, sale))["stock"] == 3

    await wait_for(shown, 5)
    st, _ = await api.call("POST", f"/api/sales/{sale}/end", token=s["host_token"])
    assert st == 200

    async def gone() -> bool:
        samples = await _scrape(api)
        return not any(dict(labels).get("sale") == sale for _, labels in samples)

    await wait_for(gone, 5)


async def test_labels_never_carry_user_or_order_ids(api: Api) -> None:
    """After purchases and an unknown URL, no label value holds a user id or an order id; routes are templates."""
    s = await api.setup_sale(stock=5)
    st, o = await api.reserve(s["sale_id"], "user-zed-77", "z1", 1)
    assert st == 201
    assert (await api.call("GET", f"/api/orders/{o['id']}", token=api.server.token("user-zed-77")))[0] == 200
    assert (await api.call("GET", "/no/such/path/user-zed-77"))[0] == 404
    samples = await _scrape(api)
    label_values = {v for _, labels in samples for _, v in labels}
    assert not any("user-zed-77" in v or o["id"] in v for v in label_values)
    assert value(samples, "livesale_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert value(samples, "livesale_http_requests_total", route="/api/orders/{id}", method="GET", status="200") >= 1


async def test_redis_outage_counts_as_redis_errors(api: Api, redis_server: EmbeddedRedis) -> None:
    """A request that finds Redis down answers 503 and adds one to livesale_redis_errors_total{op="http"}."""
    s = await api.setup_sale(stock=2)
    before = await _scrape(api)
    redis_server.stop()
    try:
        st, body = await api.call("GET", f"/api/sales/{s['sale_id']}")
        assert st == 503 and body["error"] == "unavailable", body
        after = await _scrape(api)
    finally:
        redis_server.restart()
    assert delta(before, after, "livesale_redis_errors_total", op="http") == 1


async def test_no_metrics_switch_leaves_every_series_still(settings: Settings) -> None:
    """With metrics off (`--no-metrics`), purchases, payments and HTTP requests move no series at all."""
    async with start_app_server(dataclasses.replace(settings, metrics=False)) as srv, Api(srv) as api:
        s = await api.setup_sale(stock=3)
        before = await _scrape(api)
        st, o = await api.reserve(s["sale_id"], "erin", "e1", 1)
        assert st == 201
        assert (await _pay(api, "erin", o["id"], "pm_card_chargeDeclined"))[0] == 402
        assert (await api.call("GET", f"/api/sales/{s['sale_id']}"))[0] == 200
        after = await _scrape(api)
    moved = {k: v - before.get(k, 0.0) for k, v in after.items()
             if k[0].startswith("livesale_") and v != before.get(k, 0.0)}
    assert moved == {}
