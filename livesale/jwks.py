"""An identity provider's signing keys (docs/auth.md), held in memory and refreshed in the background.

Requests never wait on the provider: `Verifier.verify` is synchronous (the purchase fast path, the
WebSocket upgrade and every handler call it) and reads `KeySet.get`. PyJWKClient fetches the key set
in a worker thread (its urllib fetch would block the event loop), every `refresh_s` and, when a token
names a key id we do not hold, at most once per `min_refresh_s`: a flood of tokens with made-up key
ids costs the provider one request per interval, not one per token. A provider rotates keys by
publishing the new one before signing with it, so the periodic refresh normally has it first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK, PyJWKClient

log = logging.getLogger("livesale.auth")

# Algorithm of a key by its JWK type (and curve): a token's `alg` must match the key that verifies it.
ALGORITHMS = ("RS256", "ES256")
FETCH_TIMEOUT_S = 5.0


def check_url(url: str) -> str | None:
    """Why `url` cannot be a JWKS URL, or None. https, or http to a loopback host (tests, a sidecar):
    urllib would also open file:// and ftp:// URLs."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return None
    return f"LIVESALE_JWKS_URL must be an https:// URL (http:// only to a loopback host), not {url!r}"


def _key_algorithm(key: PyJWK) -> str | None:
    """RS256 for an RSA public key, ES256 for a P-256 one (by the JWK's `alg`, or its type and curve);
    None for any other key, which then verifies nothing."""
    public = key.key
    if key.algorithm_name == "RS256" and isinstance(public, rsa.RSAPublicKey):
        return "RS256"
    if (key.algorithm_name == "ES256" and isinstance(public, ec.EllipticCurvePublicKey)
            and isinstance(public.curve, ec.SECP256R1)):
        return "ES256"
    return None


class KeySet:
    """The provider's signing keys by key id, as last fetched."""

    def __init__(self, url: str, *, refresh_s: float = 300.0, min_refresh_s: float = 10.0) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self.min_refresh_s = min_refresh_s
        # PyJWKClient's own cache is off: ours is the dict below, read without the client's lock.
        self._client = PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_S)
        self._keys: dict[str, tuple[PyJWK, str]] = {}
        self._last_attempt = -float("inf")
        self._fetching: asyncio.Task[None] | None = None
        self.fetches = 0  # completed fetch attempts, successful or not (tests wait on it)

    def get(self, kid: str) -> tuple[PyJWK, str] | None:
        """The key with id `kid` and its algorithm; None (and a refresh, if one is allowed now) when we
        do not hold it."""
        found = self._keys.get(kid)
        if found is None:
            self.request_refresh()
        return found

    def request_refresh(self) -> None:
        busy = self._fetching is not None and not self._fetching.done()
        if busy or time.monotonic() - self._last_attempt < self.min_refresh_s:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # verified outside a loop (a CLI, a test): the periodic refresh will have it
        self._fetching = loop.create_task(self.refresh())

    async def refresh(self) -> None:
        """Fetch the key set now; on failure keep the keys we had (a provider's outage must not sign
        everyone out)."""
        self._last_attempt = time.monotonic()
        try:
            fetched = await asyncio.to_thread(self._client.get_signing_keys, True)
        except jwt.PyJWKClientError as exc:
            log.warning("JWKS fetch from %s failed: %s", self.url, exc)
            return
        finally:
            self.fetches += 1
        keys: dict[str, tuple[PyJWK, str]] = {}
        for key in fetched:
            alg = _key_algorithm(key)
            if alg is not None and key.key_id:
                keys[key.key_id] = (key, alg)
        self._keys = keys

    async def run(self) -> None:
        """Refresh every `refresh_s` until cancelled (the first fetch is the caller's, at start)."""
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()
