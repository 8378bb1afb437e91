"""The auction load kit against a real server: the bidder swarm's last-seconds fight closes with one
winner, and the verifier passes it, and fails an auction whose state was tampered with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from commerce import keys
from livesale.config import Settings
from load import auction as load_auction
from load import verify
from load.report import count
from tests.helpers import Api
from tests.test_auctions import setup_auction, wait_sold
from tests.test_load_locust import run_locust


async def test_bidder_swarm_then_verifier(api: Api, settings: Settings) -> None:
    """200 bidders in the last 2 s of a 5 s auction (each accepted bid extends it by 2 s): it sells,
    the verifier replays every accepted bid through the rules and finds one winner, the right price
    and the one order in Redis and SQL; a leader's maximum changed behind its back is caught."""
    a = await setup_auction(api, duration_s=5, extend_window_s=2, extend_to_s=2, hold_s=600)
    stats = await load_auction.bid_swarm(api.server.url, a["id"], settings.secret, bidders=200, last_s=2,
                                         duration_s=60, cap_cents=(2_000, 60_000), seed=3)
    assert stats.outcomes["leading"] > 0 and stats.outcomes["bid_too_low"] > 0, stats.as_dict()

    view = await wait_sold(api, a["id"], timeout=10)
    rep = await load_auction.check(settings.redis_url or "", settings.database_url or "", a["id"])
    assert rep.ok, rep.text()
    assert (rep.winner, rep.price_cents, rep.order) == (view["winner"], view["price_cents"], view["order"])
    assert rep.accepted_bids == view["bids"] > 10
    cli = ["--auction", a["id"], "--redis-url", settings.redis_url or "", "--database-url", settings.database_url or ""]
    assert await asyncio.to_thread(verify.main, cli) == 0  # `livesale verify --auction`
    assert await asyncio.to_thread(verify.main, [*cli[:1], "au000000000000", *cli[2:]]) == 2
    r = aioredis.Redis.from_url(settings.redis_url or "")
    try:
        await r.hincrby(keys.auction(a["stream_id"], a["id"]), "leader_max", 1)
        await r.hincrby(keys.auction(a["stream_id"], a["id"]), "price", 1)
    finally:
        await r.aclose()
    bad = await load_auction.check(settings.redis_url or "", settings.database_url or "", a["id"], wait_s=0.5)
    assert not bad.ok and any("replayed" in f for f in bad.failures), bad.text()


async def test_locust_bidders_then_verifier(api: Api, settings: Settings, tmp_path: Path) -> None:
    """Locust BidderUsers fight over an auction's last seconds: Locust counts accepted bids, the
    auction sells, and the verifier passes it (one winner, the rules' price, one order in Redis and SQL)."""
    a = await setup_auction(api, duration_s=6, extend_window_s=2, extend_to_s=2, hold_s=600)
    rows = await run_locust(settings, api.server.url, tmp_path, "BidderUser", "-u", "20", "-r", "20",
                            "--auction-id", a["id"], "--bid-last-s", "3", "--bid-cap", "2000", "40000", seconds=12)
    assert count(rows, "BID", "leading") > 0, rows.keys()

    view = await wait_sold(api, a["id"], timeout=15)
    rep = await load_auction.check(settings.redis_url or "", settings.database_url or "", a["id"])
    assert rep.ok, rep.text()
    assert rep.winner == view["winner"] and rep.accepted_bids == view["bids"]
