"""The reference for bench/fanout.py: a minimal `websockets.broadcast()` room.

Viewers connect to any path; a publisher connected to /publish sends events, each broadcast as is
to every viewer (the websockets docs' recipe: no per-viewer await, slow viewers skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

viewers: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    if ws.request is not None and ws.request.path == "/publish":
        async for msg in ws:
            broadcast(viewers, msg)
        return
    viewers.add(ws)
    try:
        await ws.wait_closed()
    finally:
        viewers.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(int(sys.argv[1])))
