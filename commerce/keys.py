"""Redis keys of commerce. Every key of one sale shares the hash tag `{sale:ID}` so each inventory
script touches one Cluster slot (CONTRIBUTING.md #8)."""

OPEN_SALES = "commerce:sales:open"  # set of sale ids the sweeper and the order writer follow
WRITER_GROUP = "order-writer"
WRITER_SALES = "commerce:sales:writer"  # set of sale ids whose order events the writer still follows


def sale(sale_id: str) -> str:
    """Hash: stock available held sold limit hold_ms price_cents currency sku stream status
    starts_at ends_at duration_ms (times in epoch ms; starts_at 0 = not scheduled)."""
    return f"{{sale:{sale_id}}}"


def users(sale_id: str) -> str:
    """Hash: user id -> units reserved + paid (the per-user limit)."""
    return f"{{sale:{sale_id}}}:users"


def idem(sale_id: str) -> str:
    """Hash: user id NUL idempotency key -> order id."""
    return f"{{sale:{sale_id}}}:idem"


def orders(sale_id: str) -> str:
    """Hash: s:<oid> status, u:<oid> user, q:<oid> quantity, e:<oid> hold expiry ms, k:<oid> key,
    c:<oid> created ms."""
    return f"{{sale:{sale_id}}}:orders"


def holds(sale_id: str) -> str:
    """Sorted set: order id scored by hold expiry (ms)."""
    return f"{{sale:{sale_id}}}:holds"


def events(sale_id: str) -> str:
    """Stream of order events (reserve, pay, cancel, expire) for the SQL writer."""
    return f"{{sale:{sale_id}}}:events"


def stream_sales(stream_id: str) -> str:
    """Set of sale ids opened on a stream."""
    return f"{{stream:{stream_id}}}:sales"


def sale_keys(sale_id: str) -> list[str]:
    """KEYS of every inventory script, in this order."""
    return [sale(sale_id), users(sale_id), idem(sale_id), orders(sale_id), holds(sale_id), events(sale_id)]


def sale_of_order(order_id: str) -> str:
    """Order ids are `<sale id>.<random>`: the sale (and so the slot) is known from the id alone."""
    sale_id, sep, _ = order_id.partition(".")
    return sale_id if sep else ""


# The built-in TestProvider's own records, shared by every process (Stripe keeps charges server-side).
TEST_CHARGES = "{testpay}:charges"  # hash: <idempotency key>:<method> -> charge id, ok flag, decline code
TEST_REFUNDED = "{testpay}:refunded"  # set of refunded charge ids


# Auctions (docs/auctions.md). An auction's bid state is tagged with its stream, `{stream:ID}`: a bid
# and its `bid` stream-log event (the stream's seq and log keys) are one script, so on Redis Cluster
# they must share a slot. The winner's order lives in sale-shaped keys `{sale:<auction id>}` (the
# functions above), so pay, cancel, expiry, the order writer and the reconciler serve it unchanged.
AUCTIONS = "commerce:auctions"  # hash: auction id -> stream id
OPEN_AUCTIONS = "commerce:auctions:open"  # set of auction ids the sweeper still closes or announces


def auction(stream_id: str, auction_id: str) -> str:
    """Hash: the auction's settings and bid state (status price leader leader_max ends_at bids ...)."""
    return f"{{stream:{stream_id}}}:auction:{auction_id}"


def auction_idem(stream_id: str, auction_id: str) -> str:
    """Hash: user id NUL idempotency key -> the accepted bid's answer (max:code:price:ends_at)."""
    return f"{{stream:{stream_id}}}:auction:{auction_id}:idem"


def stream_auctions(stream_id: str) -> str:
    """Sorted set of the auction ids opened on a stream, scored by creation time (ms)."""
    return f"{{stream:{stream_id}}}:auctions"


def is_auction(sale_id: str) -> bool:
    """Whether sale-shaped keys hold an auction's winning order (auction ids start `au`)."""
    return sale_id.startswith("au")


def auction_order(auction_id: str, token: str) -> str:
    """The winner's order id, chosen when the auction is created: `<auction id>.<16 hex>`, the same
    shape as a sale's orders (sale_of_order finds its keys)."""
    return f"{auction_id}.{token}"
TEST_REFUNDS = "{testpay}:refunds"  # hash: refund idempotency key -> charge id:cents (-1: all of it)
TEST_REFUND_LOG = "{testpay}:refund_log"  # list: each refund that moved money, charge id:cents:key


# Group-buys (docs/groupbuy.md). Every key of one group-buy shares the hash tag `{gb:ID}`, so each
# group-buy script (join, confirm, release, close) touches one Cluster slot.
OPEN_GROUPBUYS = "commerce:groupbuys:open"  # set of group-buy ids the group sweeper follows


def groupbuy(gb_id: str) -> str:
    """Hash: stream sku title currency stock available in_groups sold status ttl_ms tiers
    (\"size:price,...\") min_size max_size price0 created."""
    return f"{{gb:{gb_id}}}"


def groupbuy_keys(gb_id: str) -> list[str]:
    """KEYS of every group-buy script, in this order: the group-buy hash; groups (hash: s: status,
    l: leader, n: members (holding a unit while it is open), j: members charged, x: expires ms, c: created ms, m: member
    order ids comma-separated, p: price reached); users (hash: user -> their open group); idem (hash:
    user NUL key -> order id); orders (hash: s: status, u: user, g: group, k: key, c: created ms, m:
    payment method, r: ref, ch: charged cents, cid: charge id, a: amount owed, rf: refunded cents);
    open (zset: open group -> when it is due to close, ms); pending (zset: member being charged ->
    joined ms); settle (set: closed groups whose money is not all moved yet)."""
    base = groupbuy(gb_id)
    return [base] + [f"{base}:{k}" for k in ("groups", "users", "idem", "orders", "open", "pending", "settle")]


def group_lease(gb_id: str, group_id: str) -> str:
    """String: the process settling a closed group's money now (expires, so a dead one's lease lapses)."""
    return f"{{gb:{gb_id}}}:lease:{group_id}"


def stream_groupbuys(stream_id: str) -> str:
    """Set of group-buy ids opened on a stream."""
    return f"{{stream:{stream_id}}}:groupbuys"


def groupbuy_of(some_id: str) -> str:
    """Group ids (`<gb id>-<hex>`) and member order ids (`<gb id>.<hex>`) name their group-buy."""
    return some_id[:14]
