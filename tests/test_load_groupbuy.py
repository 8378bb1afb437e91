"""The group-buy verifier and rush (load/groupbuy_verify.py, load/groupbuy.py): the verdict passes on a
group-buy after real traffic and names each corruption of its units or money; the rush runs end to end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from commerce import keys
from livesale.config import Settings
from load import groupbuy_verify
from tests.groupbuy_helpers import expire_now, join_group, open_group, setup_groupbuy
from tests.helpers import Api, wait_for


async def _traffic(api: Api, redis: aioredis.Redis) -> str:
    """A succeeded group, a failed one, an open one and declined cards, all through the HTTP API."""
    s = await setup_groupbuy(api, stock=10)
    gids = []
    for lead, joiners in (("a", ["b", "c"]), ("d", []), ("e", ["f"])):
        st, g = await open_group(api, s["gb_id"], lead)
        assert st == 201, g
        gids.append(g["group"])
        for u in joiners:
            st, _ = await join_group(api, g["group"], u, ref=lead)
            assert st == 201
    st, _ = await join_group(api, gids[2], "x", method="pm_card_chargeDeclined")
    assert st == 402
    await expire_now(redis, gids[0])
    await expire_now(redis, gids[1])

    async def settled() -> bool:
        return not await redis.scard(keys.groupbuy_keys(s["gb_id"])[7]) and (
            await redis.hget(keys.groupbuy_keys(s["gb_id"])[1], "s:" + gids[1]) == b"failed")
    await wait_for(settled, timeout=10)
    return str(s["gb_id"])


async def _corrupt_units(redis: aioredis.Redis, gb: str) -> None:
    await redis.hincrby(keys.groupbuy(gb), "in_groups", -1)  # type: ignore[misc]


async def _refund_twice(redis: aioredis.Redis, gb: str) -> None:
    entry = (await redis.lrange("{testpay}:refund_log", 0, 0))[0]  # type: ignore[misc]
    await redis.rpush("{testpay}:refund_log", entry)  # type: ignore[misc]


async def _order_lies(redis: aioredis.Redis, gb: str) -> None:
    orders = keys.groupbuy_keys(gb)[4]
    paid = [k[2:].decode() for k, v in (await redis.hgetall(orders)).items() if k.startswith(b"s:") and v == b"paid"]
    await redis.hset(orders, "rf:" + paid[0], 0)  # type: ignore[misc]


async def _overfull(redis: aioredis.Redis, gb: str) -> None:
    groups = keys.groupbuy_keys(gb)[1]
    h = await redis.hgetall(groups)
    gid = next(k[2:].decode() for k, v in h.items() if k.startswith(b"s:") and v == b"open")
    await redis.hset(groups, mapping={"n:" + gid: 6, "j:" + gid: 6})  # type: ignore[misc]


async def test_verifier_passes_on_real_traffic(api: Api, settings: Settings) -> None:
    """After joins, a success, a failure, an open group and a decline, every check passes."""
    redis = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        gb = await _traffic(api, redis)
        report = await groupbuy_verify.check(settings.redis_url or "", settings.database_url or "", gb, wait_s=5)
    finally:
        await redis.aclose()
    assert report.ok, report.text()
    assert report.money_checked and report.groups == {"succeeded": 1, "failed": 1, "open": 1}
    assert (report.charged_cents, report.refunded_cents) == (6 * 900, 3 * 100 + 900)
    assert report.members == {"paid": 3, "refunded": 1, "joined": 2, "declined": 1}


@pytest.mark.parametrize("corrupt,named", [
    (_corrupt_units, "units"), (_refund_twice, "provider refunded"), (_order_lies, "charged 900 - refunded 0"),
    (_overfull, "members holding units"),
])
async def test_verifier_names_each_corruption(api: Api, settings: Settings,
                                              corrupt: Callable[[aioredis.Redis, str], Awaitable[Any]],
                                              named: str) -> None:
    """Units off by one, a refund made twice, an order disagreeing with the provider, an overfull group:
    each fails the verdict with a problem saying which."""
    redis = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        gb = await _traffic(api, redis)
        await corrupt(redis, gb)
        report = await groupbuy_verify.check(settings.redis_url or "", settings.database_url or "", gb, wait_s=1)
    finally:
        await redis.aclose()
    assert not report.ok and any(named in p for p in report.problems), report.text()


def test_rush_end_to_end(tmp_path: Path) -> None:
    """`python -m load.groupbuy` (small): the rush runs against its own server and the verdict is clean."""
    r = subprocess.run([sys.executable, "-m", "load.groupbuy", "--buyers", "80", "--stock", "60", "--seconds", "15",
                        "--seed", "7", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT      OK" in r.stdout and "money       charged" in r.stdout
    assert "RESULT      OK" in (tmp_path / "report.txt").read_text()
