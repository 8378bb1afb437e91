"""Review of the viewer WebSocket against DESIGN.md "WebSocket" and "Fan-out rules": real server on
loopback, real `websockets` clients, real Redis."""

from __future__ import annotations

from livesale.codes import CloseCode
from tests.helpers import Api
from tests.test_realtime_ws import closed_code, collect, of_type, viewer


async def test_a_frame_of_exactly_4096_bytes_is_read_one_byte_more_closes_1009(api: Api) -> None:
    """A frame of 4096 bytes is not "over 4096": it is answered (pong); 4097 bytes close with 1009."""
    s = await api.setup_sale()
    ping = b'{"type":"ping"}'
    async with viewer(api.server, s["stream_id"], "gus") as (ws, _):
        await ws.send(ping + b" " * (4096 - len(ping)), text=True)
        assert of_type(await collect(ws, lambda ev: bool(of_type(ev, "pong"))), "pong")
        await ws.send(ping + b" " * (4097 - len(ping)), text=True)
        assert await closed_code(ws) == CloseCode.MESSAGE_TOO_BIG
