"""Token verification: the fast HS256 path accepts exactly what PyJWT accepts, and every bad token
(forged, tampered, expired, wrong algorithm, odd claims) is refused with 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livesale.auth import Verifier, mint
from livesale.errors import Unauthorized

SECRET = "test-secret-not-for-production-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, body: dict[str, Any], digest: Any = hashlib.sha256, key: str = SECRET) -> str:
    """A JWS built by hand (any header, any digest), so tests are not limited to what PyJWT writes."""
    signing_input = b64(header) + "." + b64(orjson.dumps(body))
    return signing_input + "." + b64(hmac.digest(key.encode(), signing_input.encode(), digest))


def reference(token: str) -> tuple[str, str, float] | str:
    """What PyJWT alone says: (sub, role, exp) or the error message (the verifier before the fast path)."""
    try:
        c = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        return "token expired"
    except jwt.InvalidTokenError:
        return "invalid token"
    sub, role = c.get("sub"), c.get("role", "viewer")
    if not isinstance(sub, str) or not sub or len(sub) > 128 or role not in ("viewer", "host", "moderator", "admin"):
        return "invalid token claims"
    return (sub, role, float(c["exp"]))


def outcome(token: str) -> tuple[str, str, float] | str:
    try:
        u = Verifier(SECRET).verify(token)
    except Unauthorized as exc:
        return exc.message
    return (u.id, u.role, u.exp)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {"sub": "alice", "role": "viewer", "iat": now, "exp": now + 600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def test_minted_token_takes_the_fast_path_and_matches_pyjwt() -> None:
    """A token we mint is accepted by the fast path itself, with the same user PyJWT would give."""
    tok = mint(SECRET, "alice", "host", ttl=600)
    assert Verifier(SECRET)._fast_claims(tok) is not None
    assert outcome(tok) == reference(tok)
    assert outcome(tok)[:2] == ("alice", "host")


@pytest.mark.parametrize("name, token", [
    ("forged (other secret)", jwt.encode(claims(), "another-secret-of-sufficient-length-123", algorithm="HS256")),
    ("expired", jwt.encode(claims(exp=int(time.time()) - 1), SECRET, algorithm="HS256")),
    ("HS512", signed(b'{"alg":"HS512","typ":"JWT"}', claims(), hashlib.sha512)),
    ("HS256 header, HS512 signature", signed(b'{"alg":"HS256","typ":"JWT"}', claims(), hashlib.sha512)),
    ("alg none", b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(orjson.dumps(claims())) + "."),
    ("iat in the future", jwt.encode(claims(iat=int(time.time()) + 600), SECRET, algorithm="HS256")),
    ("no exp", jwt.encode(claims(exp=None), SECRET, algorithm="HS256")),
    ("no sub", jwt.encode(claims(sub=None), SECRET, algorithm="HS256")),
    ("audience", jwt.encode(claims(aud="elsewhere"), SECRET, algorithm="HS256")),
    ("unknown role", jwt.encode(claims(role="root"), SECRET, algorithm="HS256")),
    ("two segments", "a.b"),
    ("four segments", mint(SECRET, "alice") + ".x"),
    ("non-ascii", mint(SECRET, "alice")[:-2] + "é"),
])
def test_bad_tokens_are_refused_with_pyjwts_words(name: str, token: str) -> None:
    """Each bad token is refused (401) with the same message PyJWT's verdict gives, never accepted."""
    assert isinstance(outcome(token), str), name
    assert outcome(token) == reference(token), name


def test_tampered_payload_with_the_old_signature_is_refused() -> None:
    """Swapping the payload of a valid token (another sub) without re-signing is refused."""
    h, _, s = mint(SECRET, "alice").split(".")
    forged = f"{h}.{b64(orjson.dumps(claims(sub='mallory')))}.{s}"
    assert outcome(forged) == "invalid token"


def test_header_we_do_not_write_still_decides_like_pyjwt() -> None:
    """An HS256 token with another header layout (keys reordered) goes to PyJWT and is accepted."""
    tok = signed(b'{"typ":"JWT","alg":"HS256"}', claims())
    assert Verifier(SECRET)._fast_claims(tok) is None
    assert outcome(tok) == reference(tok)
    assert not isinstance(outcome(tok), str)


def test_cached_token_expires() -> None:
    """A token accepted once is refused after its exp, even from the cache."""
    v = Verifier(SECRET)
    tok = jwt.encode(claims(exp=int(time.time()) + 1), SECRET, algorithm="HS256")
    assert v.verify(tok).id == "alice"
    time.sleep(1.1)
    with pytest.raises(Unauthorized, match="token expired"):
        v.verify(tok)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(min_value=0, max_value=400), char=st.sampled_from("AQgw_-.=xyz0 "),
       extra=st.dictionaries(st.sampled_from(["sub", "role", "iat", "exp", "nbf", "jti", "x"]),
                             st.one_of(st.integers(-2**40, 2**40), st.text(max_size=5), st.floats(), st.booleans())))
def test_fast_path_agrees_with_pyjwt_on_mutated_tokens(pos: int, char: str, extra: dict[str, Any]) -> None:
    """Random claim sets, signed with our secret and then possibly corrupted by one character, get
    exactly PyJWT's verdict (accept with the same user, or the same 401 message)."""
    try:
        tok = jwt.encode(claims(**extra), SECRET, algorithm="HS256")
    except (TypeError, ValueError):
        return  # PyJWT cannot even encode it (e.g. NaN)
    if pos < len(tok):
        tok = tok[:pos] + char + tok[pos + 1:]
    assert outcome(tok) == reference(tok)


@pytest.mark.parametrize("token", ["abc\udca0def", mint(SECRET, "u", "viewer") + "\udca0", "é.é.é"])
def test_non_ascii_tokens_are_401_not_500(token: str) -> None:
    """Header bytes that are not ASCII (aiohttp hands undecodable ones over as surrogates) are an
    invalid token, not an error in PyJWT's encode."""
    with pytest.raises(Unauthorized):
        Verifier(SECRET).from_header(f"Bearer {token}")
