"""livesale on a real 3-master Redis Cluster (docs/cluster.md): the inventory, the order writer and the
hub of two `livesale serve` processes, and a sale's slot migrated to another master mid-spike."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
from redis.crc import key_slot

from commerce import keys
from commerce.orders import COMMERCE
from livesale.bus import channel
from livesale.config import Settings
from livesale.embedded_redis import EmbeddedCluster, EmbeddedRedis
from tests.conftest import SECRET
from tests.helpers import Api, LiveServer, server_pair, spawn_server, start_app_server, stop_server, wait_for
from tests.test_realtime_ws import collect, of_type, send, viewer


@pytest.fixture
def cluster_settings(cluster_url: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=cluster_url, database_url=database_url, secret=SECRET, data_dir=tmp_path,
                    sweep_interval_s=0.1, writer_reclaim_ms=1000)


@pytest.fixture
def two_servers(cluster_settings: Settings) -> Iterator[tuple[LiveServer, LiveServer]]:
    with server_pair(cluster_settings) as pair:
        yield pair


def _node(cluster: EmbeddedCluster, sale_id: str) -> EmbeddedRedis:
    return cluster.owner(key_slot(keys.sale(sale_id).encode()))


def _client(node: EmbeddedRedis) -> syncredis.Redis:
    return syncredis.Redis(port=node.port)


async def _sales_on_every_master(api: Api, cluster: EmbeddedCluster, stock: int) -> list[dict[str, Any]]:
    """Sales created until one sits on each master (sale ids are random, so their slots are too)."""
    found: dict[int, dict[str, Any]] = {}
    for _ in range(40):
        s = await api.setup_sale(stock=stock, per_user_limit=1)
        found.setdefault(cluster.nodes.index(_node(cluster, s["sale_id"])), s)
        if len(found) == len(cluster.nodes):
            return [found[i] for i in sorted(found)]
    raise AssertionError("no sale landed on some master in 40 tries")


def _sql_orders(database_url: str) -> dict[str, str]:
    path = database_url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, sale_id FROM orders").fetchall())


def _check_units(cluster: EmbeddedCluster, sale_id: str, stock: int, accepted: list[str]) -> None:
    """available + held + sold == stock on the master that holds the sale now, and held == accepted."""
    f = _client(_home(cluster, sale_id)).hgetall(keys.sale(sale_id))
    available, held, sold = int(f[b"available"]), int(f[b"held"]), int(f[b"sold"])
    assert available + held + sold == stock
    assert held + sold == len(accepted) <= stock


def _home(cluster: EmbeddedCluster, sale_id: str) -> EmbeddedRedis:
    """The master that holds the sale's keys now (after a migration, not the first owner)."""
    homes = [node for node in cluster.nodes if _holds(node, sale_id)]
    assert len(homes) == 1, f"sale {sale_id} on {len(homes)} masters"
    return homes[0]


def _buyer(cluster: EmbeddedCluster, order_id: str) -> str:
    """An order's buyer, read back from Redis."""
    sale_id = keys.sale_of_order(order_id)
    return str(_client(_home(cluster, sale_id)).hget(keys.orders(sale_id), f"u:{order_id}").decode())


def _holds(node: EmbeddedRedis, sale_id: str) -> bool:
    slot = key_slot(keys.sale(sale_id).encode())
    return int(_client(node).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) > 0


async def _spike(api_a: Api, api_b: Api, sale_id: str, buyers: int, tag: str) -> list[str]:
    """`buyers` buyers of one unit each, alternately through process A and B; the accepted order ids."""
    res = await asyncio.gather(*(
        (api_a if i % 2 else api_b).reserve(sale_id, f"{tag}{i}", f"k-{tag}{i}") for i in range(buyers)))
    assert {st for st, _ in res} <= {201, 409}, [b for st, b in res if st not in (201, 409)][:3]
    return [b["id"] for st, b in res if st == 201]


async def test_spike_on_three_masters_through_two_processes(
        two_servers: tuple[LiveServer, LiveServer], redis_cluster: EmbeddedCluster, database_url: str) -> None:
    """Three sales on three different masters, 3x their stock of buyers through two processes at once:
    no sale oversells, every unit is sold, and every accepted order is in Redis and in SQL."""
    a, b = two_servers
    stock, buyers = 25, 75
    async with Api(a) as api_a, Api(b) as api_b:
        sales = await _sales_on_every_master(api_a, redis_cluster, stock)
        assert len({_node(redis_cluster, s["sale_id"]).port for s in sales}) == 3
        accepted = await asyncio.gather(*(_spike(api_a, api_b, s["sale_id"], buyers, f"b{n}-")
                                          for n, s in enumerate(sales)))
        for s, ids in zip(sales, accepted, strict=True):
            assert len(ids) == stock  # more buyers than units: every unit sold, none twice
            _check_units(redis_cluster, s["sale_id"], stock, ids)
            st, body = await api_a.call("GET", f"/api/orders/{ids[0]}", token=a.token(_buyer(redis_cluster, ids[0])))
            assert st == 200 and body["status"] == "reserved", body
        want = {oid: s["sale_id"] for s, ids in zip(sales, accepted, strict=True) for oid in ids}
        await wait_for(lambda: want.items() <= _sql_orders(database_url).items(), timeout=20)


async def test_comment_reaches_viewers_on_both_processes_in_seq_order(
        two_servers: tuple[LiveServer, LiveServer], redis_cluster: EmbeddedCluster) -> None:
    """Comments sent on both processes reach viewers on both, in the same increasing seq order, over a
    sharded channel (SSUBSCRIBE on the stream's master; no classic channel anywhere)."""
    a, b = two_servers
    async with Api(a) as api:
        sid = (await api.setup_sale())["stream_id"]
    n = 10
    async with viewer(a, sid, "ann") as (on_a, _), viewer(b, sid, "bob") as (on_b, _):
        for i in range(n):
            await send(on_a if i % 2 else on_b, {"type": "comment", "text": f"c{i}"})
            await asyncio.sleep(0.3)  # within the comment rate limit (a burst of 5, then 1/s per user)
        got_a = of_type(await collect(on_a, lambda ev: len(of_type(ev, "comment")) == n, wait=20), "comment")
        got_b = of_type(await collect(on_b, lambda ev: len(of_type(ev, "comment")) == n, wait=20), "comment")
        seqs = [c["seq"] for c in got_a]
        assert seqs == sorted(seqs) and len(set(seqs)) == n
        assert [(c["seq"], c["text"]) for c in got_a] == [(c["seq"], c["text"]) for c in got_b]
        assert sorted(c["text"] for c in got_a) == sorted(f"c{i}" for i in range(n))
        owner = redis_cluster.owner(key_slot(channel(sid).encode()))
        assert channel(sid).encode() in _client(owner).execute_command("PUBSUB", "SHARDCHANNELS")
        for node in redis_cluster.nodes:
            assert channel(sid).encode() not in _client(node).execute_command("PUBSUB", "CHANNELS")


def _migrate(cluster: EmbeddedCluster, slot: int, dst: EmbeddedRedis, between: Any = None) -> None:
    """Move `slot` to `dst` as redis-cli --cluster reshard does: IMPORTING/MIGRATING, MIGRATE the keys in
    batches, then SETSLOT NODE everywhere. `between` runs after each batch (the spike goes on)."""
    src = cluster.owner(slot)
    src_id, dst_id = cluster.node_id(src), cluster.node_id(dst)
    s, d = _client(src), _client(dst)
    d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while True:
        batch = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2)
        if not batch:
            break
        s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *batch)
        if between is not None:
            between()
    for node in (dst, src, *[nd for nd in cluster.nodes if nd not in (src, dst)]):
        _client(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


async def _waves(apis: tuple[Api, Api], sale_id: str, moved: asyncio.Event, tag: str,
                 per_wave: int = 10, max_waves: int = 80) -> list[tuple[float, str]]:
    """Buyers in waves `WAVE_GAP_S` apart until three waves after `moved` is set (or `max_waves`);
    (time answered, order id) of each 201."""
    out: list[tuple[float, str]] = []

    async def one(i: int) -> None:
        st, body = await apis[i % 2].reserve(sale_id, f"{tag}{i}", f"k-{tag}{i}")
        assert st in (201, 409), body
        if st == 201:
            out.append((time.monotonic(), body["id"]))

    tasks: list[asyncio.Future[None]] = []
    after = 0
    for w in range(max_waves):
        tasks += [asyncio.ensure_future(one(w * per_wave + j)) for j in range(per_wave)]
        await asyncio.sleep(WAVE_GAP_S)
        after += moved.is_set()
        if after > 3:
            break
    await asyncio.gather(*tasks)
    return out


WAVE_GAP_S = 0.04


async def test_slot_migrated_mid_spike_loses_nothing(
        cluster_settings: Settings, redis_cluster: EmbeddedCluster, database_url: str) -> None:
    """A sale's slot moved to another master (two keys per MIGRATE, 50 ms apart) while buyers pour in
    through two processes, then a rush that sells it out: no oversell, orders accepted before and after
    the move, every one readable through the API and in SQL, the sale served by its new master."""
    stock = 1000
    srv = spawn_server(cluster_settings)
    try:
        async with Api(srv) as api, start_app_server(cluster_settings) as local, Api(local) as api_b:
            s = await api.setup_sale(stock=stock, per_user_limit=1)
            sale_id = s["sale_id"]
            slot = key_slot(keys.sale(sale_id).encode())
            src = redis_cluster.owner(slot)
            dst = next(nd for nd in redis_cluster.nodes if nd is not src)
            moved = asyncio.Event()
            spike = asyncio.ensure_future(_waves((api, api_b), sale_id, moved, "w"))
            await asyncio.sleep(2 * WAVE_GAP_S)  # the first waves are in
            started = time.monotonic()
            await asyncio.to_thread(_migrate, redis_cluster, slot, dst, lambda: time.sleep(0.05))
            done_at = time.monotonic()
            moved.set()
            accepted = await spike
            assert any(t < started for t, _ in accepted) and any(t > done_at for t, _ in accepted)
            reserver = local.app[COMMERCE].reserver  # type: ignore[index]
            assert reserver.redirects > 0  # the in-process server met the move, and followed it
            ids = [oid for _, oid in accepted]
            ids += await _spike(api, api_b, sale_id, stock - len(ids) + 50, "rush")  # sells out
            assert len(ids) == len(set(ids)) == stock  # 50 buyers more than units left: none twice
            assert _home(redis_cluster, sale_id) is dst
            _check_units(redis_cluster, sale_id, stock, ids)
            for oid in ids[:: stock // 20]:
                st, body = await api.call("GET", f"/api/orders/{oid}", token=srv.token(_buyer(redis_cluster, oid)))
                assert st == 200 and body["id"] == oid, body
            await wait_for(lambda: set(ids) <= set(_sql_orders(database_url)), timeout=30)
    finally:
        stop_server(srv)


async def test_auction_groupbuy_pay_and_cancel_run_on_the_cluster(cluster_settings: Settings) -> None:
    """The other scripts on the cluster, through the API: bids, an auction's close and its winner's order
    paid and in SQL, a group-buy group opened and joined, a flash-sale order paid and another cancelled."""
    from commerce.auctions import AUCTIONS
    from livesale.services import SERVICES
    from tests.groupbuy_helpers import join_group, open_group, setup_groupbuy
    from tests.test_auctions import place, setup_auction

    async with start_app_server(cluster_settings) as srv, Api(srv) as api:
        assert srv.app is not None
        svc = srv.app[SERVICES]
        a = await setup_auction(api, duration_s=3600)
        assert (await place(api, a["id"], "ann", 4000, "k"))[0] == 201
        assert (await place(api, a["id"], "ben", 2500, "k"))[0] == 201
        ends = int(await svc.redis.hget(keys.auction(a["stream_id"], a["id"]), "ends_at"))  # type: ignore[misc]
        c = await srv.app[AUCTIONS].settle(a["id"], ends)
        assert c is not None and (c.status, c.winner, c.price) == ("sold", "ann", 2600)
        st, paid = await api.call("POST", f"/api/orders/{c.order}/pay", token=srv.token("ann"),
                                  json={"payment_method": "pm_card_visa"})
        assert (st, paid["status"]) == (200, "paid")

        g = await setup_groupbuy(api)
        st, opened = await open_group(api, g["gb_id"], "gia")
        assert st == 201, opened
        st, joined = await join_group(api, opened["group"], "hal")
        assert st == 201, joined
        st, group = await api.call("GET", f"/api/groups/{opened['group']}")
        assert (st, group["members"], group["status"]) == (200, 2, "open")

        s = await api.setup_sale(stock=5)
        st1, o1 = await api.reserve(s["sale_id"], "ivy", "k1")
        st2, o2 = await api.reserve(s["sale_id"], "jon", "k2")
        assert (st1, st2) == (201, 201)
        st, paid = await api.call("POST", f"/api/orders/{o1['id']}/pay", token=srv.token("ivy"),
                                  json={"payment_method": "pm_card_visa"})
        assert (st, paid["status"]) == (200, "paid")
        st, cancelled = await api.call("POST", f"/api/orders/{o2['id']}/cancel", token=srv.token("jon"))
        assert (st, cancelled["status"]) == (200, "cancelled")
        st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
        assert (sale["available"], sale["held"], sale["sold"]) == (4, 0, 1)

        async def in_sql() -> bool:
            want = {c.order: "paid", o1["id"]: "paid", o2["id"]: "cancelled"}
            async with svc.db.connect() as conn:
                rows = dict((await conn.exec_driver_sql("SELECT id, status FROM orders")).all())
            return all(rows.get(k) == v for k, v in want.items())

        await wait_for(in_sql, timeout=20)


async def test_cluster_url_or_env_connects_a_cluster_client(redis_cluster: EmbeddedCluster, cluster_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """redis+cluster://h:p,h:p and a plain redis:// URL with LIVESALE_REDIS_CLUSTER=1 both give a cluster
    client that reaches keys on every master; a plain URL alone stays a single-node client."""
    from livesale.redis_client import cluster_nodes, connect, is_cluster

    seeds = cluster_nodes(cluster_url)
    assert [(n.host, n.port) for n in seeds] == [("127.0.0.1", n.port) for n in redis_cluster.nodes]
    one = redis_cluster.nodes[1].url
    assert not is_cluster(connect(one))
    monkeypatch.setenv("LIVESALE_REDIS_CLUSTER", "1")
    for url in (cluster_url, one):
        r = connect(url)
        assert is_cluster(r)
        sale_ids = [f"s{i}" for i in range(30)]
        for sid in sale_ids:
            await r.set(keys.sale(sid), sid)
        assert [await r.get(keys.sale(sid)) for sid in sale_ids] == [sid.encode() for sid in sale_ids]
        assert {_node(redis_cluster, sid).port for sid in sale_ids} == {n.port for n in redis_cluster.nodes}
        await r.aclose()


async def test_room_keeps_delivering_after_its_streams_slot_moves(
        cluster_settings: Settings, redis_cluster: EmbeddedCluster) -> None:
    """A stream's slot (its seq, log, meta and channel) migrated to another master while viewers watch:
    comments sent afterwards still reach the viewer, seq goes on from where it was."""
    async with start_app_server(cluster_settings) as srv, Api(srv) as api:
        sid = (await api.setup_sale())["stream_id"]
        slot = key_slot(channel(sid).encode())
        dst = next(nd for nd in redis_cluster.nodes if nd is not redis_cluster.owner(slot))
        async with viewer(srv, sid, "ann") as (ws, _):
            await send(ws, {"type": "comment", "text": "before"})
            before = of_type(await collect(ws, lambda ev: bool(of_type(ev, "comment"))), "comment")
            await asyncio.to_thread(_migrate, redis_cluster, slot, dst)
            await send(ws, {"type": "comment", "text": "after"})
            after = of_type(await collect(ws, lambda ev: bool(of_type(ev, "comment")), wait=20), "comment")
        assert [c["text"] for c in before] == ["before"] and [c["text"] for c in after] == ["after"]
        assert after[0]["seq"] == before[0]["seq"] + 1
        assert channel(sid).encode() in _client(dst).execute_command("PUBSUB", "SHARDCHANNELS")


async def test_a_dead_master_fails_only_its_own_sales_buyers(
        cluster_settings: Settings, redis_cluster: EmbeddedCluster) -> None:
    """With one master killed, buyers of a sale on it get 503 `unavailable` while buyers of sales on the
    other masters, in the same batches, get their orders; after it is back, its sale sells again."""
    async with start_app_server(cluster_settings) as srv, Api(srv) as api:
        sales = await _sales_on_every_master(api, redis_cluster, stock=50)
        dead = redis_cluster.nodes[0]
        try:
            dead.kill()
            res = await asyncio.gather(*(api.reserve(s["sale_id"], f"u{i}-{n}", f"k{i}-{n}")
                                         for i in range(20) for n, s in enumerate(sales)))
            by_sale: dict[int, set[int]] = {}
            for i, (st, body) in enumerate(res):
                by_sale.setdefault(i % 3, set()).add(st)
                if st == 503:
                    assert body["error"] == "unavailable", body
            assert by_sale == {0: {503}, 1: {201}, 2: {201}}
        finally:
            if dead.proc is None:
                await asyncio.to_thread(dead.restart)
            assert await asyncio.to_thread(redis_cluster.wait_ok, 20)
        s0 = await api.setup_sale(stock=5)  # the dead master came back empty (no AOF in the fixture)
        st, _ = await api.reserve(s0["sale_id"], "late", "k-late")
        assert st == 201


async def test_a_stalled_master_holds_only_its_own_sales_buyers(
        cluster_settings: Settings, redis_cluster: EmbeddedCluster) -> None:
    """With one master stopped (SIGSTOP: connected, answering nothing), its sale's buyers get 503
    `unavailable` at the deadline while the other masters' buyers in the same batches get their orders."""
    import os
    import signal

    async with start_app_server(cluster_settings) as srv, Api(srv) as api:
        sales = await _sales_on_every_master(api, redis_cluster, stock=50)
        stalled = redis_cluster.nodes[0]
        assert stalled.proc is not None
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        try:
            res = await asyncio.gather(*(api.reserve(s["sale_id"], f"u{i}-{n}", f"k{i}-{n}")
                                         for i in range(20) for n, s in enumerate(sales)))
        finally:
            os.kill(stalled.proc.pid, signal.SIGCONT)
        by_sale: dict[int, set[int]] = {}
        for i, (st, body) in enumerate(res):
            by_sale.setdefault(i % 3, set()).add(st)
            if st == 503:
                assert body["error"] == "unavailable", body
        assert by_sale == {0: {503}, 1: {201}, 2: {201}}
        assert await asyncio.to_thread(redis_cluster.wait_ok, 20)
        st, _ = await api.reserve(sales[0]["sale_id"], "late", "k-late")
        assert st == 201  # the master is back: its sale sells again
