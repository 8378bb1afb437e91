"""Hold expiry, sale start/end and auction closing by the clock. Runs in every process; each step is
one idempotent script per sale, so two processes sweeping at once expire each hold once and announce each change once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from commerce import inventory, keys
from commerce.sales import get_sale, publish_sale
from livesale.services import Services
from livesale.tasks import keep_running
from monitoring import metrics as m

log = logging.getLogger("livesale.sweeper")


class Sweeper:
    def __init__(self, svc: Services, on_stock: Callable[[str, int, int], None], interval: float = 0.25,
                 auctions: Callable[[], Awaitable[int]] | None = None) -> None:
        self.svc = svc
        self.on_stock = on_stock
        self.interval = interval
        self.auctions = auctions  # closes due auctions (commerce.auctions.Auctions.sweep), first each tick

    async def tick(self) -> None:
        if self.auctions is not None:
            await self.auctions()
        await self.sweep_once()

    async def sweep_once(self) -> int:
        """One pass over open sales; returns holds expired."""
        redis = self.svc.redis
        expired = 0
        shown: list[str] = []
        for raw in await redis.smembers(keys.OPEN_SALES):  # type: ignore[misc]
            sale_id = raw.decode()
            t = await inventory.tick(redis, sale_id)
            if t is None:
                await redis.srem(keys.OPEN_SALES, sale_id)  # type: ignore[misc]
                continue
            expired += t.expired
            if t.expired:
                if m.ENABLED:
                    m.HOLDS_EXPIRED.inc(t.expired)
                if not keys.is_auction(sale_id):  # an auction winner's hold: no stock to show
                    self.on_stock(sale_id, t.available, t.held)
            if t.changed:
                await publish_sale(self.svc.bus, await get_sale(self.svc, sale_id))
                self.on_stock(sale_id, t.available, t.held)
            if t.status == "ended" and t.held == 0:
                # Nothing left to expire or announce; the order writer drains the events on its own.
                await redis.srem(keys.OPEN_SALES, sale_id)  # type: ignore[misc]
                continue
            if m.ENABLED:
                m.set_sale_units(sale_id, t.available, t.held, t.sold, t.stock)
                shown.append(sale_id)
        if m.ENABLED:
            # Also drops sales another process closed, so no stale series outlives its sale.
            m.retain_sales(shown)
        return expired

    async def run(self) -> None:
        await keep_running(self.tick, name="sweeper", log=log, interval=self.interval)
