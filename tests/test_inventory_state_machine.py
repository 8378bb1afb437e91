"""Hypothesis drives reserve / pay / cancel / expire / end in random order against the real Lua
scripts on the real Redis and checks every invariant after every step."""

from __future__ import annotations

from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from commerce import inventory, keys

STOCK, LIMIT, PRICE = 7, 3, 250
USERS = ["ann", "ben", "cat", "dan"]
SALE = "sa0000000000aa"


def call(r: redis.Redis, script: inventory.LuaScript, args: list[Any]) -> Any:
    return r.eval(script.source, 6, *keys.sale_keys(SALE), *args)


class InventoryMachine(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis.from_url(self.url)
        self.orders: dict[str, dict[str, Any]] = {}  # oid -> {user, qty, status, key}
        self.by_key: dict[tuple[str, str], str] = {}
        self.events = 0
        self.ended = False
        self.n = 0

    @initialize()
    def create_sale(self) -> None:
        self.r.flushall()
        self.r.hset(keys.sale(SALE), mapping={
            "stock": STOCK, "available": STOCK, "held": 0, "sold": 0, "limit": LIMIT, "hold_ms": 600_000,
            "duration_ms": 3_600_000, "price_cents": PRICE, "status": "scheduled", "starts_at": 0, "ends_at": 0,
            "stream": "st0", "sku": "X", "currency": "USD"})
        assert inventory.TICK and call(self.r, inventory.TICK, [100, "start"])[0] == b"active"

    def units(self, user: str) -> int:
        return sum(o["qty"] for o in self.orders.values() if o["user"] == user and o["status"] in ("reserved", "paid"))

    @rule(user=st.sampled_from(USERS), qty=st.integers(1, 4), key=st.sampled_from(["k1", "k2", "k3", "k4"]))
    def reserve(self, user: str, qty: int, key: str) -> None:
        self.n += 1
        oid = f"{SALE}.{self.n:016x}"
        res = call(self.r, inventory.RESERVE, [1, user, key, qty, oid])
        code = int(res[2][0])
        existing = self.by_key.get((user, key))
        available = STOCK - sum(o["qty"] for o in self.orders.values() if o["status"] in ("reserved", "paid"))
        if existing is not None:
            want = inventory.DUPLICATE if self.orders[existing]["qty"] == qty else inventory.IDEM_CONFLICT
            assert code == want and res[2][1].decode() == existing
        elif self.ended:
            assert code == inventory.NOT_ACTIVE
        elif self.units(user) + qty > LIMIT:
            assert code == inventory.LIMIT_REACHED
        elif available < qty:
            assert code == inventory.SOLD_OUT
        else:
            assert code == inventory.RESERVED and res[2][1].decode() == oid
            self.orders[oid] = {"user": user, "qty": qty, "status": "reserved", "key": key}
            self.by_key[(user, key)] = oid
            self.events += 1

    def _pick(self, data: Any, status: str | None = None) -> str | None:
        pool = sorted(o for o, v in self.orders.items() if status is None or v["status"] == status)
        return data.draw(st.sampled_from(pool)) if pool else None

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), other_user=st.booleans())
    def pay(self, data: Any, other_user: bool) -> None:
        oid = self._pick(data)
        assert oid is not None
        o = self.orders[oid]
        user = "intruder" if other_user else o["user"]
        res = call(self.r, inventory.PAY, [oid, user, "commit"])
        if other_user:
            assert int(res[0]) == -1
        elif o["status"] != "reserved":
            assert int(res[0]) == -2 and res[1].decode() == o["status"]
        else:
            assert int(res[0]) == 0
            o["status"] = "paid"
            self.events += 1

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def cancel(self, data: Any) -> None:
        oid = self._pick(data)
        assert oid is not None
        o = self.orders[oid]
        res = call(self.r, inventory.CANCEL, [oid, o["user"]])
        if o["status"] != "reserved":
            assert int(res[0]) == -2
        else:
            assert int(res[0]) == 0
            o["status"] = "cancelled"
            self.events += 1

    @precondition(lambda self: any(o["status"] == "reserved" for o in self.orders.values()))
    @rule(data=st.data())
    def hold_lapses(self, data: Any) -> None:
        """The clock passes one hold's expiry; the next tick expires exactly that one."""
        oid = self._pick(data, "reserved")
        assert oid is not None
        self.r.hset(keys.orders(SALE), f"e:{oid}", 1)
        self.r.zadd(keys.holds(SALE), {oid: 1})
        res = call(self.r, inventory.TICK, [100, ""])
        assert int(res[2]) == 1
        self.orders[oid]["status"] = "expired"
        self.events += 1

    @rule()
    def tick_twice(self) -> None:
        """Concurrent sweepers: ticks with nothing due change nothing."""
        for _ in range(2):
            res = call(self.r, inventory.TICK, [100, ""])
            assert int(res[2]) == 0

    @precondition(lambda self: not self.ended)
    @rule()
    def end_sale(self) -> None:
        res = call(self.r, inventory.TICK, [100, "end"])
        assert res[0] == b"ended" and int(res[1]) == 1
        self.ended = True

    @invariant()
    def counters_match(self) -> None:
        if not self.orders and not self.n:
            return
        a, h, s = (int(x) for x in self.r.hmget(keys.sale(SALE), "available", "held", "sold"))
        assert min(a, h, s) >= 0
        assert a + h + s == STOCK
        assert h == sum(o["qty"] for o in self.orders.values() if o["status"] == "reserved")
        assert s == sum(o["qty"] for o in self.orders.values() if o["status"] == "paid")
        users = {k.decode(): int(v) for k, v in self.r.hgetall(keys.users(SALE)).items()}
        for u in USERS:
            assert users.get(u, 0) == self.units(u) <= LIMIT
        assert self.r.zcard(keys.holds(SALE)) == sum(1 for o in self.orders.values() if o["status"] == "reserved")
        assert self.r.xlen(keys.events(SALE)) == self.events

    def teardown(self) -> None:
        self.r.close()


def test_inventory_state_machine(redis_url: str) -> None:
    """Random sequences of every transition keep available + held + sold == stock, nothing negative,
    per-user units == the user's live orders <= limit, one order per key, one event per transition."""
    InventoryMachine.url = redis_url
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        InventoryMachine,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
