"""Identity from a provider (docs/auth.md): RS256/ES256 tokens verified against a real JWKS endpoint on
loopback, `iss`/`aud` required when configured, a maximum lifetime, bounded key refreshes, and
`livesale serve` refusing unsafe settings at start."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
import pytest
import websockets
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from live.cli import main
from livesale.auth import Verifier, mint
from livesale.codes import CloseCode
from livesale.config import Settings
from livesale.errors import Unauthorized
from livesale.jwks import KeySet
from tests.helpers import Api, start_app_server, start_demo_server, wait_for
from tests.test_realtime_ws import closed_code, ws_url

ISSUER = "https://idp.example.test/"
AUDIENCE = "livesale-api"


def _jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    alg = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    data: dict[str, Any] = json.loads(alg.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", **extra}


@dataclass
class Provider:
    """An identity provider's JWKS endpoint on 127.0.0.1 (a real aiohttp server) and its private keys."""

    url: str = ""
    keys: dict[str, tuple[Any, str]] = field(default_factory=dict)  # kid -> (private key, alg)
    published: list[str] = field(default_factory=list)
    requests: int = 0
    failing: bool = False

    def add(self, kid: str, alg: str, *, publish: bool = True) -> None:
        if alg in ("RS256", "PS256"):
            key: Any = rsa.generate_private_key(65537, 2048)
        else:
            key = ec.generate_private_key(ec.SECP384R1() if alg == "ES384" else ec.SECP256R1())
        self.keys[kid] = (key, alg)
        if publish:
            self.published.append(kid)

    def token(self, kid: str, sub: str = "idp-user", *, alg: str | None = None, ttl: int = 600,
              **claims: Any) -> str:
        key, key_alg = self.keys[kid]
        now = int(time.time())
        body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl, **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key,
                          algorithm=alg or key_alg, headers={"kid": kid})

    async def handle(self, _request: web.Request) -> web.Response:
        self.requests += 1
        if self.failing:
            return web.Response(status=500, text="down")
        return web.json_response({"keys": [_jwk(self.keys[k][0], k, **({"alg": "PS256"} if self.keys[k][1] == "PS256" else {}))
                                           for k in self.published]})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    p.add("rsa-1", "RS256")
    p.add("ec-1", "ES256")
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", p.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    p.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield p
    await runner.cleanup()


def idp_settings(settings: Settings, provider: Provider, **changes: Any) -> Settings:
    return replace(settings, jwks_url=provider.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
                   jwt_max_lifetime_s=3600, jwks_min_refresh_s=0.2, **changes)


async def loaded(provider: Provider, **kw: Any) -> Verifier:
    keyset = KeySet(provider.url, min_refresh_s=kw.pop("min_refresh_s", 0.2))
    await keyset.refresh()
    return Verifier("s" * 40, jwks=keyset, issuer=ISSUER, audience=AUDIENCE, max_lifetime_s=3600, **kw)


async def test_rs256_and_es256_tokens_from_the_provider_are_accepted(provider: Provider) -> None:
    """A token signed by each of the provider's keys verifies to its `sub` and `role` (viewer by default)."""
    v = await loaded(provider)
    assert (v.verify(provider.token("rsa-1", "ann")).id, v.verify(provider.token("rsa-1", "ann")).role) == ("ann", "viewer")
    assert v.verify(provider.token("ec-1", "bob", role="host")).role == "host"


def _hs_with(key: bytes, now: int) -> str:
    """The algorithm-confusion forgery: HS256 keyed with the provider's public key (PyJWT refuses to
    sign with a PEM key, so the MAC is computed by hand)."""

    def seg(obj: dict[str, Any]) -> str:
        return jwt.utils.base64url_encode(json.dumps(obj, separators=(",", ":")).encode()).decode()

    signing = seg({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}) + "." + seg(
        {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60})
    return signing + "." + jwt.utils.base64url_encode(hmac.digest(key, signing.encode(), hashlib.sha256)).decode()


def refusals(p: Provider) -> dict[str, str]:
    """Tokens a provider-configured verifier must refuse, by what is wrong with them."""
    now = int(time.time())
    claims = {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}
    public_pem = p.keys["rsa-1"][0].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if "rsa-unpublished" not in p.keys:
        p.add("rsa-unpublished", "RS256", publish=False)
    return {
        "wrong-issuer": p.token("rsa-1", iss="https://evil.example/"),
        "no-issuer": p.token("rsa-1", iss=None),
        "wrong-audience": p.token("rsa-1", aud="someone-else"),
        "no-audience": p.token("ec-1", aud=None),
        "expired": p.token("rsa-1", iat=now - 100, exp=now - 10),
        "lifetime-over-max": p.token("ec-1", ttl=3601),
        "no-iat": p.token("rsa-1", iat=None),
        "iat-in-future": p.token("rsa-1", iat=now + 120),
        "unknown-kid": p.token("rsa-unpublished"),
        "kid-of-the-other-algorithm": jwt.encode(claims, p.keys["rsa-1"][0], algorithm="RS256",
                                                 headers={"kid": "ec-1"}),
        "ps256-on-an-rsa-key": p.token("rsa-1", alg="PS256"),
        "hs256-keyed-with-the-public-key": _hs_with(public_pem, now),
        "alg-none": jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"}),
        "bad-role": p.token("rsa-1", role="superuser"),
    }


async def test_provider_tokens_outside_the_rules_are_refused(provider: Provider) -> None:
    """Wrong or missing iss/aud, expired, too long-lived, an unknown or mismatched key, another
    algorithm, the HS256-with-public-key confusion, alg none, an unknown role: each is 401."""
    v = await loaded(provider)
    for name, token in refusals(provider).items():
        with pytest.raises(Unauthorized):
            v.verify(token)
            pytest.fail(f"{name} was accepted")


async def test_without_issuer_and_audience_configured_they_are_not_required(provider: Provider) -> None:
    """`iss` and `aud` are checked only when configured: a token without them verifies."""
    keyset = KeySet(provider.url)
    await keyset.refresh()
    v = Verifier("s" * 40, jwks=keyset)
    assert v.verify(provider.token("rsa-1", "cat", iss=None, aud=None)).id == "cat"


async def test_hs256_can_be_turned_off(provider: Provider) -> None:
    """With `hs256=False` our own minted tokens are refused on the fast check and on PyJWT's."""
    v = await loaded(provider, hs256=False)
    token = mint("s" * 40, "dan")
    assert v._fast_claims(token) is None
    with pytest.raises(Unauthorized):
        v.verify(token)
    assert Verifier("s" * 40).verify(token).id == "dan"


def test_max_lifetime_applies_to_hs256_on_the_fast_check_too() -> None:
    """A minted token longer-lived than the maximum is refused; within it, the fast check accepts it."""
    v = Verifier("s" * 40, max_lifetime_s=3600)
    short, long_ = mint("s" * 40, "eve", ttl=3600), mint("s" * 40, "eve", ttl=3601)
    assert v._fast_claims(short) is not None
    assert v._fast_claims(long_) is None
    with pytest.raises(Unauthorized, match="lifetime"):
        v.verify(long_)
    no_iat = jwt.encode({"sub": "eve", "exp": int(time.time()) + 60}, "s" * 40, algorithm="HS256")
    assert Verifier("s" * 40).verify(no_iat).id == "eve"
    with pytest.raises(Unauthorized):
        v.verify(no_iat)


async def test_a_new_key_is_fetched_once_and_then_accepted(provider: Provider) -> None:
    """A rotated-in key id unknown to us is 401 and starts one refresh; after it the token verifies.
    Many tokens with unknown key ids within the interval cost the provider one request."""
    v = await loaded(provider, min_refresh_s=30)
    assert v.jwks is not None
    provider.add("rsa-2", "RS256")
    fresh = provider.token("rsa-2", "fay")
    before = provider.requests
    v.jwks._last_attempt = 0.0  # the periodic fetch is long past
    for i in range(50):
        with pytest.raises(Unauthorized, match="unknown key"):
            v.verify(provider.token("rsa-2", f"u{i}", ttl=600 + i))
    await wait_for(lambda: v.jwks is not None and v.jwks.fetches == 2)
    assert provider.requests == before + 1
    assert v.verify(fresh).id == "fay"
    provider.add("rsa-3", "RS256")
    with pytest.raises(Unauthorized, match="unknown key"):
        v.verify(provider.token("rsa-3"))
    await asyncio.sleep(0)
    assert provider.requests == before + 1  # within min_refresh_s: no second request


async def test_a_provider_outage_keeps_the_keys_we_have(provider: Provider) -> None:
    """A failed refresh (HTTP 500) is logged and keeps the earlier keys: tokens keep verifying."""
    v = await loaded(provider)
    provider.failing = True
    assert v.jwks is not None
    await v.jwks.refresh()
    assert v.jwks.fetches == 2 and provider.requests == 2
    assert v.verify(provider.token("ec-1", "gus")).id == "gus"


@pytest.fixture(params=[True, False], ids=["fast-path", "aiohttp-path"])
async def idp_api(request: pytest.FixtureRequest, settings: Settings, provider: Provider) -> AsyncIterator[Api]:
    async with start_app_server(idp_settings(settings, provider, fast_path=request.param)) as srv, \
            Api(srv) as api:
        yield api


async def test_provider_tokens_buy_and_are_refused_alike_on_both_purchase_paths(
        idp_api: Api, provider: Provider) -> None:
    """Over HTTP, on the fast purchase path and on aiohttp's: provider tokens reserve; every refused
    kind is 401 `unauthorized`, and only the accepted purchases moved units."""
    api = idp_api
    s = await api.setup_sale(stock=10, per_user_limit=1)  # the host signs in with an HS256 token
    url = f"/api/sales/{s['sale_id']}/orders"
    for i, kid in enumerate(("rsa-1", "ec-1")):
        st, body = await api.call("POST", url, json={"quantity": 1}, token=provider.token(kid, f"buyer{i}"),
                                  headers={"Idempotency-Key": f"k{i}"})
        assert st == 201, body
    refused = {**refusals(provider), "hs256-lifetime-over-max": mint(api.server.settings.secret, "x", ttl=3601)}
    for name, token in refused.items():
        st, body = await api.call("POST", url, json={"quantity": 1}, token=token, headers={"Idempotency-Key": name})
        assert (st, body["error"]) == (401, "unauthorized"), (name, body)
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"]) == (8, 2)


async def test_provider_tokens_on_the_websocket(idp_api: Api, provider: Provider) -> None:
    """A provider token signs a viewer in on the WebSocket; a token with the wrong audience closes 4501."""
    s = await idp_api.setup_sale()
    async with websockets.connect(ws_url(idp_api.server, s["stream_id"], provider.token("ec-1", "hal"))) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] != "error", hello
    bad = provider.token("ec-1", "hal", aud="other")
    async with websockets.connect(ws_url(idp_api.server, s["stream_id"], bad)) as ws:
        assert await closed_code(ws) == CloseCode.UNAUTHORIZED


@pytest.mark.parametrize(("env", "says"), [
    ({"LIVESALE_SECRET": "short-secret"}, "LIVESALE_SECRET is 12 bytes; HS256 needs at least 32"),
    ({"LIVESALE_SECRET": "s" * 40, "LIVESALE_JWT_HS256": "0"}, "would accept no token at all"),
    ({"LIVESALE_SECRET": "s" * 40, "LIVESALE_JWKS_URL": "http://idp.example.test/jwks"}, "must be an https:// URL"),
    ({"LIVESALE_SECRET": "s" * 40, "LIVESALE_JWKS_URL": "file:///etc/passwd"}, "must be an https:// URL"),
])
@pytest.mark.parametrize("cmd", ["serve", "demo"])
def test_serve_refuses_unsafe_identity_settings_at_start(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object,
        env: dict[str, str], says: str, cmd: str) -> None:
    """`livesale serve` (and `demo`) exit 2 with a clear message before starting anything."""
    monkeypatch.setenv("LIVESALE_DATA", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main([cmd, "--port", "1"]) == 2
    assert says in capsys.readouterr().err


async def test_demo_sign_in_tokens_stay_within_the_maximum_lifetime(settings: Settings) -> None:
    """Under a LIVESALE_JWT_MAX_LIFETIME_S shorter than a day, `POST /dev/token` mints tokens that live
    that long, and the server accepts them."""
    async with start_demo_server(replace(settings, jwt_max_lifetime_s=600)) as srv, Api(srv) as api:
        st, body = await api.call("POST", "/dev/token", json={"user": "hana", "role": "host"})
        assert st == 200 and body["expires_in"] == 600
        st, stream = await api.call("POST", "/api/streams", token=body["token"], json={"title": "Mine"})
        assert st == 201, stream


async def test_only_rsa_and_p256_keys_are_taken_from_the_key_set(provider: Provider) -> None:
    """A P-384 key and an RSA key published for PS256 are left out of the keys we hold: tokens signed
    with them are refused, and the RS256/ES256 keys beside them still verify."""
    provider.add("ec-384", "ES384")
    provider.add("rsa-pss", "PS256")
    v = await loaded(provider)
    assert v.jwks is not None and v.jwks.get("ec-384") is None and v.jwks.get("rsa-pss") is None
    for kid in ("ec-384", "rsa-pss"):
        with pytest.raises(Unauthorized):
            v.verify(provider.token(kid))
    assert v.verify(provider.token("rsa-1", "ida")).id == "ida"
