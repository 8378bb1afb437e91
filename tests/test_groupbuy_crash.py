"""Group-buy money across real process deaths (SIGKILL of a `livesale serve`): a settler killed
between refunds is finished by the next process with every refund made exactly once, and a joiner
killed between its charge and its confirmation is confirmed by another process's sweeper."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from commerce import group_money, keys, payments
from commerce import groupbuys as gbm
from commerce.orders import COMMERCE
from commerce.schema import group_payments
from livesale.bus import log_key
from livesale.config import Settings
from livesale.services import SERVICES
from tests.groupbuy_helpers import expire_now, join_group, money, open_group, refund_count, setup_groupbuy
from tests.helpers import Api, LiveServer, spawn_server, start_app_server, stop_server, wait_for

FAST = {"LIVESALE_GROUP_LEASE_S": "3", "LIVESALE_GROUP_PENDING_S": "1", "LIVESALE_SETTLE_GRACE_S": "1"}


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(settings.redis_url or "")
    yield r
    await r.aclose()


@pytest.fixture
def servers() -> Iterator[list[LiveServer]]:
    started: list[LiveServer] = []
    yield started
    for srv in started:
        stop_server(srv)


async def sql_rows(settings: Settings, kind: str) -> list[tuple[str, str]]:
    engine = create_async_engine(settings.sql_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(group_payments.c.order_id, group_payments.c.state)
                                       .where(group_payments.c.kind == kind))).all()
    finally:
        await engine.dispose()
    return sorted((r.order_id, r.state) for r in rows)


async def test_settler_killed_between_refunds_is_finished_once(
        settings: Settings, redis: aioredis.Redis, servers: list[LiveServer]) -> None:
    """SIGKILL after the first close refund, before its record: a new process refunds the rest, and
    every member's difference is refunded exactly once (one refund per charge at the provider)."""
    a = spawn_server(settings, extra_env=dict(FAST, LIVESALE_GROUP_REFUND_DELAY="2"))
    servers.append(a)
    async with Api(a) as api:
        s = await setup_groupbuy(api, stock=10)
        st, lead = await open_group(api, s["gb_id"], "u0")
        assert st == 201, lead
        members = [lead["member"]]
        for i in (1, 2):
            st, body = await join_group(api, lead["group"], f"u{i}")
            assert st == 201, body
            members.append(body["member"])
    await expire_now(redis, lead["group"])

    async def first_refund() -> bool:
        return len(await payments.TestProvider(redis).refunds()) >= 1
    await wait_for(first_refund, timeout=10, interval=0.02)
    stop_server(a, signal.SIGKILL)
    assert len(await payments.TestProvider(redis).refunds()) == 1
    assert [state for _, state in await sql_rows(settings, "refund")] == ["open"]  # refunded, not recorded
    assert await redis.sismember(keys.groupbuy_keys(s["gb_id"])[7], lead["group"])

    b = spawn_server(settings, extra_env=FAST)
    servers.append(b)

    async def settled() -> bool:
        return not await redis.sismember(keys.groupbuy_keys(s["gb_id"])[7], lead["group"])  # type: ignore[misc]
    await wait_for(settled, timeout=20)
    paid = await money(redis, members)
    assert all(m == (1, 900, 100) for m in paid.values()), paid
    charges = {c.id for c in (await payments.TestProvider(redis).charges()).values()}
    assert set((await refund_count(redis, charges)).values()) == {1}
    assert await sql_rows(settings, "refund") == sorted((oid, "done") for oid in members)
    async with Api(b) as api:
        for i, oid in enumerate(members):
            st, o = await api.call("GET", f"/api/orders/{oid}", token=b.token(f"u{i}"))
            assert (o["status"], o["charged_cents"], o["refunded_cents"], o["amount_cents"]) == ("paid", 900, 100, 800)
            assert o["refund_pending"] is False


async def test_joiner_killed_after_its_charge_is_confirmed_by_another_process(
        settings: Settings, redis: aioredis.Redis, servers: list[LiveServer]) -> None:
    """SIGKILL between a joiner's charge and its confirmation: another process's sweeper finds the
    charge and confirms the member (unit kept, money kept)."""
    a = spawn_server(settings, extra_env=dict(FAST, LIVESALE_GROUP_CHARGE_DELAY="30"))
    servers.append(a)
    async with Api(a) as api:
        s = await setup_groupbuy(api, stock=10)
        join = asyncio.create_task(open_group(api, s["gb_id"], "u0"))

        async def charged() -> bool:
            return len(await payments.TestProvider(redis).charges()) == 1
        await wait_for(charged, timeout=10, interval=0.02)
        stop_server(a, signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 - the connection dies with the server
            await join
    ks = keys.groupbuy_keys(s["gb_id"])
    (oid,) = [o[2:].decode() for o in await redis.hkeys(ks[4]) if o.startswith(b"s:")]
    assert await redis.hget(ks[4], "s:" + oid) == b"pending"
    b = spawn_server(settings, extra_env=FAST)
    servers.append(b)

    async def confirmed() -> bool:
        return await redis.hget(ks[4], "s:" + oid) == b"joined"  # type: ignore[misc]
    await wait_for(confirmed, timeout=20)
    assert (await money(redis, [oid]))[oid] == (1, 900, 0)
    async with Api(b) as api:
        st, gb = await api.call("GET", f"/api/groupbuys/{s['gb_id']}")
        assert (gb["available"], gb["in_groups"], gb["sold"]) == (9, 1, 0)
        gid = (await redis.hget(ks[4], "g:" + oid)).decode()
        st, g = await api.call("GET", f"/api/groups/{gid}")
        assert g["members"] == 1 and g["status"] == "open"
    assert await sql_rows(settings, "charge") == [(oid, "done")]


async def test_joiner_dead_before_its_charge_is_released_and_a_late_charge_refunded(
        settings: Settings, redis: aioredis.Redis) -> None:
    """A member held by a process that died before charging is released by the sweeper (unit back, key
    free); a charge that process then makes anyway (recorded open, never confirmed) is refunded in
    full by the sweeper's pass over open charge rows, once."""
    fast = dataclasses.replace(settings, group_pending_s=0.3, settle_grace_s=0.2, settle_interval_s=0.1)
    async with start_app_server(fast) as srv, Api(srv) as api:
        assert srv.app is not None
        svc = srv.app[SERVICES]
        s = await setup_groupbuy(api, stock=3)
        ks = keys.groupbuy_keys(s["gb_id"])
        oid = gbm.new_order_id(s["gb_id"])
        # The dead process's first step: the unit held, then nothing.
        r = await gbm.JOIN(svc.redis, ks, ["u0", "k", "", "pm_card_visa", "", oid, gbm.new_group_id(s["gb_id"])])
        assert r[0] == 0  # type: ignore[index]
        st, gb = await api.call("GET", f"/api/groupbuys/{s['gb_id']}")
        assert (gb["available"], gb["in_groups"]) == (2, 1)

        async def released() -> bool:
            return await redis.hget(ks[4], "s:" + oid) == b"declined"  # type: ignore[misc]
        await wait_for(released, timeout=10)
        st, gb = await api.call("GET", f"/api/groupbuys/{s['gb_id']}")
        assert (gb["available"], gb["in_groups"], gb["sold"]) == (3, 0, 0)
        # ...and then its charge, recorded first as every charge is, lands after all.
        await group_money._open_payment(svc.db, oid, "charge", "pm_card_visa", 900, "USD", None)
        await srv.app[COMMERCE].provider.charge(900, "USD", "pm_card_visa", oid)

        async def refunded() -> bool:
            return (await money(redis, [oid]))[oid] == (1, 900, 900)
        await wait_for(refunded, timeout=10)
        await asyncio.sleep(0.5)  # more sweeper passes move nothing more
        assert len(await payments.TestProvider(redis).refunds()) == 1
        assert await sql_rows(settings, "charge") == [(oid, "refunded")]
        st, again = await open_group(api, s["gb_id"], "u0", key="k")  # the key was freed with the unit
        assert st == 201, again


async def test_two_processes_sweeping_close_once(
        settings: Settings, redis: aioredis.Redis, servers: list[LiveServer]) -> None:
    """Two `livesale serve` processes sweeping every 20 ms both find a group due: it closes once, is
    announced once, and each member's difference is refunded once."""
    fast = dataclasses.replace(settings, sweep_interval_s=0.02)
    a, b = spawn_server(fast, extra_env=FAST), spawn_server(fast, extra_env=FAST)
    servers += [a, b]
    async with Api(a) as api:
        s = await setup_groupbuy(api, stock=10)
        st, lead = await open_group(api, s["gb_id"], "u0")
        members = [lead["member"]]
        for i in (1, 2):
            st, body = await join_group(api, lead["group"], f"u{i}")
            assert st == 201, body
            members.append(body["member"])
    await expire_now(redis, lead["group"])

    async def settled() -> bool:
        return all(m == (1, 900, 100) for m in (await money(redis, members)).values())
    await wait_for(settled, timeout=15)
    await asyncio.sleep(0.5)  # many more sweeps of both processes: nothing more moves
    assert all(m == (1, 900, 100) for m in (await money(redis, members)).values())
    charges = {c.id for c in (await payments.TestProvider(redis).charges()).values()}
    assert set((await refund_count(redis, charges)).values()) == {1}
    log = [orjson.loads(f[b"d"]) for _, f in await redis.xrange(log_key(s["stream_id"]))]
    assert [e["status"] for e in log if e["type"] == "group" and e["status"] != "open"] == ["succeeded"]
