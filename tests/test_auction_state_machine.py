"""Hypothesis drives random bids, batches of bids, retried keys, clock jumps and closes against the
pure rules (commerce/auction_rules.py) and the real bid.lua / auction_close.lua on the real Redis,
called as production calls them (LuaScript: redis-py's script objects) but with the clock given to
the scripts (production's Auctions.bid runs on Redis's clock), and checks they agree after every step."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from commerce import auction_rules as rules
from commerce import auctions, keys
from livesale.bus import log_key, seq_key
from livesale.redis_client import LuaScript, connect
from livesale.times import iso_ms

STREAM, AUCTION = "st000000000001", "au000000000001"
USERS = ["ann", "ben", "cat", "dan"]
IDEM_KEYS = ["k1", "k2", "k3"]
CODE = {rules.Outcome.LEADING: auctions.LEADING, rules.Outcome.OUTBID: auctions.OUTBID,
        rules.Outcome.RAISED: auctions.RAISED, rules.Outcome.NOT_ACTIVE: auctions.NOT_ACTIVE,
        rules.Outcome.TOO_LOW: auctions.TOO_LOW, rules.Outcome.ALREADY_LEADING: auctions.ALREADY_LEADING}
BID_KEYS = [keys.auction(STREAM, AUCTION), keys.auction_idem(STREAM, AUCTION), seq_key(STREAM), log_key(STREAM)]
CLOSE_KEYS = [keys.auction(STREAM, AUCTION), seq_key(STREAM), log_key(STREAM)]


class AuctionMachine(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis.from_url(self.url)
        self.loop = asyncio.Runner()
        self.ar = connect(self.url)
        self.rules = rules.Rules(100)
        self.s = rules.State()
        self.now = 0
        self.first: dict[tuple[str, str], tuple[int, list[int]]] = {}  # (user, key) -> (max, first reply)
        self.events = 0
        self.snipes = 0

    @initialize(
        starting=st.sampled_from([100, 2900, 4900, 9900, 29900, 99900, 199900, 500000]),
        window=st.sampled_from([0, 5000, 10000]),
        extend_to=st.sampled_from([1000, 10000, 30000]),
        sudden=st.booleans(),
        reserve=st.sampled_from([0, 0, 3000, 250000]),
        t0=st.integers(0, 4_102_444_800_000),  # any time up to 2100: the Lua date formatting too
    )
    def create(self, starting: int, window: int, extend_to: int, sudden: bool, reserve: int, t0: int) -> None:
        self.r.flushall()
        self.rules = rules.Rules(starting, window, extend_to, sudden, reserve)
        self.now = t0
        self.s = rules.State("active", ends_at=t0 + 60_000)
        self.r.hset(keys.auction(STREAM, AUCTION), mapping={
            "status": "active", "starting_bid": starting, "extend_window_ms": window, "extend_to_ms": extend_to,
            "sudden_death": int(sudden), "reserve": reserve, "ends_at": self.s.ends_at, "price": 0, "leader": "",
            "leader_max": 0, "bids": 0, "winner": "", "order": f"{AUCTION}.{'0' * 16}", "announced": 0,
        })

    def _call(self, bids: list[tuple[str, str, int]]) -> list[Any]:
        args: list[Any] = [self.now, "stream:" + STREAM, 1000, AUCTION, len(bids)]
        for b in bids:
            args += b
        return self.script(auctions.BID, BID_KEYS, args)  # type: ignore[no-any-return]

    def _expect(self, user: str, key: str, max_cents: int) -> list[int]:
        """What the model says the script answers, applying the bid to the model."""
        prior = self.first.get((user, key))
        if prior is not None:
            return [auctions.DUPLICATE, *prior[1]] if prior[0] == max_cents else [auctions.IDEM_CONFLICT]
        res = rules.bid(self.rules, self.s, user, max_cents, self.now)
        code = CODE[res.outcome]
        if res.outcome == rules.Outcome.TOO_LOW:
            return [code, res.min_bid]
        if res.outcome in (rules.Outcome.NOT_ACTIVE, rules.Outcome.ALREADY_LEADING):
            return [code]
        self.first[(user, key)] = (max_cents, [code, res.price, res.ends_at])
        if res.outcome in rules.ACCEPTED:
            self.events += 1
        return [code, res.price, res.ends_at]

    def _amount(self, data: Any) -> int:
        floor = rules.min_next(self.rules, self.s)
        return data.draw(st.one_of(
            st.integers(max(1, floor - 300), floor + 3000),
            st.just(self.s.leader_max or floor),  # ties with the leader's maximum
            st.integers(1, rules.MAX_BID_CENTS),
        ))

    @rule(data=st.data(), user=st.sampled_from(USERS), key=st.sampled_from(IDEM_KEYS))
    def bid(self, data: Any, user: str, key: str) -> None:
        amount = self._amount(data)
        got = self._call([(user, key, amount)])
        assert [int(x) for x in got[0]] == self._expect(user, key, amount)

    @rule(data=st.data(), n=st.integers(2, 6))
    def bid_batch(self, data: Any, n: int) -> None:
        """Several bids in one script call: each is its own step, in order."""
        bids = []
        for _ in range(n):
            bids.append((data.draw(st.sampled_from(USERS)), data.draw(st.sampled_from(IDEM_KEYS)), self._amount(data)))
        got = self._call(bids)
        assert [[int(x) for x in g] for g in got] == [self._expect(*b) for b in bids]

    @rule(ms=st.one_of(st.integers(0, 2000), st.integers(0, 70_000)))
    def clock_moves(self, ms: int) -> None:
        self.now += ms

    @precondition(lambda self: self.s.ends_at - self.rules.extend_window_ms - 1 >= self.now)
    @rule(offset=st.sampled_from([-1, 0, 1]), edge=st.sampled_from(["window", "end"]), user=st.sampled_from(USERS),
          over=st.integers(0, 500))
    def snipe_at_an_edge(self, offset: int, edge: str, user: str, over: int) -> None:
        """The clock lands on an edge the rules care about (the start of the extension window, ends_at),
        and a bid arrives then, with a fresh key."""
        self.now = self.s.ends_at - (self.rules.extend_window_ms if edge == "window" else 0) + offset
        self.snipes += 1
        amount = rules.min_next(self.rules, self.s) + over
        got = self._call([(user, f"snipe{self.snipes}", amount)])
        assert [int(x) for x in got[0]] == self._expect(user, f"snipe{self.snipes}", amount)

    @rule()
    def close(self) -> None:
        """Any number of closers: only a due active auction closes, once."""
        was = self.s.status
        closed = rules.close(self.rules, self.s, self.now)
        if closed and self.s.status == "unsold":
            self.events += 1
        r = self.script(auctions.CLOSE, CLOSE_KEYS, [self.now, "stream:" + STREAM, 1000, AUCTION])
        assert r[0].decode() == self.s.status
        assert r[2].decode() == self.s.winner
        assert (was == "active") or not closed

    @precondition(lambda self: self.s.status == "sold")
    @rule()
    def announce(self) -> None:
        """The sold event goes out once, however many announce."""
        first = self.script(auctions.ANNOUNCE, CLOSE_KEYS, [self.now, "stream:" + STREAM, 1000, AUCTION])
        again = self.script(auctions.ANNOUNCE, CLOSE_KEYS, [self.now, "stream:" + STREAM, 1000, AUCTION])
        if int(first):
            self.events += 1
        assert int(again) == 0

    @invariant()
    def redis_agrees(self) -> None:
        h = {k.decode(): v.decode() for k, v in self.r.hgetall(keys.auction(STREAM, AUCTION)).items()}
        if not h:
            return
        s = self.s
        assert (h["status"], int(h["price"]), h["leader"], int(h["leader_max"]), int(h["ends_at"]), int(h["bids"])) \
            == (s.status, s.price, s.leader, s.leader_max, s.ends_at, s.bids)
        assert h["winner"] == s.winner
        assert self.r.xlen(log_key(STREAM)) == self.events
        last = self.r.xrevrange(log_key(STREAM), count=1)
        if last:
            ev = orjson.loads(last[0][1][b"d"])
            assert ev["auction"] == AUCTION and ev["price_cents"] == s.price and ev["seq"] == self.events
            assert ev["ends_at"] == iso_ms(s.ends_at)
            # Nothing but these fields: no maximum leaves Redis in an event.
            assert set(ev) in ({"type", "auction", "price_cents", "leader", "ends_at", "bids", "ts", "seq"},
                               {"type", "auction", "status", "winner", "price_cents", "order", "ends_at", "ts", "seq"})

    def script(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """The script as production calls it (commerce/auctions.py): `await SCRIPT(redis, keys, args)`."""
        return self.loop.run(script(self.ar, keys, args))

    def teardown(self) -> None:
        try:
            self.loop.run(self.ar.aclose())
        finally:
            self.loop.close()
            self.r.close()


def test_auction_state_machine(redis_url: str) -> None:
    """Random bids, batches, retried keys, clock jumps and closes: the script and the pure rules agree
    on price, leader, leader's maximum, ends_at, bid count, status, winner, replies and events."""
    AuctionMachine.url = redis_url
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        AuctionMachine,
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
