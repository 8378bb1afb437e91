"""JWT HS256 tokens (DESIGN.md "Auth"): claims `sub`, `role`, `exp`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from livesale.errors import Forbidden, Unauthorized

ROLES = ("viewer", "host", "moderator", "admin")


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


class Verifier:
    """Verifies tokens, caching good ones until they expire: a buyer sends the same token on every
    tap, and HMAC + JSON decoding is a real share of a reserve's cost."""

    MAX_CACHE = 200_000

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._cache: dict[str, User] = {}

    def verify(self, token: str) -> User:
        user = self._cache.get(token)
        if user is not None:
            if user.exp > time.time():
                return user
            del self._cache[token]
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("invalid token") from exc
        sub, role = claims.get("sub"), claims.get("role", "viewer")
        if not isinstance(sub, str) or not sub or len(sub) > 128 or role not in ROLES:
            raise Unauthorized("invalid token claims")
        user = User(sub, role, float(claims["exp"]))
        if len(self._cache) >= self.MAX_CACHE:
            self._cache.clear()
        self._cache[token] = user
        return user

    def from_header(self, header: str | None) -> User:
        if not header:
            raise Unauthorized("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected 'Authorization: Bearer <token>'")
        return self.verify(token.strip())


def require_role(user: User, *roles: str) -> None:
    if not user.is_(*roles):
        raise Forbidden(f"role {user.role!r} may not do this (needs {' or '.join(roles)})")
