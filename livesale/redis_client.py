"""Redis connection and the one place redis-py errors become ours (CONTRIBUTING.md #3)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript

from livesale.errors import Unavailable

# rx.ClusterError: a Redis Cluster that is down or still failing after the client's redirects and
# retries (ClusterDownError, MasterDownError are its kinds): unreachable for now, a 503 to retry.
REDIS_DOWN = (rx.ConnectionError, rx.TimeoutError, ConnectionError, OSError, rx.BusyLoadingError, rx.ClusterError)
# Replies of a Redis that answers but will not write now (memory full, a replica after failover, an AOF
# it cannot write, a script running too long): a 503 to retry, not a 500.
_REFUSING = ("OOM ", "READONLY ", "MISCONF ", "BUSY ", "MASTERDOWN ", "NOREPLICAS ", "CLUSTERDOWN ", "TRYAGAIN ")


def refuses_writes(exc: BaseException) -> bool:
    if isinstance(exc, (rx.ReadOnlyError, rx.OutOfMemoryError, rx.ClusterDownError, rx.TryAgainError)):
        return True
    return isinstance(exc, rx.ResponseError) and str(exc).startswith(_REFUSING)


CLUSTER_SCHEME = "redis+cluster://"


def wants_cluster(url: str) -> bool:
    """`REDIS_URL=redis+cluster://host:port,...`, or any URL with LIVESALE_REDIS_CLUSTER=1 (docs/cluster.md)."""
    return url.startswith(CLUSTER_SCHEME) or os.environ.get("LIVESALE_REDIS_CLUSTER", "") in ("1", "true", "yes")


def is_cluster(r: object) -> bool:
    return isinstance(r, RedisCluster)


def cluster_nodes(url: str) -> list[ClusterNode]:
    """The seed nodes of a `redis+cluster://h1:p1,h2:p2` (or plain `redis://h:p/0`) URL."""
    rest = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    nodes = []
    for part in rest.split(","):
        host, _, port = part.strip().rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    return nodes


def connect(url: str, *, max_connections: int = 100, timeout_s: float = 3.0) -> aioredis.Redis:
    """A client whose commands, and waits for a free connection, give up after `timeout_s` (the app
    passes LIVESALE_REDIS_TIMEOUT_S: a stalled Redis is a 503, docs/limits.md). On a cluster URL, redis-py's
    RedisCluster, typed as a Redis: it serves every command we call on the shared client, routed by
    key slot with MOVED/ASK followed; the few places that need more (our own pipelining, pub/sub, multi-key
    reads) ask `is_cluster` (docs/cluster.md)."""
    if wants_cluster(url):
        netloc = url.split("://", 1)[1].split("/", 1)[0]
        user, _, password = netloc.rpartition("@")[0].partition(":")
        client = RedisCluster(
            startup_nodes=cluster_nodes(url), decode_responses=False, socket_connect_timeout=min(1.0, timeout_s),
            socket_timeout=timeout_s, health_check_interval=0, max_connections=max_connections,
            username=unquote(user) or None, password=unquote(password) or None,
        )
        return cast(aioredis.Redis, client)
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
    """A Lua file beside the code that loads it, run through redis-py's own script object
    (`register_script`: EVALSHA, and on NOSCRIPT, which a restarted Redis with an empty script cache
    answers, SCRIPT LOAD and EVALSHA again). Each call names the client it runs on."""

    def __init__(self, path: Path, prelude: str = "") -> None:
        import hashlib

        self.source = (prelude + "\n" + path.read_text()) if prelude else path.read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.name = path.stem
        # On a cluster, rooms are sharded pub/sub: a script publishes with SPUBLISH, whose channel must
        # be in the slot of the script's keys (stream channels are: `stream:S` hashes as `{stream:S}`).
        self.cluster_source = self.source.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
        self.cluster_sha = hashlib.sha1(self.cluster_source.encode()).hexdigest()
        # redis-py's script objects, plain and cluster variant, registered with the first client of
        # each kind that calls (a script object needs a client to be made; it runs on the one named).
        self._scripts: dict[bool, AsyncScript] = {}

    def for_client(self, r: object) -> tuple[str, str]:
        """(sha, source) of the variant this client runs."""
        return (self.cluster_sha, self.cluster_source) if is_cluster(r) else (self.sha, self.source)

    async def __call__(self, r: aioredis.Redis, keys: list[str], args: list[object]) -> object:
        cluster = is_cluster(r)
        script = self._scripts.get(cluster)
        if script is None:
            script = self._scripts[cluster] = r.register_script(self.for_client(r)[1].encode())
        return await script(keys, args, client=r)
