"""Paying, cancelling and reading orders over HTTP against the real Redis and SQL: cases found by review."""

from __future__ import annotations

from tests.helpers import Api


async def test_expires_at_is_null_once_the_order_is_not_reserved(api: Api) -> None:
    """docs/api.md: `expires_at` is null once the order is no longer `reserved`, on every answer that
    carries the order (GET, cancel, a retried Idempotency-Key), not only on the pay answer."""
    s = await api.setup_sale(stock=5, per_user_limit=5)
    tok = api.server.token("ida")
    _, paid = await api.reserve(s["sale_id"], "ida", "k-paid")
    _, cancelled = await api.reserve(s["sale_id"], "ida", "k-cancel")
    st, held = await api.reserve(s["sale_id"], "ida", "k-held")
    assert st == 201 and held["expires_at"] is not None
    st, _ = await api.call("POST", f"/api/orders/{paid['id']}/pay", token=tok, json={"payment_method": "pm_card_visa"})
    assert st == 200
    st, body = await api.call("POST", f"/api/orders/{cancelled['id']}/cancel", token=tok)
    assert st == 200 and (body["status"], body["expires_at"]) == ("cancelled", None), body
    st, body = await api.call("GET", f"/api/orders/{paid['id']}", token=tok)
    assert st == 200 and (body["status"], body["expires_at"]) == ("paid", None), body
    st, body = await api.reserve(s["sale_id"], "ida", "k-paid")
    assert st == 200 and (body["status"], body["expires_at"]) == ("paid", None), body
    st, body = await api.call("GET", f"/api/orders/{held['id']}", token=tok)
    assert st == 200 and body["expires_at"] == held["expires_at"]


async def test_admin_may_cancel_and_pay_any_order(api: Api) -> None:
    """docs/api.md: `admin` may read and act on any order; pay and cancel answered it 404 (the scripts
    compared the admin's id with the order's owner), while another viewer still gets 404."""
    s = await api.setup_sale(stock=5, per_user_limit=5)
    admin, other = api.server.token("root", "admin"), api.server.token("mallory")
    _, to_cancel = await api.reserve(s["sale_id"], "jon", "k1")
    _, to_pay = await api.reserve(s["sale_id"], "jon", "k2")
    for oid in (to_cancel["id"], to_pay["id"]):
        st, body = await api.call("POST", f"/api/orders/{oid}/cancel", token=other)
        assert st == 404 and body["error"] == "not_found"
    st, body = await api.call("POST", f"/api/orders/{to_cancel['id']}/cancel", token=admin)
    assert st == 200 and body["status"] == "cancelled", body
    st, body = await api.call("POST", f"/api/orders/{to_pay['id']}/pay", token=admin,
                              json={"payment_method": "pm_card_visa"})
    assert st == 200 and body["status"] == "paid", body
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"], sale["sold"]) == (4, 0, 1)
