"""Hostile input edges of docs/limits.md: signed tokens whose claims are not plain JSON text (an
unpaired surrogate, invalid UTF-8, a repeated key) are 401 on HTTP (both purchase paths) and 4501 on
the WebSocket; an integer of any length where one is expected is 422. Nothing changes state."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import websockets

from livesale.auth import Verifier
from livesale.codes import CloseCode
from livesale.config import Settings
from livesale.errors import Unauthorized
from tests.helpers import Api, start_app_server
from tests.test_realtime_ws import closed_code, ws_url


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(secret: str, claims: bytes) -> str:
    """An HS256 token with exactly these claim bytes, properly signed."""
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(claims)
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


EXP = int(time.time()) + 3600
BAD_CLAIMS = {
    "unpaired-surrogate": b'{"sub":"\\ud800","role":"viewer","exp":%d}' % EXP,
    "surrogate-in-role": b'{"sub":"eve","role":"viewer\\udfff","exp":%d}' % EXP,
    "invalid-utf8": b'{"sub":"\xff\xfe","role":"viewer","exp":%d}' % EXP,
    "repeated-sub": b'{"sub":"alice","sub":"bob","role":"viewer","exp":%d}' % EXP,
    "repeated-role": b'{"sub":"eve","role":"viewer","role":"admin","exp":%d}' % EXP,
    "repeated-exp": b'{"sub":"eve","role":"viewer","exp":1,"exp":%d}' % EXP,
}


@pytest.fixture(params=[True, False], ids=["fast-path", "aiohttp-path"])
async def api_on(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Api]:
    async with start_app_server(replace(settings, fast_path=request.param)) as srv, Api(srv) as api:
        yield api


@pytest.mark.parametrize("name", list(BAD_CLAIMS))
def test_the_verifier_refuses_claims_that_are_not_plain_json(name: str) -> None:
    """Both of the verifier's paths (its own fast check and PyJWT's) refuse such claims with 401."""
    secret = "s" * 40
    with pytest.raises(Unauthorized):
        Verifier(secret).verify(signed(secret, BAD_CLAIMS[name]))


def test_the_verifier_still_accepts_a_plain_token_with_a_quote_colon_in_its_sub() -> None:
    """A `":` inside a value sends the fast check to PyJWT, which accepts the token as before."""
    secret = "s" * 40
    token = signed(secret, b'{"sub":"a\\":b","role":"viewer","exp":%d}' % EXP)
    assert Verifier(secret).verify(token).id == 'a":b'


async def test_bad_claims_are_401_on_both_purchase_paths(api_on: Api) -> None:
    """A purchase with such a token is 401 `unauthorized` (not a 500), and no unit moves."""
    api = api_on
    s = await api.setup_sale(stock=5)
    for name, claims in BAD_CLAIMS.items():
        st, body = await api.call("POST", f"/api/sales/{s['sale_id']}/orders", json={"quantity": 1},
                                  token=signed(api.server.settings.secret, claims), headers={"Idempotency-Key": name})
        assert (st, body["error"]) == (401, "unauthorized"), (name, st, body)
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"]) == (5, 0)


async def test_bad_claims_close_the_websocket_4501(api: Api) -> None:
    """A viewer socket with such a token is accepted, then closed 4501 (not 1011)."""
    s = await api.setup_sale()
    for name, claims in BAD_CLAIMS.items():
        token = signed(api.server.settings.secret, claims)
        async with websockets.connect(ws_url(api.server, s["stream_id"], token)) as ws:
            assert await closed_code(ws) == CloseCode.UNAUTHORIZED, name


@pytest.mark.parametrize("quantity", [
    pytest.param(b"9" * 20, id="20-digits"),
    pytest.param(b"9" * 309, id="309-digits"),
    pytest.param(b"9" * 5000, id="5000-digits"),
    pytest.param(b"-" + b"9" * 400, id="minus-400-digits"),
    pytest.param(b"1e400", id="1e400"),
])
async def test_an_integer_of_any_length_is_422(api_on: Api, quantity: bytes) -> None:
    """A quantity of any length (beyond what a double holds too) is 422 `invalid_quantity`, not 400."""
    api = api_on
    s = await api.setup_sale(stock=5)
    st, body = await api.call("POST", f"/api/sales/{s['sale_id']}/orders", data=b'{"quantity": %s}' % quantity,
                              token=api.server.token("buyer"),
                              headers={"Idempotency-Key": "k", "Content-Type": "application/json"})
    assert (st, body["error"]) == (422, "invalid_quantity"), (st, body)
    st, body = await api.call("POST", f"/api/sales/{s['sale_id']}/orders", data=b'{"quantity": %s, "x": NaN}' % quantity,
                              token=api.server.token("buyer"),
                              headers={"Idempotency-Key": "k", "Content-Type": "application/json"})
    assert (st, body["error"]) == (400, "bad_request"), (st, body)
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"]) == (5, 0)
