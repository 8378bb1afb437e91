"""JWT tokens (docs/auth.md): HS256 signed with this deployment's secret, and RS256/ES256 signed by an
identity provider whose keys come from a JWKS URL. Claims `sub`, `role`, `exp` (and `iat`)."""

from __future__ import annotations

import binascii
import hmac
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
import orjson

from livesale.errors import Forbidden, Unauthorized
from livesale.jwks import ALGORITHMS, KeySet

if TYPE_CHECKING:
    from livesale.config import Settings

ROLES = ("viewer", "host", "moderator", "admin")
# RFC 7518 §3.2: an HS256 key has at least as many bits as the hash output (256).
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class User:
    id: str
    role: str
    exp: float

    def is_(self, *roles: str) -> bool:
        return self.role in roles or self.role == "admin"


def mint(secret: str, sub: str, role: str = "viewer", ttl: int = 3600) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    now = int(time.time())
    return jwt.encode({"sub": sub, "role": role, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


# The header segment PyJWT writes for HS256 ({"alg":"HS256","typ":"JWT"}): the fast path below takes
# only this exact header, so the algorithm is pinned by a string compare.
_HS256_HEADER = jwt.encode({}, "0" * 64, algorithm="HS256").partition(".")[0]
_HS256_PREFIX = _HS256_HEADER + "."
_PREFIX_LEN = len(_HS256_PREFIX)
_FAST_CLAIMS = frozenset(("sub", "role", "iat", "exp"))
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Verifier:
    """Verifies tokens, caching good ones until they expire: a buyer sends the same token on every
    tap, and HMAC + JSON decoding is a real share of a reserve's cost.

    A spike brings many first taps (issue 2's benchmark: 20,000 users, 50,000 attempts), so a token
    we minted is accepted by `_fast_claims` (one HMAC, one orjson parse: ~3 us instead of PyJWT's
    ~27 us). That path only ever accepts; whenever it is not sure, PyJWT decides, so every rejection
    and its message are PyJWT's."""

    MAX_CACHE = 200_000

    def __init__(self, secret: str, *, hs256: bool = True, jwks: KeySet | None = None,
                 issuer: str | None = None, audience: str | None = None, max_lifetime_s: int = 0,
                 role_claim: str = "role") -> None:
        """`secret` verifies HS256 tokens (unless `hs256` is off); `jwks` holds the identity provider's
        keys for RS256/ES256 tokens, which must then carry `iss` == `issuer` and `aud` naming
        `audience` when those are set. With `max_lifetime_s`, every token needs `iat` and
        `exp - iat` at most that. `role_claim` names the provider's claim carrying our role."""
        self._secret = secret
        self._key = secret.encode()
        self._hs256 = hs256
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._max_lifetime = max_lifetime_s
        self._role_claim = role_claim
        self._cache: dict[str, User] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier:
        """The verifier `settings` describe; its KeySet (if any) is `.jwks`, for the caller to refresh."""
        jwks = None
        if settings.jwks_url:
            jwks = KeySet(settings.jwks_url, refresh_s=settings.jwks_refresh_s,
                          min_refresh_s=settings.jwks_min_refresh_s)
        return cls(settings.secret, hs256=settings.jwt_hs256, jwks=jwks, issuer=settings.jwt_issuer or None,
                   audience=settings.jwt_audience or None, max_lifetime_s=settings.jwt_max_lifetime_s,
                   role_claim=settings.jwt_role_claim)

    @property
    def jwks(self) -> KeySet | None:
        return self._jwks

    def _fast_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token that `jwt.decode(..., algorithms=["HS256"], require exp and sub)`
        would accept, when it has our header and only our claims (and the key is long enough that PyJWT
        has nothing to warn about); None means "ask PyJWT"."""
        if (not self._hs256 or not token.startswith(_HS256_PREFIX) or not token.isascii()
                or len(self._key) < MIN_SECRET_BYTES):
            return None
        signing, _, sig = token.encode().rpartition(b".")
        payload = signing[_PREFIX_LEN:]
        # Only canonical unpadded base64url (what we mint): PyJWT rejects padding, stray characters and
        # non-canonical encodings, so anything else is left to it.
        if not sig or len(payload) % 4 == 1 or payload.translate(None, _B64URL_ALPHABET):
            return None
        mac = hmac.digest(self._key, signing, "sha256")
        if not hmac.compare_digest(sig, binascii.b2a_base64(mac, newline=False).translate(_TO_URLSAFE).rstrip(b"=")):
            return None
        try:
            raw = binascii.a2b_base64(payload.translate(_FROM_URLSAFE) + b"==")
            if binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != payload:
                return None  # unused bits set: not the canonical encoding
            claims = orjson.loads(raw)
        except (ValueError, binascii.Error):
            return None
        if type(claims) is not dict or not claims.keys() <= _FAST_CLAIMS:
            return None
        if raw.count(b'":') != len(claims):
            return None  # a repeated key (orjson keeps the last), or a `":` inside a value: ask PyJWT
        exp, iat = claims.get("exp"), claims.get("iat", 0)
        if type(exp) is not int or type(iat) is not int or type(claims.get("sub")) is not str:
            return None
        now = time.time()
        if exp <= now or iat > now:  # PyJWT's own rules, leeway 0: it words the rejection
            return None
        if self._max_lifetime and ("iat" not in claims or exp - iat > self._max_lifetime):
            return None
        return claims

    def verify(self, token: str) -> User:
        user = self._cache.get(token)
        if user is not None:
            if user.exp > time.time():
                return user
            del self._cache[token]
        claims = self._fast_claims(token)
        role_claim = "role"
        if claims is None:
            claims, role_claim = self._pyjwt_claims(token)
        sub, role = claims.get("sub"), claims.get(role_claim, "viewer")
        if not isinstance(sub, str) or not sub or len(sub) > 128 or role not in ROLES:
            raise Unauthorized("invalid token claims")
        user = User(sub, role, float(claims["exp"]))
        if len(self._cache) >= self.MAX_CACHE:
            self._cache.clear()
        self._cache[token] = user
        return user

    def _pyjwt_claims(self, token: str) -> tuple[dict[str, Any], str]:
        """The claims PyJWT accepts under our rules, and the name of the claim that carries the role."""
        require = ["exp", "sub"] + (["iat"] if self._max_lifetime else [])
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg == "HS256" and self._hs256:
                claims: dict[str, Any] = jwt.decode(
                    token, self._secret, algorithms=["HS256"], options={"require": require})
                role_claim = "role"
            elif alg in ALGORITHMS and self._jwks is not None:
                kid = header.get("kid")
                found = self._jwks.get(kid) if isinstance(kid, str) else None
                if found is None:
                    raise Unauthorized("token signed by an unknown key")
                key, key_alg = found
                if alg != key_alg:
                    raise Unauthorized("invalid token")
                if self._issuer:
                    require.append("iss")
                if self._audience:
                    require.append("aud")
                claims = jwt.decode(token, key.key, algorithms=[alg], issuer=self._issuer,
                                    audience=self._audience, options={"require": require})
                role_claim = self._role_claim
            else:
                raise Unauthorized("invalid token")
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid token") from exc
        if not _plain_json(token.split(".")[1]):
            raise Unauthorized("invalid token claims")
        if self._max_lifetime:
            # PyJWT has checked that both are integers (it takes int() of each).
            if int(claims["exp"]) - int(claims["iat"]) > self._max_lifetime:
                raise Unauthorized(f"token lifetime over {self._max_lifetime} s")
        return claims, role_claim

    def from_header(self, header: str | None) -> User:
        if not header:
            raise Unauthorized("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected 'Authorization: Bearer <token>'")
        token = token.strip()
        if not token.isascii():  # a JWT is ASCII; other bytes (undecodable ones too) made PyJWT raise a 500
            raise Unauthorized("invalid token")
        return self.verify(token)


class _RepeatedKey(ValueError):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _RepeatedKey
    return obj


def _plain_json(segment: str) -> bool:
    """Whether a signed token's claims segment is JSON that means one thing (docs/limits.md): valid
    UTF-8 text without unpaired surrogates (PyJWT's json.loads lets `\\ud800` through, and such a `sub`
    fails later, as a 500, wherever it is encoded) and no key twice (json.loads keeps the last)."""
    try:
        raw = binascii.a2b_base64(segment.encode().translate(_FROM_URLSAFE) + b"==")
        orjson.loads(raw)  # strict UTF-8, and refuses unpaired surrogate escapes
        json.loads(raw, object_pairs_hook=_no_repeats)
    except (ValueError, binascii.Error):
        return False
    return True


def require_role(user: User, *roles: str) -> None:
    if not user.is_(*roles):
        raise Forbidden(f"role {user.role!r} may not do this (needs {' or '.join(roles)})")
