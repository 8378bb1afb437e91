"""Redis connection and the one place redis-py errors become ours (CONTRIBUTING.md #3)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import redis.asyncio as aioredis
from redis import exceptions as rx

from livesale.errors import Unavailable

REDIS_DOWN = (rx.ConnectionError, rx.TimeoutError, ConnectionError, OSError, rx.BusyLoadingError)
# Replies of a Redis that answers but will not write now (memory full, a replica after failover, an AOF
# it cannot write, a script running too long): a 503 to retry, not a 500.
_REFUSING = ("OOM ", "READONLY ", "MISCONF ", "BUSY ", "MASTERDOWN ", "NOREPLICAS ")


def refuses_writes(exc: BaseException) -> bool:
    if isinstance(exc, (rx.ReadOnlyError, rx.OutOfMemoryError)):
        return True
    return isinstance(exc, rx.ResponseError) and str(exc).startswith(_REFUSING)


def connect(url: str, *, max_connections: int = 100, timeout_s: float = 3.0) -> aioredis.Redis:
    """A client whose commands, and waits for a free connection, give up after `timeout_s` (the app
    passes LIVESALE_REDIS_TIMEOUT_S: a stalled Redis is a 503, docs/limits.md)."""
    # A blocking pool: under a burst, callers queue for a connection instead of failing with
    # "Too many connections" (which would surface as a wrong 503).
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=min(1.0, timeout_s),
        socket_timeout=timeout_s,
        health_check_interval=0,
        max_connections=max_connections,
        timeout=timeout_s,
    )
    return aioredis.Redis.from_pool(pool)


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Map a lost Redis (or one refusing writes) to 503 `unavailable` (never a guessed answer)."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise Unavailable(f"redis unreachable: {exc.__class__.__name__}") from exc
    except rx.ResponseError as exc:
        if refuses_writes(exc):
            raise Unavailable(f"redis refuses writes: {str(exc)[:80]}") from exc
        raise


class LuaScript:
    """A Lua file beside the code that loads it; EVALSHA with a reload on NOSCRIPT
    (a restarted Redis has an empty script cache)."""

    def __init__(self, path: Path, prelude: str = "") -> None:
        import hashlib

        self.source = (prelude + "\n" + path.read_text()) if prelude else path.read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.name = path.stem

    async def __call__(self, r: aioredis.Redis, keys: list[str], args: list[object]) -> object:
        try:
            return await r.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except rx.NoScriptError:
            await r.script_load(self.source)  # type: ignore[misc]
            return await r.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
