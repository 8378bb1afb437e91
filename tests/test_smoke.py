"""The whole purchase path once, over real HTTP, real Redis and SQLite."""

from tests.helpers import Api, wait_for


async def test_reserve_pay_and_sql_row(api: Api) -> None:
    """A viewer reserves, retries the same key, pays, and the order reaches SQL as paid."""
    s = await api.setup_sale(stock=5)
    st, order = await api.reserve(s["sale_id"], "alice", "k1", 2)
    assert st == 201 and order["status"] == "reserved" and order["amount_cents"] == 2000
    st, again = await api.reserve(s["sale_id"], "alice", "k1", 2)
    assert st == 200 and again["id"] == order["id"]
    st, paid = await api.call("POST", f"/api/orders/{order['id']}/pay", token=api.server.token("alice"),
                              json={"payment_method": "pm_card_visa"})
    assert st == 200 and paid["status"] == "paid", paid
    st, sale = await api.call("GET", f"/api/sales/{s['sale_id']}")
    assert (sale["available"], sale["held"], sale["sold"]) == (3, 0, 2)

    import sqlalchemy as sa

    from commerce.schema import orders
    from livesale.services import SERVICES

    engine = api.server.app[SERVICES].db  # type: ignore[index]

    async def paid_in_sql() -> bool:
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(orders.c.status).where(orders.c.id == order["id"]))).first()
        return row is not None and row.status == "paid"

    await wait_for(paid_in_sql, 5)
