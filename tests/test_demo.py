"""`livesale demo`: the seeded stream and sale, also across restarts on the same data."""

from __future__ import annotations

import sqlalchemy as sa

from live.app import create_app
from live.demo import seed_on_startup
from livesale.config import Settings
from livesale.db import make_engine
from livesale.web import Runner
from tests.helpers import Api, start_app_server


async def _start_demo_once(settings: Settings) -> None:
    app = create_app(settings)
    app.on_startup.append(seed_on_startup)
    runner = Runner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await runner.cleanup()


async def test_demo_restart_reuses_its_stream_and_sale(settings: Settings) -> None:
    """Restarting `livesale demo` on the same Redis and database keeps one live demo stream with one
    running sale and one group-buy (the ones it prints again), instead of seeding more each time."""
    await _start_demo_once(settings)
    await _start_demo_once(settings)
    engine = make_engine(settings.sql_url)
    async with engine.connect() as conn:
        streams = (await conn.execute(sa.text("SELECT id, status FROM streams WHERE host = 'demo-host'"))).all()
        sales = (await conn.execute(sa.text("SELECT id FROM sales"))).all()
        groupbuys = (await conn.execute(sa.text("SELECT id FROM groupbuys"))).all()
    await engine.dispose()
    assert len(streams) == 1 and streams[0].status == "live", streams
    assert len(sales) == 1 and len(groupbuys) == 1, (sales, groupbuys)
    async with start_app_server(settings) as srv, Api(srv) as api:
        st, view = await api.call("GET", f"/api/streams/{streams[0].id}")
        assert st == 200 and view["status"] == "live" and view["pinned"]["sku"] == "DEMO-TEE"
        assert [s["status"] for s in view["sales"]] == ["active"]
