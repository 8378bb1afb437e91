"""Hostile requests (kept as data in tests/fixtures) each get the documented 4xx JSON error, the
server keeps serving, and nothing changes: same sale counters, no order, no order event."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis

from commerce import keys
from tests.conftest import SECRET
from tests.helpers import Api

CASES = json.loads((Path(__file__).parent / "fixtures" / "hostile_reserve.json").read_text())


def _token(kind: str, api: Api) -> str | None:
    now = int(time.time())
    if kind == "none":
        return None
    if kind == "garbage":
        return "not.a.jwt"
    if kind == "forged":
        return jwt.encode({"sub": "mallory", "role": "viewer", "exp": now + 60}, "another-secret-of-enough-length-123456")
    if kind == "expired":
        return jwt.encode({"sub": "mallory", "role": "viewer", "exp": now - 5}, SECRET)
    if kind == "alg_none":
        head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        body = base64.urlsafe_b64encode(json.dumps({"sub": "mallory", "role": "viewer", "exp": now + 60}).encode())
        return f"{head}.{body.rstrip(b'=').decode()}."
    if kind == "host":
        return api.server.token("hostbuyer", "host")
    return api.server.token("mallory")


async def _state(r: aioredis.Redis, sale_id: str) -> tuple[Any, ...]:
    return (
        await r.hgetall(keys.sale(sale_id)),
        await r.hgetall(keys.users(sale_id)),
        await r.hlen(keys.orders(sale_id)),
        await r.xlen(keys.events(sale_id)),
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_hostile_reserve(api: Api, redis_url: str, case: dict[str, Any]) -> None:
    """Each hostile reserve request gets its documented error and changes nothing."""
    s = await api.setup_sale(stock=5)
    r = aioredis.Redis.from_url(redis_url)
    before = await _state(r, s["sale_id"])
    headers = {"Content-Type": "application/json"}
    key = case.get("key", "key-1")
    if key is not None:
        headers["Idempotency-Key"] = key
    kind = case.get("token", "viewer")
    tok = _token(kind, api)
    if kind == "basic":
        headers["Authorization"] = "Basic YWxhZGRpbjpvcGVuc2VzYW1l"
        tok = None
    if "body_hex" in case:
        data: bytes | str = bytes.fromhex(case["body_hex"])
    elif "body_size" in case:
        data = b'{"quantity": 1, "pad": "' + b"x" * case["body_size"] + b'"}'
    else:
        data = case["body"]
    sale_id = case.get("sale", s["sale_id"])
    st, body = await api.call("POST", f"/api/sales/{sale_id}/orders", token=tok, data=data, headers=headers)
    assert st == case["status"], body
    assert isinstance(body, dict) and body["error"] == case["error"] and body["message"]
    assert await _state(r, s["sale_id"]) == before
    # The server still sells afterwards.
    st, _ = await api.reserve(s["sale_id"], "good-user", "good-key")
    assert st == 201
    await r.aclose()


async def test_hostile_requests_on_other_endpoints(api: Api) -> None:
    """Bad bodies, unknown ids, other users' orders and wrong roles on the rest of the API."""
    s = await api.setup_sale(stock=5)
    ht, vt = s["host_token"], api.server.token("viewer1")
    st, o = await api.reserve(s["sale_id"], "viewer1", "k")
    cases = [
        ("POST", "/api/products", vt, {"sku": "X", "title": "t", "price_cents": 1}, 403, "forbidden"),
        ("POST", "/api/products", ht, {"sku": "", "title": "t", "price_cents": 1}, 422, "validation_error"),
        ("POST", "/api/products", ht, {"sku": "X1", "title": "t", "price_cents": -1}, 422, "validation_error"),
        ("POST", "/api/products", ht, {"sku": s["sku"], "title": "t", "price_cents": 1}, 409, "conflict"),
        ("POST", "/api/streams", vt, {"title": "x"}, 403, "forbidden"),
        ("POST", "/api/streams", ht, {"title": ""}, 422, "validation_error"),
        ("POST", "/api/streams", None, {"title": "x"}, 401, "unauthorized"),
        ("GET", "/api/streams/stnope", None, None, 404, "not_found"),
        ("POST", f"/api/streams/{s['stream_id']}/start", ht, None, 409, "invalid_state"),
        ("POST", f"/api/streams/{s['stream_id']}/end", api.server.token("other-host", "host"), None, 403, "forbidden"),
        ("POST", f"/api/streams/{s['stream_id']}/pin", ht, {"sku": "NOPE"}, 404, "not_found"),
        ("POST", f"/api/streams/{s['stream_id']}/sales", ht, {"sku": s["sku"], "price_cents": 1, "stock": -1,
                                                               "per_user_limit": 1, "duration_s": 1, "hold_s": 1},
         422, "validation_error"),
        ("POST", f"/api/streams/{s['stream_id']}/sales", ht, {"sku": s["sku"], "price_cents": 1, "stock": 1,
                                                               "per_user_limit": 1, "duration_s": 1, "hold_s": 1,
                                                               "starts_at": "tomorrow"}, 422, "validation_error"),
        ("POST", f"/api/sales/{s['sale_id']}/end", vt, None, 403, "forbidden"),
        ("GET", "/api/sales/sa000000000000", None, None, 404, "not_found"),
        ("GET", f"/api/orders/{o['id']}", api.server.token("someone-else"), None, 404, "not_found"),
        ("POST", f"/api/orders/{o['id']}/pay", api.server.token("someone-else"), {"payment_method": "pm_card_visa"},
         404, "not_found"),
        ("POST", f"/api/orders/{o['id']}/cancel", api.server.token("someone-else"), None, 404, "not_found"),
        ("POST", f"/api/orders/{o['id']}/pay", vt, {"payment_method": "pm_bogus"}, 422, "validation_error"),
        ("POST", f"/api/orders/{o['id']}/pay", vt, {}, 422, "validation_error"),
        ("GET", "/api/orders/nope", vt, None, 404, "not_found"),
        ("GET", "/api/nothing-here", None, None, 404, "not_found"),
        ("DELETE", f"/api/sales/{s['sale_id']}", ht, None, 405, "method_not_allowed"),
    ]
    for method, path, tok, body, want, code in cases:
        st, got = await api.call(method, path, token=tok, json=body)
        assert (st, got["error"]) == (want, code), (method, path, got)
    # A path that exists under other methods says which (Allow), in our error shape like any 405.
    async with api.session.request("PUT", f"{api.server.url}/api/orders/{o['id']}/pay") as r:
        assert r.status == 405 and r.content_type == "application/json"
        assert set(r.headers["Allow"].split(",")) == {"POST"}
        assert (await r.json())["error"] == "method_not_allowed"
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"], sale["sold"]) == (4, 1, 0)
    st, got = await api.call("GET", f"/api/orders/{o['id']}", token=vt)
    assert got["status"] == "reserved"
