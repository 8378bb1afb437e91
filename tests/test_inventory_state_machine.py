"""Hypothesis drives reserve / pay / cancel / expire / end, and the faults the batcher recovers from (a
flushed script cache, killed connections), in random order through the production calls: reserves
through commerce.inventory.Reserver (batches of buyers of two sales in one loop turn, on its own wire
path), pay / cancel / tick through commerce.inventory's functions, on the real Redis. After every step
each sale's counters, read back from Redis, must match a pure model of the sale."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from redis import exceptions as rx

from commerce import inventory, keys
from livesale.redis_client import connect

STOCK, LIMIT, PRICE = 7, 3, 250
USERS = ["ann", "ben", "cat", "dan"]
SALES = ["sa0000000000aa", "sa0000000000bb"]


@dataclass
class Order:
    sale: str
    user: str
    qty: int
    status: str = "reserved"


@dataclass
class SaleModel:
    """What one sale must hold after the steps so far."""

    orders: dict[str, Order] = field(default_factory=dict)
    by_key: dict[tuple[str, str], str] = field(default_factory=dict)
    events: int = 0
    ended: bool = False

    def units(self, user: str) -> int:
        return sum(o.qty for o in self.orders.values() if o.user == user and o.status in ("reserved", "paid"))

    def live(self) -> int:
        return sum(o.qty for o in self.orders.values() if o.status in ("reserved", "paid"))

    def expect(self, user: str, key: str, qty: int) -> tuple[int, str | None]:
        """The reserve outcome code this buyer must get next, and the existing order it names."""
        existing = self.by_key.get((user, key))
        if existing is not None:
            return (inventory.DUPLICATE if self.orders[existing].qty == qty else inventory.IDEM_CONFLICT), existing
        if self.ended:
            return inventory.NOT_ACTIVE, None
        if self.units(user) + qty > LIMIT:
            return inventory.LIMIT_REACHED, None
        if STOCK - self.live() < qty:
            return inventory.SOLD_OUT, None
        return inventory.RESERVED, None


buyers = st.lists(
    st.tuples(st.sampled_from(SALES), st.sampled_from(USERS), st.integers(1, 4), st.sampled_from(["k1", "k2", "k3"])),
    min_size=1, max_size=6,
)


class InventoryMachine(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.Runner()
        self.r = redis.Redis.from_url(self.url)  # setup, faults and the invariant's reads
        self.ar = self.loop.run(self._connect())
        self.reserver = inventory.Reserver(self.ar)
        self.stock_notes: list[tuple[str, int, int]] = []
        self.reserver.on_stock = lambda sale, available, held: self.stock_notes.append((sale, available, held))
        self.sales = {s: SaleModel() for s in SALES}
        self.killed = False
        self.made: list[Order] = []

    async def _connect(self) -> Any:
        return connect(self.url)

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def call(self, make: Any) -> Any:
        """A call on the shared client. One that fails on a connection `connections_killed` dropped
        (the client does not retry: production answers that request 503) must have changed nothing,
        and is made again, as the client would retry its 503. Whether a dead pooled connection fails
        or is replaced before use depends on timing, so only the retried outcome reaches the model:
        a replayed example then takes the same path."""
        while True:
            try:
                return self.run(make())
            except rx.ConnectionError:
                assert self.killed
                self.counters_match()

    @initialize()
    def create_sales(self) -> None:
        self.r.flushall()
        for sale in SALES:
            self.r.hset(keys.sale(sale), mapping={
                "stock": STOCK, "available": STOCK, "held": 0, "sold": 0, "limit": LIMIT, "hold_ms": 600_000,
                "duration_ms": 3_600_000, "price_cents": PRICE, "status": "scheduled", "starts_at": 0,
                "ends_at": 0, "stream": "st0", "sku": "X", "currency": "USD"})
            t = self.run(inventory.tick(self.ar, sale, "start"))
            assert t is not None and t.status == "active" and t.changed

    @rule(batch=buyers)
    def reserve(self, batch: list[tuple[str, str, int, str]]) -> None:
        """A batch of buyers queued in one loop turn: one pipelined round trip, one call per sale, each
        buyer answered as if it had been alone, in queue order."""
        async def go() -> list[Any]:
            futs = [self.reserver.reserve(sale, user, key, qty) for sale, user, qty, key in batch]
            return await asyncio.gather(*futs)

        self.stock_notes.clear()
        got: list[inventory.Reservation] = self.run(go())
        for (sale, user, qty, key), res in zip(batch, got, strict=True):
            model = self.sales[sale]
            code, existing = model.expect(user, key, qty)
            assert res.code == code, (sale, user, qty, key, res)
            if code == inventory.RESERVED:
                assert res.order_id.startswith(sale + ".") and res.order_id not in model.orders
                assert (res.quantity, res.status) == (qty, "reserved") and res.expires_ms > res.created_ms > 0
                model.orders[res.order_id] = Order(sale, user, qty)
                self.made.append(model.orders[res.order_id])
                model.by_key[(user, key)] = res.order_id
                model.events += 1
            elif code == inventory.DUPLICATE:
                assert existing is not None
                assert (res.order_id, res.quantity, res.status) == (existing, qty, model.orders[existing].status)
            elif code == inventory.IDEM_CONFLICT:
                assert existing is not None
                assert (res.order_id, res.quantity) == (existing, model.orders[existing].qty)
        # Every buyer of a call is told the sale's stock after the whole call; on_stock hears it once.
        for sale in {b[0] for b in batch}:
            model = self.sales[sale]
            available = STOCK - model.live()
            assert {g.available for b, g in zip(batch, got, strict=True) if b[0] == sale} == {available}
            held = sum(o.qty for o in model.orders.values() if o.status == "reserved")
            assert [n for n in self.stock_notes if n[0] == sale] == [(sale, available, held)]

    def _pick(self, data: Any, status: str | None = None) -> Order | None:
        # In the order they were made: their ids are random, and a replayed case must draw the same.
        pool = [o for o in self.made if status is None or o.status == status]
        return data.draw(st.sampled_from(pool)) if pool else None

    def _oid(self, order: Order) -> str:
        return next(k for k, v in self.sales[order.sale].orders.items() if v is order)

    def _any_orders(self) -> bool:
        return any(m.orders for m in self.sales.values())

    @precondition(_any_orders)
    @rule(data=st.data(), other_user=st.booleans(), check_only=st.booleans())
    def pay(self, data: Any, other_user: bool, check_only: bool) -> None:
        o = self._pick(data)
        assert o is not None
        oid = self._oid(o)
        user = "intruder" if other_user else o.user
        res = self.call(lambda: inventory.pay(self.ar, oid, user, charge=None if check_only else "ch_" + oid[-4:]))
        if other_user:
            assert res == [-1]
        elif o.status != "reserved":
            assert int(res[0]) == -2 and res[1].decode() == o.status
            if o.status == "paid":
                assert res[2].decode() == "ch_" + oid[-4:]
        elif check_only:
            assert res == [0, b"ok"]
        else:
            assert res == [0, b"paid"]
            o.status = "paid"
            self.sales[o.sale].events += 1

    @precondition(_any_orders)
    @rule(data=st.data())
    def cancel(self, data: Any) -> None:
        o = self._pick(data)
        assert o is not None
        res = self.call(lambda: inventory.cancel(self.ar, self._oid(o), o.user))
        if o.status != "reserved":
            assert int(res[0]) == -2 and res[1].decode() == o.status
        else:
            assert int(res[0]) == 0
            o.status = "cancelled"
            self.sales[o.sale].events += 1

    @precondition(lambda self: any(o.status == "reserved" for m in self.sales.values() for o in m.orders.values()))
    @rule(data=st.data())
    def hold_lapses(self, data: Any) -> None:
        """The clock passes one hold's expiry; the next tick expires exactly that one."""
        o = self._pick(data, "reserved")
        assert o is not None
        oid = self._oid(o)
        self.r.hset(keys.orders(o.sale), f"e:{oid}", 1)
        self.r.zadd(keys.holds(o.sale), {oid: 1})
        t = self.call(lambda: inventory.tick(self.ar, o.sale))  # the sweeper ticks again on its next round
        assert t.expired == 1
        o.status = "expired"
        self.sales[o.sale].events += 1

    @rule()
    def tick_twice(self) -> None:
        """Concurrent sweepers: ticks with nothing due change nothing."""
        async def go() -> list[Any]:
            return await asyncio.gather(*(inventory.tick(self.ar, s) for s in SALES for _ in range(2)),
                                        return_exceptions=True)

        for t in self.run(go()):
            if isinstance(t, rx.ConnectionError) and self.killed:
                continue
            assert isinstance(t, inventory.Tick) and t.expired == 0 and not t.changed

    @rule(sale=st.sampled_from(SALES))
    def end_sale(self, sale: str) -> None:
        t = self.call(lambda: inventory.tick(self.ar, sale, "end"))
        assert t.status == "ended" and t.changed == (not self.sales[sale].ended)
        self.sales[sale].ended = True

    @rule()
    def script_cache_lost(self) -> None:
        """A restarted Redis: every script is loaded again by the next call that needs it."""
        self.r.script_flush()

    @rule()
    def connections_killed(self) -> None:
        """Every other client's connections dropped: the batcher's idle ones and the pool's."""
        self.r.client_kill_filter(_type="normal", skipme=True)
        self.killed = True

    @invariant()
    def counters_match(self) -> None:
        for sale, model in self.sales.items():
            a, h, s = (int(x) for x in self.r.hmget(keys.sale(sale), "available", "held", "sold"))  # type: ignore[union-attr]
            assert min(a, h, s) >= 0
            assert a + h + s == STOCK
            assert h == sum(o.qty for o in model.orders.values() if o.status == "reserved")
            assert s == sum(o.qty for o in model.orders.values() if o.status == "paid")
            users = {k.decode(): int(v) for k, v in self.r.hgetall(keys.users(sale)).items()}  # type: ignore[union-attr]
            for u in USERS:
                assert users.get(u, 0) == model.units(u) <= LIMIT
            holds = {k.decode() for k in self.r.zrange(keys.holds(sale), 0, -1)}  # type: ignore[union-attr]
            assert holds == {oid for oid, o in model.orders.items() if o.status == "reserved"}
            statuses = {k.decode()[2:]: v.decode() for k, v in self.r.hgetall(keys.orders(sale)).items()  # type: ignore[union-attr]
                        if k.startswith(b"s:")}
            assert statuses == {oid: o.status for oid, o in model.orders.items()}
            assert self.r.xlen(keys.events(sale)) == model.events

    def teardown(self) -> None:
        try:
            self.run(self.reserver.close())
            self.run(self.ar.aclose())
        finally:
            self.loop.close()
            self.r.close()


def test_inventory_state_machine(redis_url: str) -> None:
    """Random sequences of every transition, reserves batched as production batches them, keep
    available + held + sold == stock, nothing negative, per-user units == the user's live orders <=
    limit, one order per key, one event per transition, on both sales of each batch."""
    InventoryMachine.url = redis_url
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        InventoryMachine,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
