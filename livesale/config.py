"""Settings from the environment (docs/design.md "Running")."""

from __future__ import annotations

import os
import resource
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from livesale.auth import MIN_SECRET_BYTES
from livesale.jwks import check_url


def _load_secret(data_dir: Path) -> str:
    # No LIVESALE_SECRET: keep one per data dir so `livesale token` and `livesale serve` agree.
    path = data_dir / "secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return value


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    database_url: str | None = None
    secret: str = ""
    data_dir: Path = Path(".livesale")
    workers: int = 1
    # Hold expiry and sale start/end sweep period; holds come back "within a second".
    sweep_interval_s: float = 0.25
    # Order writer: a pending entry idle this long is taken over from a dead consumer.
    writer_reclaim_ms: int = 30_000
    writer_batch: int = 500
    # Reserve batches a process keeps in flight to Redis at once (commerce.inventory.Reserver): more
    # means shorter waits for a batch to go out, fewer means more buyers per script call.
    reserve_in_flight: int = 4
    # After a short batch the writer waits this long before reading again, so that under a spike it
    # writes a few hundred rows per transaction instead of a few (per-transaction costs dominate).
    writer_linger_ms: int = 100
    # Bounded stream log kept for `since=` resume.
    stream_log_maxlen: int = 1000
    metrics: bool = True
    # A finished, fully written sale leaves Redis this long after (orders are then read from SQL).
    sale_retention_s: int = 7 * 86400
    # Run the order writer inside the server (off when writers run apart: `livesale writer`).
    run_writer: bool = True
    # Serve the purchase route on livesale.fasthttp's lean HTTP/1.1 path (every other request, and any
    # purchase request outside its strict subset, is handed to aiohttp). Off: aiohttp serves it too.
    fast_path: bool = True
    # Payment attempts left open this long (Redis lost between charge and commit, a process that died
    # there) are settled by commerce.settlement.Reconciler, which looks every `settle_interval_s`.
    settle_grace_s: float = 60.0
    settle_interval_s: float = 5.0
    # The payment provider: "package.module:factory", a callable taking no arguments that returns a
    # commerce.payments.PaymentProvider. Empty: the built-in TestProvider (Stripe's test methods).
    payment_provider: str = ""
    # Limits under hostile load (docs/limits.md). A request's line and headers arrive within
    # `header_timeout_s` of its first byte; an idle keep-alive connection closes after `keepalive_s`;
    # at `max_connections` open connections (0: 80% of the soft RLIMIT_NOFILE) the process stops
    # accepting until some close; WebSockets over `ws_per_user` / `ws_per_ip` close 4009; a purchase
    # that Redis has not answered within `redis_timeout_s` is 503 `unavailable`.
    header_timeout_s: float = 10.0
    keepalive_s: float = 75.0
    max_connections: int = 0
    ws_per_user: int = 10
    ws_per_ip: int = 500
    redis_timeout_s: float = 2.0
    # Group-buys: a member still being charged this long after joining (its process died, or the
    # provider hangs) is settled by the group sweeper from what the provider says; a process settling a
    # closed group's money holds it this long at most (then another takes over).
    group_pending_s: float = 30.0
    group_lease_s: float = 15.0
    # Identity (docs/auth.md). HS256 tokens signed with `secret` unless `jwt_hs256` is off; RS256/ES256
    # tokens from an identity provider whose keys are at `jwks_url`, with `iss` == `jwt_issuer` and an
    # `aud` naming `jwt_audience` required when set; no token lives longer than `jwt_max_lifetime_s`
    # (`exp - iat`; 0: no bound). The provider's keys are fetched every `jwks_refresh_s`, and for a key
    # id we do not hold at most once per `jwks_min_refresh_s`.
    jwt_hs256: bool = True
    jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_max_lifetime_s: int = 0
    jwt_role_claim: str = "role"
    jwks_refresh_s: float = 300.0
    jwks_min_refresh_s: float = 10.0
    # aiohttp's access log (logger `aiohttp.access`), with query strings left out: a WebSocket's
    # `?token=` must never reach a log line.
    access_log: bool = False

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        data_dir = Path(overrides.pop("data_dir", None) or env.get("LIVESALE_DATA", ".livesale"))
        s = cls(
            redis_url=env.get("REDIS_URL") or None,
            database_url=env.get("DATABASE_URL") or None,
            data_dir=data_dir,
            writer_reclaim_ms=int(env.get("LIVESALE_WRITER_RECLAIM_MS", "30000")),
            reserve_in_flight=int(env.get("LIVESALE_RESERVE_IN_FLIGHT", "4")),
            writer_linger_ms=int(env.get("LIVESALE_WRITER_LINGER_MS", "100")),
            writer_batch=int(env.get("LIVESALE_WRITER_BATCH", "500")),
            sweep_interval_s=float(env.get("LIVESALE_SWEEP_INTERVAL", "0.25")),
            metrics=env.get("LIVESALE_METRICS", "1") not in ("0", "false", "off"),
            sale_retention_s=int(env.get("LIVESALE_SALE_RETENTION_S", str(7 * 86400))),
            run_writer=env.get("LIVESALE_WRITER", "1") not in ("0", "false", "off"),
            fast_path=env.get("LIVESALE_FAST_PATH", "1") not in ("0", "false", "off"),
            settle_grace_s=float(env.get("LIVESALE_SETTLE_GRACE_S", "60")),
            payment_provider=env.get("LIVESALE_PAYMENT_PROVIDER", ""),
            header_timeout_s=float(env.get("LIVESALE_HEADER_TIMEOUT_S", "10")),
            keepalive_s=float(env.get("LIVESALE_KEEPALIVE_S", "75")),
            max_connections=int(env.get("LIVESALE_MAX_CONNECTIONS", "0")),
            ws_per_user=int(env.get("LIVESALE_WS_PER_USER", "10")),
            ws_per_ip=int(env.get("LIVESALE_WS_PER_IP", "500")),
            redis_timeout_s=float(env.get("LIVESALE_REDIS_TIMEOUT_S", "2")),
            group_pending_s=float(env.get("LIVESALE_GROUP_PENDING_S", "30")),
            group_lease_s=float(env.get("LIVESALE_GROUP_LEASE_S", "15")),
            jwt_hs256=env.get("LIVESALE_JWT_HS256", "1") not in ("0", "false", "off"),
            jwks_url=env.get("LIVESALE_JWKS_URL", ""),
            jwt_issuer=env.get("LIVESALE_JWT_ISSUER", ""),
            jwt_audience=env.get("LIVESALE_JWT_AUDIENCE", ""),
            jwt_max_lifetime_s=int(env.get("LIVESALE_JWT_MAX_LIFETIME_S", "0")),
            jwt_role_claim=env.get("LIVESALE_JWT_ROLE_CLAIM", "role"),
            jwks_refresh_s=float(env.get("LIVESALE_JWKS_REFRESH_S", "300")),
            jwks_min_refresh_s=float(env.get("LIVESALE_JWKS_MIN_REFRESH_S", "10")),
            access_log=env.get("LIVESALE_ACCESS_LOG", "0") not in ("0", "false", "off"),
        )
        secret = overrides.pop("secret", None) or env.get("LIVESALE_SECRET") or _load_secret(data_dir)
        return replace(s, secret=secret, **overrides)

    def auth_problems(self) -> list[str]:
        """What makes these identity settings unsafe or unusable; `livesale serve` refuses to start
        with any (docs/auth.md)."""
        problems = []
        if self.jwt_hs256 and len(self.secret.encode()) < MIN_SECRET_BYTES:
            problems.append(f"LIVESALE_SECRET is {len(self.secret.encode())} bytes; HS256 needs at least "
                            f"{MIN_SECRET_BYTES} (`python -c 'import secrets; print(secrets.token_urlsafe(32))'`),"
                            " or set LIVESALE_JWT_HS256=0 to accept only the identity provider's tokens")
        if self.jwks_url and (why := check_url(self.jwks_url)):
            problems.append(why)
        if not self.jwt_hs256 and not self.jwks_url:
            problems.append("LIVESALE_JWT_HS256=0 without LIVESALE_JWKS_URL would accept no token at all")
        if self.jwt_max_lifetime_s < 0:
            problems.append("LIVESALE_JWT_MAX_LIFETIME_S must be 0 (no bound) or a number of seconds")
        return problems

    @property
    def connection_cap(self) -> int:
        """`max_connections`, or 80% of the soft RLIMIT_NOFILE: the rest stays for Redis, SQL and files."""
        if self.max_connections > 0:
            return self.max_connections
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 1_000_000
        return max(1, soft * 4 // 5)

    @property
    def sql_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'livesale.db').resolve()}"
