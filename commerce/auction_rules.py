"""The auction bid rules as plain Python (docs/auctions.md), with no I/O.

commerce/lua/bid.lua and close.lua are what the server runs; this module states the same rules so
that tests can drive both with the same random bids and compare (tests/test_auction_state_machine.py),
and so that the load verifier can recompute a final price.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# (price below, increment): the increment over a current price p, in cents.
INCREMENTS = ((3000, 100), (5000, 200), (10000, 300), (30000, 500), (100000, 1000), (200000, 2000))
TOP_INCREMENT = 5000
MAX_BID_CENTS = 100_000_000_00  # the largest max_cents accepted (the catalogue's largest price)


def increment(price: int) -> int:
    for below, inc in INCREMENTS:
        if price < below:
            return inc
    return TOP_INCREMENT


class Outcome(StrEnum):
    LEADING = "leading"  # a new leader (rules 4, 5)
    OUTBID = "outbid"  # accepted, but the leader's maximum covers it (rule 6)
    RAISED = "raised"  # the leader raised their own maximum (rule 3): answered "leading", no event
    NOT_ACTIVE = "auction_not_active"
    TOO_LOW = "bid_too_low"
    ALREADY_LEADING = "already_leading"


ACCEPTED = (Outcome.LEADING, Outcome.OUTBID)  # the bids that move the price, extend, and are events


@dataclass(slots=True)
class Rules:
    starting_bid: int
    extend_window_ms: int = 10_000
    extend_to_ms: int = 10_000
    sudden_death: bool = False
    reserve: int = 0


@dataclass(slots=True)
class State:
    status: str = "active"  # scheduled | active | sold | unsold
    ends_at: int = 0  # epoch ms
    price: int = 0
    leader: str = ""
    leader_max: int = 0
    bids: int = 0
    winner: str = ""


@dataclass(slots=True)
class Result:
    outcome: Outcome
    price: int = 0
    ends_at: int = 0
    min_bid: int = 0


def min_next(rules: Rules, s: State) -> int:
    return s.price + increment(s.price) if s.leader else rules.starting_bid


def bid(rules: Rules, s: State, user: str, max_cents: int, now: int) -> Result:
    """Apply one bid to `s` (in place) and say what the bidder is told."""
    if s.status != "active" or now >= s.ends_at:
        return Result(Outcome.NOT_ACTIVE)
    floor = min_next(rules, s)
    if max_cents < floor:
        return Result(Outcome.TOO_LOW, min_bid=floor)
    if s.leader == user:
        if max_cents <= s.leader_max:
            return Result(Outcome.ALREADY_LEADING)
        s.leader_max = max_cents
        return Result(Outcome.RAISED, s.price, s.ends_at)
    if not s.leader:
        s.leader, s.price, s.leader_max = user, rules.starting_bid, max_cents
        outcome = Outcome.LEADING
    elif max_cents > s.leader_max:
        s.price = min(max_cents, s.leader_max + increment(s.leader_max))
        s.leader, s.leader_max = user, max_cents
        outcome = Outcome.LEADING
    else:  # the earlier maximum wins a tie
        s.price = min(s.leader_max, max_cents + increment(max_cents))
        outcome = Outcome.OUTBID
    s.bids += 1
    if not rules.sudden_death and s.ends_at - now <= rules.extend_window_ms:
        s.ends_at = max(s.ends_at, now + rules.extend_to_ms)
    return Result(outcome, s.price, s.ends_at)


def close(rules: Rules, s: State, now: int) -> bool:
    """Close an active auction whose time is up; True when this call closed it."""
    if s.status != "active" or now < s.ends_at:
        return False
    if s.leader and s.price >= rules.reserve:
        s.status, s.winner = "sold", s.leader
    else:
        s.status = "unsold"
    return True
