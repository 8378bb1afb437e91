"""`python -m load.groupbuy` (`make load-groupbuy`): one bounded group-buy rush, end to end, then the
verdict on units and money.

1. a private redis-server and `livesale serve` on a free 127.0.0.1 port (load/show.py's `Show`);
2. the host, over HTTP: product, stream, start, a group-buy (tiers 2/3/5);
3. `--buyers` viewers rush it for up to `--seconds`: first the leaders (`--leader-ratio`) open groups
   all at once, then everyone else at once joins one of the open groups they heard of (its leader's
   share link: `ref`); some pay with a card that is declined (`--decline-ratio`), some tap twice with
   the same Idempotency-Key; a refused buyer (declined, full, closed) tries again, at most `--tries`
   times;
4. meanwhile `GET /api/groupbuys/{id}` is sampled: `available + in_groups + sold == stock` at each;
5. the host ends the group-buy (every open group closes by its size); the verifier waits for the money
   to move and judges Redis, SQL and the test provider's charges and refunds (load/groupbuy_verify.py).

Exit status 0 only if the verdict is clean. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from livesale.auth import mint
from load import groupbuy_verify
from load.show import Show

TIERS = [{"size": 2, "price_cents": 900}, {"size": 3, "price_cents": 800}, {"size": 5, "price_cents": 700}]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m load.groupbuy", description="A bounded group-buy rush, end to end.")
    p.add_argument("--buyers", type=int, default=400)
    p.add_argument("--stock", type=int, default=300)
    p.add_argument("--seconds", type=float, default=30.0, help="the rush stops after this long at most")
    p.add_argument("--leader-ratio", type=float, default=0.25, help="share of buyers who open a group")
    p.add_argument("--decline-ratio", type=float, default=0.1, help="share of attempts with a declined card")
    p.add_argument("--double-tap-ratio", type=float, default=0.1, help="share of attempts sent twice at once")
    p.add_argument("--tries", type=int, default=3, help="groups a refused buyer tries")
    p.add_argument("--concurrency", type=int, default=200, help="requests in flight at most")
    p.add_argument("--workers", type=int, default=1, help="livesale serve --workers")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="directory for outputs (default: a new temp dir)")
    return p


class Rush(Show):
    def __init__(self, args: argparse.Namespace) -> None:
        args.viewers = 0  # Show's per-address WebSocket cap; no viewers here
        super().__init__(args)
        self.rng = random.Random(args.seed)
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.open_groups: list[tuple[str, str]] = []  # (group id, leader) as shared so far
        self.samples = 0

    async def setup(self, http: aiohttp.ClientSession) -> dict[str, str]:
        self.host_token = mint(self.secret, "load-host", "host")
        sku = f"GB-{self.rng.randrange(1 << 30):x}"
        steps: list[tuple[str, str, Any]] = [
            ("POST", "/api/products", {"sku": sku, "title": "Group tea", "price_cents": 1000}),
            ("POST", "/api/streams", {"title": "Group-buy load"}),
            ("POST", "/api/streams/{stream}/start", None),
            ("POST", "/api/streams/{stream}/groupbuys",
             {"sku": sku, "stock": self.a.stock, "tiers": TIERS, "group_ttl_s": 600}),
        ]
        ids: dict[str, str] = {}
        for method, path, body in steps:
            st, doc = await self.call(http, method, path.format(**ids), body)
            if st not in (200, 201):
                raise RuntimeError(f"host setup {path}: {st} {doc}")
            if path == "/api/streams":
                ids["stream"] = doc["id"]
            elif path.endswith("/groupbuys"):
                ids["groupbuy"] = doc["id"]
        return ids

    async def attempt(self, http: aiohttp.ClientSession, sem: asyncio.Semaphore, path: str, user: str, key: str,
                      body: dict[str, Any]) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {mint(self.secret, user, 'viewer')}", "Idempotency-Key": key}
        taps = 2 if self.rng.random() < self.a.double_tap_ratio else 1

        async def once() -> tuple[int, Any]:
            async with sem:
                t0 = time.monotonic()
                async with http.post(self.url + path, json=body, headers=headers) as r:
                    doc = await r.json(content_type=None)
                self.latencies.append(time.monotonic() - t0)
                return r.status, doc
        results = await asyncio.gather(*(once() for _ in range(taps)))
        if taps == 2:
            members = {d.get("member") for st, d in results if st in (200, 201)}
            if len(members) > 1:
                self.problems.append(f"{user}: a double tap made two members {members}")
        return results[0]

    async def buyer(self, http: aiohttp.ClientSession, sem: asyncio.Semaphore, gb_id: str, i: int,
                    deadline: float, leader: bool) -> None:
        user = f"gb-buyer-{i}"
        for attempt in range(self.a.tries):
            if time.monotonic() > deadline:
                self.outcomes["out_of_time"] += 1
                return
            method = "pm_card_chargeDeclined" if self.rng.random() < self.a.decline_ratio else "pm_card_visa"
            lead = leader or not self.open_groups
            key = f"{user}-{attempt}"
            if lead:
                st, doc = await self.attempt(http, sem, f"/api/groupbuys/{gb_id}/groups", user, key,
                                             {"payment_method": method})
            else:
                gid, leader_id = self.rng.choice(self.open_groups)
                st, doc = await self.attempt(http, sem, f"/api/groups/{gid}/members", user, key,
                                             {"payment_method": method, "ref": leader_id})
            # 200: the other tap of a double tap made the member; this one answered it again.
            ok = st in (200, 201)
            code = "opened" if lead and ok else "joined" if ok else str(doc.get("error", st))
            self.outcomes[code] += 1
            if ok:
                if lead:
                    self.open_groups.append((doc["group"], user))
                return
            if code in ("group_full", "group_closed") and not lead:
                with contextlib.suppress(ValueError):  # its share link is no good any more
                    self.open_groups.remove((gid, leader_id))
            if st in (402, 409) and code != "sold_out":
                continue
            return

    async def sample(self, http: aiohttp.ClientSession, gb_id: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with http.get(f"{self.url}/api/groupbuys/{gb_id}") as r:
                gb = await r.json(content_type=None)
            self.samples += 1
            if gb["available"] + gb["in_groups"] + gb["sold"] != gb["stock"]:
                self.problems.append(f"sample: {gb['available']} + {gb['in_groups']} + {gb['sold']} != {gb['stock']}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    async def run(self) -> int:
        a = self.a
        self.start_server()
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            await self.wait_ready(http)
            ids = await self.setup(http)
            print(f"server {self.url}, group-buy {ids['groupbuy']}: {a.buyers} buyers rush in; outputs in {self.out}",
                  flush=True)
            sem = asyncio.Semaphore(a.concurrency)
            stop = asyncio.Event()
            sampler = asyncio.create_task(self.sample(http, ids["groupbuy"], stop))
            started = time.monotonic()
            deadline = started + a.seconds
            # Leaders open their groups, then everyone else arrives through the links they shared.
            leaders = max(1, int(a.buyers * a.leader_ratio))
            await asyncio.gather(*(self.buyer(http, sem, ids["groupbuy"], i, deadline, True) for i in range(leaders)))
            await asyncio.gather(*(self.buyer(http, sem, ids["groupbuy"], i, deadline, False)
                                   for i in range(leaders, a.buyers)))
            rush_s = time.monotonic() - started
            stop.set()
            await sampler
            st, doc = await self.call(http, "POST", f"/api/groupbuys/{ids['groupbuy']}/end")
            if st != 200:
                self.problems.append(f"ending the group-buy answered {st} {doc}")
        assert self.redis is not None
        verdict = await groupbuy_verify.check(self.redis.url, self.db_url, ids["groupbuy"], wait_s=30)
        text = self.report(verdict, rush_s)
        (self.out / "report.txt").write_text(text + "\n")
        print(text, flush=True)
        return 0 if verdict.ok and not self.problems else 1

    def report(self, verdict: groupbuy_verify.GroupbuyReport, rush_s: float) -> str:
        a = self.a
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0
        done = self.outcomes["opened"] + self.outcomes["joined"]
        lines = [
            f"livesale load group-buy: {a.buyers} buyers, stock {a.stock}, tiers 2@900 3@800 5@700, "
            f"server workers {a.workers}, 127.0.0.1 only",
            f"attempts      {sum(self.outcomes.values())} in {rush_s:.1f} s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"members/s     {done / rush_s if rush_s else 0:.1f}; request p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms "
            f"over {len(lat)} requests",
            f"unit samples  {self.samples} during the rush (available + in_groups + sold == stock at each)",
            verdict.text(),
        ]
        lines += [f"problem: {p}" for p in self.problems[:20]]
        return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    rush = Rush(_parser().parse_args(argv))
    started = time.monotonic()
    try:
        code = asyncio.run(rush.run())
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # noqa: BLE001 - report, then still stop every process
        print(f"load group-buy failed: {exc!r}", file=sys.stderr)
        code = 1
    finally:
        rush.stop_all()
    print(f"(whole run {time.monotonic() - started:.0f} s; outputs in {rush.out})")
    return code


if __name__ == "__main__":
    sys.exit(main())
