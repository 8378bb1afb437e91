"""Every Lua script keeps its keys, and the channel it publishes on, in one Cluster slot, as its
callers build them (docs/cluster.md): on a cluster, a script whose keys span slots is refused."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from redis.crc import key_slot

from commerce import keys as ck
from commerce.auctions import AuctionInfo
from live import keys as lk
from livesale.bus import channel, log_key, meta_key, seq_key
from livesale.redis_client import LuaScript
from realtime import keys as rk
from realtime import state

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("commerce.inventory", "commerce.groupbuys", "commerce.auctions", "livesale.bus", "realtime.state",
           "realtime.moderation", "live.stats", "live.media.claims", "live.api")
# Lua files prepended to others (never run alone) and the benchmark's own copy.
PRELUDES = {"common.lua", "gb_common.lua", "auction_common.lua", "bus_log.lua", "proc_total.lua"}

SALE, STREAM, GB, AUCTION = "s0123456789ab", "st0123456789", "gb0123456789ab", "au0123456789ab"


def _auction_keys3() -> list[str]:
    return AuctionInfo(AUCTION, STREAM, "host").keys3


# Script (module, name of its file) -> the keys and the channel its caller passes, built as the caller
# builds them (the call sites are named beside each).
CALLS: dict[str, tuple[list[str], str | None]] = {
    # commerce/inventory.py (pay, cancel, tick, Reserver._evalsha) and sales.py (stock notices)
    "reserve": (ck.sale_keys(SALE), None),
    "pay": (ck.sale_keys(ck.sale_of_order(f"{SALE}.0011223344556677")), None),
    "cancel": (ck.sale_keys(ck.sale_of_order(f"{SALE}.0011223344556677")), None),
    "tick": (ck.sale_keys(SALE), None),
    # commerce/sales.py stock notices: the sale hash, and the stream's channel (see ONE_NODE_ONLY)
    "stock_notice": ([ck.sale(SALE)], channel(STREAM)),
    # commerce/group_money.py: every group-buy script gets groupbuy_keys
    "gb_join": (ck.groupbuy_keys(GB), None),
    "gb_confirm": (ck.groupbuy_keys(GB), None),
    "gb_release": (ck.groupbuy_keys(GB), None),
    "gb_close": (ck.groupbuy_keys(GB), None),
    # commerce/auctions.py
    "auction_start": (_auction_keys3(), channel(STREAM)),
    "auction_close": (_auction_keys3(), channel(STREAM)),
    "auction_announce": (_auction_keys3(), channel(STREAM)),
    "bid": ([_auction_keys3()[0], ck.auction_idem(STREAM, AUCTION), *_auction_keys3()[1:]], channel(STREAM)),
    "auction_award": (ck.sale_keys(AUCTION), None),
    # livesale/bus.py Bus.publish_log (with the meta hash), realtime/moderation.py, live/media/claims.py,
    # live/api.py (stream_cas)
    "bus_publish": ([seq_key(STREAM), log_key(STREAM), meta_key(STREAM)], channel(STREAM)),
    "comment_delete": ([seq_key(STREAM), log_key(STREAM)], channel(STREAM)),
    "publisher": ([lk.publisher(STREAM), seq_key(STREAM), log_key(STREAM)], channel(STREAM)),
    "stream_cas": ([lk.meta(STREAM), seq_key(STREAM), log_key(STREAM)], channel(STREAM)),
    # realtime/state.py
    "likes_flush": ([rk.likes(STREAM)], channel(STREAM)),
    "viewers_report": ([rk.viewer_procs(STREAM), rk.viewers_total(STREAM)], channel(STREAM)),
    "analytics_report": (state._analytics_keys(STREAM), None),
    # live/stats.py _fold
    "stats_fold": ([ck.events(SALE), lk.sale_figures(SALE), lk.sale_buyers(SALE), lk.sale_minutes(SALE)], None),
}


# Scripts whose channel is in another slot than their keys: run on one node only; on a cluster their
# caller publishes itself (commerce/sales.py reads a sale's `available`, then SPUBLISHes it).
ONE_NODE_ONLY = {"stock_notice"}


def _scripts() -> dict[str, LuaScript]:
    found: dict[str, LuaScript] = {}
    for name in MODULES:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, LuaScript):
                found[value.name] = value
    return found


def test_every_lua_file_is_a_script_we_check() -> None:
    """Every Lua file of the packages is loaded by a LuaScript this test finds, and each has its caller's keys."""
    files = {p.stem for d in ("commerce", "live", "livesale", "realtime") for p in (ROOT / d).rglob("*.lua")
             if p.name not in PRELUDES}
    scripts = _scripts()
    assert files == set(scripts)
    assert set(scripts) == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_script_keys_share_one_slot(name: str) -> None:
    """The script's keys (and the channel it publishes on) hash to one slot, for sample ids."""
    script_keys, ch = CALLS[name]
    slots = {key_slot(k.encode()) for k in script_keys}
    assert len(slots) == 1, {k: key_slot(k.encode()) for k in script_keys}
    publishes = "redis.call('PUBLISH'" in _scripts()[name].source
    assert publishes == (ch is not None), "a publishing script's channel is listed (and only then)"
    if ch is not None and name in ONE_NODE_ONLY:
        assert key_slot(ch.encode()) not in slots
    elif ch is not None:
        assert key_slot(ch.encode()) in slots
