"""Background loops that stop when cancelled.

redis-py can turn a cancellation that lands mid-command into a connection error (or absorb it while
it tears the connection down); a loop that retries on errors would then run forever after its task
was cancelled. These helpers re-raise while the task is being cancelled.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    raise_if_cancelling()
    await asyncio.sleep(seconds)
