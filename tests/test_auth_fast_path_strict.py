"""The fast HS256 path accepts only what the installed PyJWT accepts (non-canonical base64url payloads go to PyJWT)."""
from __future__ import annotations

import base64
import hmac
import time

import jwt
import pytest

from livesale.auth import Verifier
from livesale.errors import Unauthorized

SECRET = "s" * 40


def _signed(payload_segment: str) -> str:
    header = jwt.encode({}, SECRET, algorithm="HS256").partition(".")[0]
    signing = f"{header}.{payload_segment}"
    sig = base64.urlsafe_b64encode(hmac.digest(SECRET.encode(), signing.encode(), "sha256")).rstrip(b"=")
    return f"{signing}.{sig.decode()}"


@pytest.mark.parametrize("mangle", [
    lambda p: p + "==",                 # padding PyJWT refuses on this length
    lambda p: p[:8] + "==" + p[8:],     # padding in the middle
    lambda p: p[:8] + "!" + p[8:],      # a non-alphabet character
    lambda p: p[:8] + " " + p[8:],
    lambda p: p.replace("_", "/").replace("-", "+") + "+",  # standard-alphabet characters
])
def test_fast_path_accepts_only_what_pyjwt_accepts(mangle) -> None:  # type: ignore[no-untyped-def]
    claims = b'{"sub":"mallory","role":"viewer","exp":%d}' % (int(time.time()) + 600)
    token = _signed(mangle(base64.urlsafe_b64encode(claims).rstrip(b"=").decode()))
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    with pytest.raises(Unauthorized):
        Verifier(SECRET).verify(token)


def test_fast_path_agrees_with_pyjwt_on_mutated_payloads() -> None:
    """Differential: correctly signed tokens whose payload segment was mutated (characters inserted,
    replaced or dropped); the fast path may only accept what PyJWT accepts."""
    import random

    rng = random.Random(20261124)
    claims = b'{"sub":"mallory","role":"viewer","exp":%d}' % (int(time.time()) + 600)
    base = base64.urlsafe_b64encode(claims).rstrip(b"=").decode()
    alphabet = "ABCabcxyz0189-_+/=!~ .\\"
    v = Verifier(SECRET)
    for _ in range(3000):
        p = list(base)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(p) + 1)
            op = rng.choice("irdt")
            if op == "i":
                p.insert(i, rng.choice(alphabet))
            elif op == "r" and i < len(p):
                p[i] = rng.choice(alphabet)
            elif op == "d" and i < len(p):
                del p[i]
            else:
                p.append(rng.choice("=-_A"))
        token = _signed("".join(p))
        try:
            jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]})
            pyjwt_ok = True
        except jwt.InvalidTokenError:
            pyjwt_ok = False
        if not token.isascii():
            continue
        if v._fast_claims(token) is not None:
            assert pyjwt_ok, token
