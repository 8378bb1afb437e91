"""Hypothesis drives the group-buy scripts (join/open, confirm, release, close, end) in random order
against the real Lua on the real Redis, called as production calls them (LuaScript: redis-py's
script objects), predicts each answer from a model, and checks the invariants
after every step."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from commerce import groupbuys as gbm
from commerce import keys
from livesale.redis_client import LuaScript, connect

STOCK, TIERS, PRICE0 = 8, [(2, 900), (3, 800)], 900
MAX = TIERS[-1][0]
USERS = ["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal", "ida", "jon"]
GB = "gb0000000000aa"
KS = keys.groupbuy_keys(GB)


def call(m: GroupbuyMachine, script: LuaScript, args: list[Any]) -> Any:
    """The script as production calls it (commerce/group_money.py): `await SCRIPT(redis, keys, args)`."""
    return m.loop.run(script(m.ar, KS, args))


class GroupbuyMachine(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis.from_url(self.url)
        self.loop = asyncio.Runner()
        self.ar = connect(self.url)
        self.members: dict[str, dict[str, Any]] = {}  # oid -> user, gid, status, key, op
        self.groups: dict[str, str] = {}  # gid -> open | succeeded | failed
        self.idem: dict[tuple[str, str], str] = {}
        self.ended = False
        self.n = 0

    @initialize()
    def create(self) -> None:
        self.r.flushall()
        self.r.hset(keys.groupbuy(GB), mapping={
            "stream": "st0", "sku": "X", "title": "X", "currency": "USD", "stock": STOCK, "available": STOCK,
            "in_groups": 0, "sold": 0, "status": "active", "ttl_ms": 3_600_000, "tiers": gbm.encode_tiers(TIERS),
            "min_size": TIERS[0][0], "max_size": MAX, "price0": PRICE0, "created": 0})

    def holding(self, gid: str) -> list[str]:
        return [o for o, m in self.members.items() if m["gid"] == gid and m["status"] in ("pending", "joined")]

    def in_open_group(self, user: str) -> bool:
        return any(m["user"] == user and m["status"] in ("pending", "joined") for m in self.members.values())

    def available(self) -> int:
        return STOCK - sum(1 for m in self.members.values() if m["status"] in ("pending", "joined", "paid"))

    def _enter(self, user: str, key: str, gid: str) -> None:
        self.n += 1
        oid, new_gid = f"{GB}.{self.n:016x}", f"{GB}-{self.n:010x}"
        res = call(self, gbm.JOIN, [user, key, gid, "pm_card_visa", "", oid, new_gid])
        existing = self.idem.get((user, key))
        if existing is not None:
            m = self.members[existing]
            same = m["op"] == ("open" if gid == "" else "join") and (gid == "" or m["gid"] == gid)
            if same:
                assert res[0] == 1 and res[1].decode() == existing
            else:
                assert res[:2] == [2, b"idempotency_conflict"]
            return
        if gid == "":
            why = "groupbuy_not_active" if self.ended else None
        elif self.groups[gid] != "open" or self.ended:
            why = "group_closed"
        elif len(self.holding(gid)) >= MAX:
            why = "group_full"
        else:
            why = None
        why = why or ("already_in_group" if self.in_open_group(user) else None)
        why = why or ("sold_out" if self.available() < 1 else None)
        if why:
            assert res == [2, why.encode()], (res, why)
            return
        gid = gid or new_gid
        assert res == [0, oid.encode(), gid.encode()]
        self.groups.setdefault(gid, "open")
        self.members[oid] = {"user": user, "gid": gid, "status": "pending", "key": key,
                             "op": "open" if gid == new_gid else "join"}
        self.idem[(user, key)] = oid

    @rule(user=st.sampled_from(USERS), key=st.sampled_from(["k1", "k2"]))
    def open_group(self, user: str, key: str) -> None:
        self._enter(user, key, "")

    @precondition(lambda self: self.groups)
    @rule(user=st.sampled_from(USERS), key=st.sampled_from(["k1", "k2", "k3"]), data=st.data())
    def join(self, user: str, key: str, data: Any) -> None:
        self._enter(user, key, data.draw(st.sampled_from(sorted(self.groups))))

    def _pending(self, data: Any) -> str | None:
        pool = sorted(o for o, m in self.members.items() if m["status"] == "pending")
        return data.draw(st.sampled_from(pool)) if pool else None

    def has_pending(self) -> bool:
        return any(m["status"] == "pending" for m in self.members.values())

    @precondition(lambda self: self.has_pending())
    @rule(data=st.data())
    def confirm(self, data: Any) -> None:
        oid = self._pending(data)
        assert oid is not None
        self._confirm(oid)

    @precondition(lambda self: self.members)
    @rule(data=st.data())
    def confirm_again(self, data: Any) -> None:
        self._confirm(data.draw(st.sampled_from(sorted(self.members))))

    def _confirm(self, oid: str) -> None:
        res = call(self, gbm.CONFIRM, [oid, "ch_" + oid, PRICE0])
        m = self.members[oid]
        if m["status"] == "pending":
            assert res[0] == 0
            m["status"] = "joined"
        else:
            assert res[0] == 1 if m["status"] in ("joined", "paid", "refunded") else res == [-2, b"declined"]

    @precondition(lambda self: self.has_pending())
    @rule(data=st.data())
    def release(self, data: Any) -> None:
        oid = self._pending(data)
        assert oid is not None
        assert call(self, gbm.RELEASE, [oid])[0] == 0
        m = self.members[oid]
        m["status"] = "declined"
        del self.idem[(m["user"], m["key"])]
        if not self.holding(m["gid"]) and self.groups[m["gid"]] == "open":
            self.groups[m["gid"]] = "failed"  # nobody left in it: it fails with nothing to refund

    @precondition(lambda self: self.groups)
    @rule(data=st.data(), force=st.booleans())
    def close(self, data: Any, force: bool) -> None:
        gid = data.draw(st.sampled_from(sorted(self.groups)))
        res = call(self, gbm.CLOSE, [gid, "1" if force else "0"])
        held = self.holding(gid)
        joined = [o for o in held if self.members[o]["status"] == "joined"]
        if self.groups[gid] != "open":
            assert res[0] == 1
        elif len(joined) < len(held):
            assert res == [2]
        elif not (len(joined) >= MAX or force or self.ended):
            assert res == [3]
        else:
            price = gbm.tier_price(TIERS, len(joined))
            status = "succeeded" if price else "failed"
            assert res == [0, status.encode(), price or 0, len(joined)]
            self.groups[gid] = status
            for o in joined:
                self.members[o]["status"] = "paid" if price else "refunded"

    @precondition(lambda self: len(self.members) > 8 and not self.ended)
    @rule()
    def end(self) -> None:
        self.r.hset(keys.groupbuy(GB), "status", "ended")
        self.ended = True

    @invariant()
    def units_and_groups_agree(self) -> None:
        names = ("available", "in_groups", "sold", "stock")
        gb = dict(zip(names, map(int, self.r.hmget(keys.groupbuy(GB), *names)), strict=True))
        assert gb["available"] + gb["in_groups"] + gb["sold"] == STOCK and min(gb.values()) >= 0
        holding = sum(1 for m in self.members.values() if m["status"] in ("pending", "joined"))
        assert gb["in_groups"] == holding
        assert gb["sold"] == sum(1 for m in self.members.values() if m["status"] == "paid")
        users = {k.decode(): v.decode() for k, v in self.r.hgetall(KS[2]).items()}
        expect = {m["user"]: m["gid"] for m in self.members.values() if m["status"] in ("pending", "joined")}
        assert users == expect  # and so no user in two open groups (a dict has one group per user)
        assert sum(1 for m in self.members.values() if m["status"] in ("pending", "joined")) == len(expect)
        groups = self.r.hgetall(KS[1])
        for gid, status in self.groups.items():
            assert groups[b"s:" + gid.encode()].decode() == status
            members = [m for m in self.members.values() if m["gid"] == gid and m["status"] != "declined"]
            assert int(groups[b"n:" + gid.encode()]) == len(members) <= MAX

    def teardown(self) -> None:
        try:
            self.loop.run(self.ar.aclose())
        finally:
            self.loop.close()
            self.r.close()


def test_groupbuy_state_machine(redis_url: str) -> None:
    """Random sequences of opens, joins, confirms, releases, closes and ends: every answer as the model
    predicts, available + in_groups + sold == stock, no group over its size, one open group per user."""
    GroupbuyMachine.url = redis_url
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        GroupbuyMachine,
        settings=settings(max_examples=80, stateful_step_count=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
