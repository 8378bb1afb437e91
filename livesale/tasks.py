"""Background loops that stop when cancelled.

redis-py can turn a cancellation that lands mid-command into a connection error (or absorb it while
it tears the connection down); a loop that retries on errors would then run forever after its task
was cancelled. These helpers re-raise while the task is being cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from livesale.redis_client import REDIS_DOWN
from monitoring import metrics as m


def settle(fut: asyncio.Future[Any], outcome: Any) -> None:
    """Give a batched caller its outcome (a result, or the exception standing for it), unless it
    stopped waiting."""
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


def raise_if_cancelling() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    raise_if_cancelling()
    await asyncio.sleep(seconds)


async def keep_running(step: Callable[[], Awaitable[object]], *, name: str, log: logging.Logger,
                       interval: float = 0.0) -> None:
    """Run `step` again and again until cancelled (every process's sweeper, order writer...). A lost
    Redis is counted under `name` and retried after a second; any other error is logged and retried."""
    while True:
        raise_if_cancelling()
        try:
            await step()
        except REDIS_DOWN:
            m.REDIS_ERRORS.labels(name).inc()
            await pause(1.0)
        except Exception:
            log.exception("%s step failed; retrying", name)
            await pause(1.0)
        if interval:
            await pause(interval)
