"""Every livesale metric, in base units, with bounded label sets (no user or order ids).

Label sets stay bounded: `route` is the route template (`/api/sales/{id}/orders`, or `unmatched`),
`status`/`code`/`outcome`/`reason`/`type`/`op` come from fixed lists (livesale.codes and the outcome
tables), and `sale` is one of the sales that are open right now (the sweeper drops a sale's series
when it closes, see `retain_sales`).

With several workers, prometheus-client's multiprocess mode is used (PROMETHEUS_MULTIPROC_DIR set
before this module is imported); `multiprocess_mode` says how each gauge combines across workers.
The per-sale gauges are the exception: they mirror Redis (every worker's sweeper refreshes all of them
every sweep), so `/metrics` serves them from the answering worker's own registry, where a closed
sale's series can really be removed (see exposition.py and monitoring/README.md).
"""

from __future__ import annotations

import asyncio
import os
import warnings
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Hot paths check this before touching a metric, so `livesale serve --no-metrics` (LIVESALE_METRICS=0)
# measures what metrics cost. Set once at startup.
ENABLED = True

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- realtime hub
WS_CONNECTIONS = Gauge(
    "livesale_ws_connections", "Open viewer WebSocket connections", multiprocess_mode="livesum"
)
WS_EVENTS_SENT = Counter(
    "livesale_ws_events_sent_total", "Events delivered to viewer connections (one per viewer)", ["type"]
)
WS_EVENTS_DROPPED = Counter(
    "livesale_ws_events_dropped_total", "Events not delivered to a viewer", ["type", "reason"]
)
WS_SLOW_CLOSES = Counter(
    "livesale_ws_slow_consumer_closes_total", "Connections closed with 4008 (slow consumer)"
)
WS_CLOSES = Counter("livesale_ws_closes_total", "Connections closed by the server, by close code", ["code"])
WS_CLIENT_ERRORS = Counter(
    "livesale_ws_client_errors_total", "Client frames answered with an error event, by code", ["code"]
)
WS_PUBLISHED = Counter("livesale_ws_events_published_total", "Events published to a stream", ["type"])
WS_PUBLISH_LAG = Histogram(
    "livesale_ws_publish_lag_seconds", "Time from publish to the write to viewer sockets", buckets=LAG_BUCKETS
)

# --- HTTP
HTTP_REQUESTS = Counter("livesale_http_requests_total", "HTTP requests", ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "livesale_http_request_duration_seconds", "HTTP request latency", ["route", "method"],
    buckets=LATENCY_BUCKETS,
)

# --- inventory
RESERVE_OUTCOMES = Counter(
    "livesale_reserve_total",
    "Reserve attempts by outcome (reserved, duplicate, sold_out, limit_reached, not_active, conflict)",
    ["outcome"],
)
RESERVE_LATENCY = Histogram(
    "livesale_reserve_duration_seconds", "Reserve latency inside the server (queue + Redis)",
    buckets=LATENCY_BUCKETS,
)
RESERVE_BATCH = Histogram(
    "livesale_reserve_batch_size", "Reserve calls sent to Redis in one pipeline",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
SALE_UNITS = Gauge(
    "livesale_sale_units", "Units of an open sale by state (available, held, sold, stock)",
    ["sale", "state"], multiprocess_mode="livemostrecent",
)
SALE_INVARIANT_BROKEN = Gauge(
    "livesale_sale_invariant_violation_units",
    "|available + held + sold - stock| for an open sale; anything but 0 is an oversell bug",
    ["sale"], multiprocess_mode="livemax",
)
HOLDS_EXPIRED = Counter("livesale_holds_expired_total", "Unpaid holds expired (units returned)")
ORDERS_CANCELLED = Counter("livesale_orders_cancelled_total", "Orders cancelled by their buyer")
PAYMENTS = Counter(
    "livesale_payments_total", "Payment attempts by outcome (paid, declined, refunded, not_pending)", ["outcome"]
)
GROUP_JOINS = Counter(
    "livesale_group_joins_total",
    "Group-buy joins (and group openings) by outcome: joined, retry, declined, or the refusal's code", ["outcome"]
)
GROUPS_CLOSED = Counter("livesale_groups_closed_total", "Group-buy groups closed, by status", ["status"])
GROUP_REFUNDS = Counter(
    "livesale_group_refunds_total", "Group-buy refunds made: difference, full (failed group), void (never joined)",
    ["kind"]
)

# --- order writer (Redis stream -> SQL)
WRITER_PENDING = Gauge(
    "livesale_order_writer_pending",
    "Order events not yet committed to SQL (undelivered + pending in the consumer group)",
    multiprocess_mode="livemax",
)
WRITER_WRITTEN = Counter("livesale_order_writer_events_total", "Order events committed to SQL")
SQL_WRITE_LATENCY = Histogram(
    "livesale_sql_write_duration_seconds", "One order-writer SQL transaction", buckets=LATENCY_BUCKETS
)

# --- media (WHIP/WHEP, docs/media.md)
MEDIA_PUBLISHERS = Gauge(
    "livesale_media_publishers", "WHIP publishers connected to this process", multiprocess_mode="livesum"
)
MEDIA_VIEWERS = Gauge("livesale_media_viewers", "WHEP viewers served by this process", multiprocess_mode="livesum")
MEDIA_SESSIONS = Counter("livesale_media_sessions_total", "WHIP/WHEP sessions opened, by kind", ["kind"])
MEDIA_FRAMES = Counter(
    "livesale_media_frames_total",
    "Video frames by stage: received (decoded from publishers), encoded (once per stream and codec), "
    "sent (one per viewer)",
    ["stage"],
)
MEDIA_DROPPED = Counter(
    "livesale_media_frames_dropped_total",
    "Video frames dropped: encoder_busy (pushed out of the few frames waiting for a busy encoder)",
    ["reason"],
)
MEDIA_ENCODE = Histogram(
    "livesale_media_encode_seconds", "One frame's encode (one per stream and codec)", ["codec"],
    buckets=LATENCY_BUCKETS,
)
# Exported at 0 from the start, so rate() sees the first frame and the dashboard's queries resolve.
for _kind in ("whip", "whep"):
    MEDIA_SESSIONS.labels(_kind)
for _stage in ("received", "encoded", "sent"):
    MEDIA_FRAMES.labels(_stage)
for _reason in ("encoder_busy",):
    MEDIA_DROPPED.labels(_reason)
for _codec in ("H264", "VP8"):
    MEDIA_ENCODE.labels(_codec)

# --- dependencies
# --- limits under hostile load (docs/limits.md)
LIMIT_REFUSALS = Counter(
    "livesale_limit_refusals_total",
    "Connections and requests stopped by a limit: connection_cap (accepting paused at the cap), "
    "accept_error (accept() out of descriptors), header_timeout, ws_per_user and ws_per_ip (4009), "
    "redis_timeout (a purchase answered 503), unmasked_frame (1002)",
    ["limit"],
)
OPEN_CONNECTIONS = Gauge(
    "livesale_open_connections", "Client TCP connections open (the connection cap counts these)",
    multiprocess_mode="livesum",
)
REDIS_ERRORS = Counter("livesale_redis_errors_total", "Redis calls that failed, by operation", ["op"])

SALE_STATES = ("available", "held", "sold", "stock")
# Served from the answering process's registry even in multiprocess mode (see the module docstring).
PER_PROCESS_VIEWS = frozenset({SALE_UNITS._name, SALE_INVARIANT_BROKEN._name})

_sales_shown: set[str] = set()


def set_sale_units(sale_id: str, available: int, held: int, sold: int, stock: int) -> None:
    """Publish one open sale's units and its invariant check (available + held + sold == stock)."""
    for state, v in zip(SALE_STATES, (available, held, sold, stock), strict=True):
        SALE_UNITS.labels(sale_id, state).set(v)
    SALE_INVARIANT_BROKEN.labels(sale_id).set(abs(available + held + sold - stock))
    _sales_shown.add(sale_id)


def retain_sales(open_sales: Iterable[str]) -> None:
    """Drop the series of every sale not in `open_sales` (closed here or by another process), so the
    `sale` label only ever holds open sales."""
    keep = set(open_sales)
    with warnings.catch_warnings():
        # prometheus-client warns that removal does not reach the multiprocess files; these two
        # gauges are served from this process's registry instead (PER_PROCESS_VIEWS).
        warnings.simplefilter("ignore", UserWarning)
        for sale_id in _sales_shown - keep:
            for state in SALE_STATES:
                SALE_UNITS.remove(sale_id, state)
            SALE_INVARIANT_BROKEN.remove(sale_id)
    _sales_shown.intersection_update(keep)


# --- hot-path series ------------------------------------------------------------------------------
# prometheus-client takes a lock per update and walks a histogram's buckets in Python: about 1 us per
# call, four calls per purchase request, which is a real share of a refused reserve. The reserve path
# (and every route's HTTP metrics) update these stand-ins instead: plain additions, handed to the real
# series in bulk at the end of the event-loop turn and before every scrape of this process, so a
# scrape never misses a request that was answered before it. With --workers N they are not used
# (see _DIRECT below).


class _Deferred:
    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty = False

    def _touch(self) -> None:
        self.dirty = True
        _dirty.append(self)
        pending = _flush_on[0]
        if pending is None or pending.is_closed():  # (a loop that closed never ran its flush)
            _schedule_flush()

    def flush(self) -> None:
        raise NotImplementedError


class DeferredCounter(_Deferred):
    __slots__ = ("_child", "_n")

    def __init__(self, child: Any) -> None:
        super().__init__()
        self._child = child
        self._n = 0.0

    def inc(self, amount: float = 1) -> None:
        self._n += amount
        if not self.dirty:
            self._touch()

    def flush(self) -> None:
        n, self._n = self._n, 0.0
        if n:
            self._child.inc(n)


class DeferredHistogram(_Deferred):
    __slots__ = ("_child", "_bounds", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        super().__init__()
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount: prometheus-client's own rule (`amount <= bound`).
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        if not self.dirty:
            self._touch()

    def flush(self) -> None:
        counts, s = self._counts, self._sum
        self._counts, self._sum = [0] * len(self._bounds), 0.0
        buckets = self._child._buckets  # one ValueClass per bucket, as observe() updates them
        for i, c in enumerate(counts):
            if c:
                buckets[i].inc(c)
        self._child._sum.inc(s)


_dirty: list[_Deferred] = []
_flush_on: list[asyncio.AbstractEventLoop | None] = [None]  # the loop a flush is scheduled on
_series: dict[tuple[Any, tuple[str, ...]], Any] = {}  # (metric object, labels) -> its series


def _schedule_flush() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not in the event loop (a script, a thread): no turn to wait for
        flush()
        return
    _flush_on[0] = loop
    loop.call_soon(flush)


def flush() -> None:
    """Hand every deferred update to prometheus-client (end of loop turn, and before a scrape)."""
    _flush_on[0] = None
    dirty = _dirty[:]
    _dirty.clear()
    for series in dirty:
        series.dirty = False
        series.flush()


# With several workers (prometheus-client's multiprocess mode, chosen when it is imported), each update
# goes straight to the worker's mmap file: a scrape answered by another worker reads those files, and
# must count every request already answered, with no loop turn to wait for.
_DIRECT = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _deferred(cls: type[_Deferred], metric: Any, labels: tuple[str, ...]) -> Any:
    key = (metric, labels)  # the object itself, not id(): a collected metric's id can come back
    series = _series.get(key)
    if series is None:
        child = metric.labels(*labels) if labels else metric
        series = _series[key] = child if _DIRECT else cls(child)  # type: ignore[call-arg]
    return series


def counter(metric: Counter, *labels: str) -> DeferredCounter:
    """The deferred stand-in for `metric.labels(*labels)` (one per series, kept)."""
    return _deferred(DeferredCounter, metric, labels)  # type: ignore[no-any-return]


def histogram(metric: Histogram, *labels: str) -> DeferredHistogram:
    """The deferred stand-in for `metric.labels(*labels)` (one per series, kept)."""
    return _deferred(DeferredHistogram, metric, labels)  # type: ignore[no-any-return]
