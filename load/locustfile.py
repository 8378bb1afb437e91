"""Locust scenario for a live show: viewers on the WebSocket, buyers in the flash sale, one host; and
bidders in an auction's last seconds (BidderUser, `--auction-id`).

    LIVESALE_SECRET=... locust -f load/locustfile.py,load/shape.py --host http://127.0.0.1:8080
    LIVESALE_SECRET=... locust -f load/locustfile.py BuyerUser --headless -u 200 -r 50 -t 30s \
        --host http://127.0.0.1:8080 --sale-id sa... --csv out/run

Tokens are minted here with the server's LIVESALE_SECRET (livesale.auth.mint): a load tool that
knows the signing key needs no login endpoint. Never point it at a server whose secret matters.

Without --sale-id/--stream-id the host user sets the show up over HTTP (product, stream, start, pin,
scheduled sale) and opens the sale `--sale-open-after` seconds later; in distributed mode the ids
travel worker -> master -> every worker as a `livesale_show` message, so buyers and viewers on every
machine find them. Custom WebSocket measurements go through `events.request` (request_type "WS"):
`connect`, `recv <type>` with the event's lag from its `ts` as the response time, `send like`,
`send comment`, `close <code>`. Purchase outcomes are request_type "ORDER" (name = outcome), so the
stats CSV has one row per outcome next to the raw HTTP rows.

The WebSocket client is websocket-client (`import websocket`): a plain-socket client that gevent's
monkey-patching makes cooperative; it is what locust-plugins' WebSocket users and python-engineio
(Locust's own socketio contrib) use. The asyncio `websockets` client cannot run under gevent.
"""

from __future__ import annotations

import random
import struct
import time
import uuid
from datetime import datetime
from typing import Any

import gevent
import gevent.event
import orjson
import websocket
from locust import HttpUser, User, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from livesale.auth import mint
from load import wire

SHOW: dict[str, str] = {}  # stream, sale: the show under test
SHOW_READY = gevent.event.Event()
MESSAGE = "livesale_show"
_started = [0.0]  # wall clock of test start on this process (host opens the sale relative to it)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser  # an argument group would not take Locust's include_in_web_ui
    g.add_argument("--sale-id", default="", env_var="LIVESALE_SALE_ID", help="existing sale (else the host creates one)")
    g.add_argument("--stream-id", default="", env_var="LIVESALE_STREAM_ID", help="existing stream of that sale")
    g.add_argument("--livesale-secret", default="", env_var="LIVESALE_SECRET", include_in_web_ui=False,
                   help="HS256 key shared with the server, to mint tokens (prefer the env var)")
    g.add_argument("--stock", type=int, default=500, help="stock of a sale the host creates")
    g.add_argument("--per-user-limit", type=int, default=2)
    g.add_argument("--hold-s", type=int, default=30, help="hold time of a sale the host creates")
    g.add_argument("--sale-open-after", type=float, default=10.0, help="seconds after start the host opens the sale")
    g.add_argument("--pay-ratio", type=float, default=0.7, help="share of reserved orders that get paid")
    g.add_argument("--quantity", type=int, default=1, help="units per reserve")
    g.add_argument("--viewer-wait", type=float, nargs=2, default=[2.0, 8.0], metavar=("MIN", "MAX"),
                   help="seconds between a viewer's likes/comments")
    g.add_argument("--comment-share", type=float, default=0.15, help="share of viewer actions that are comments")
    g.add_argument("--auction-id", default="", env_var="LIVESALE_AUCTION_ID", help="active auction for BidderUser")
    g.add_argument("--bid-last-s", type=float, default=3.0, help="BidderUser bids from this long before the end")
    g.add_argument("--bid-cap", type=int, nargs=2, default=[5_000, 500_000], metavar=("MIN", "MAX"),
                   help="range of each bidder's own limit (cents)")


def _learn(data: dict[str, str]) -> None:
    if data.get("sale") and data.get("stream"):
        SHOW.update(stream=data["stream"], sale=data["sale"])
        SHOW_READY.set()


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is not None and opts.sale_id:
        _learn({"sale": opts.sale_id, "stream": opts.stream_id or "-"})
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        def relay(msg: Any, **_kw: Any) -> None:
            runner.send_message(MESSAGE, msg.data)  # to every worker, the sender included

        runner.register_message(MESSAGE, relay)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(MESSAGE, lambda msg, **_kw: _learn(msg.data))


@events.test_start.add_listener
def _test_start(**_: Any) -> None:
    _started[0] = time.time()


def _opts(user: User) -> Any:
    opts = user.environment.parsed_options
    if opts is None or not opts.livesale_secret:
        raise RuntimeError("set LIVESALE_SECRET to the server's secret (tokens are minted locally)")
    return opts


def _fire(env: Environment, kind: str, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
    env.events.request.fire(request_type=kind, name=name, response_time=ms, response_length=length,
                            exception=exc, context={})


def _error_code(resp: Any) -> str:
    try:
        return str(resp.json().get("error") or resp.status_code)
    except Exception:  # noqa: BLE001 - a non-JSON body is itself the answer
        return str(resp.status_code)


def _paid_before(resp: Any) -> bool:
    """A pay retried after its answer was lost finds the order paid by the lost attempt: 409
    `order_not_pending` with status `paid` (docs/api.md); only this buyer pays its order."""
    if resp.status_code != 409:
        return False
    try:
        body = resp.json()
    except Exception:  # noqa: BLE001 - a non-JSON body is not that answer
        return False
    return body.get("error") == "order_not_pending" and body.get("status") == "paid"


class HostUser(HttpUser):
    """Sets the show up (unless ids were given), opens the sale on cue, pins the product now and then."""

    fixed_count = 1
    wait_time = between(5, 15)

    def on_start(self) -> None:
        opts = _opts(self)
        self.token = mint(opts.livesale_secret, f"host-{uuid.uuid4().hex[:8]}", "host")
        self.sku = ""
        if SHOW_READY.is_set():
            return  # a show given on the command line: its host is someone else; this user only watches it
        self.sku, calls = wire.show_setup_calls(stock=opts.stock, per_user_limit=opts.per_user_limit,
                                                hold_s=opts.hold_s, duration_s=3600)
        ids: dict[str, str] = {}
        for method, path, body in calls:
            with self.client.request(method, path.format(**ids), json=body, name=path.replace("{stream}", "[id]"), catch_response=True,
                                     headers=self._auth()) as r:
                if r.status_code not in (200, 201):
                    r.failure(f"{r.status_code} {_error_code(r)}")
                    raise RuntimeError(f"host setup failed at {path}: {r.status_code} {r.text}")
                if path == "/api/streams":
                    ids["stream"] = r.json()["id"]
                elif path.endswith("/sales"):
                    ids["sale"] = r.json()["id"]
        gevent.sleep(max(0.0, _started[0] + opts.sale_open_after - time.time()))
        r = self.client.post(f"/api/sales/{ids['sale']}/start", headers=self._auth(), name="/api/sales/[id]/start")
        r.raise_for_status()
        _learn(ids)
        if isinstance(self.environment.runner, WorkerRunner):
            self.environment.runner.send_message(MESSAGE, ids)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @task
    def pin_and_look(self) -> None:
        if self.sku:
            self.client.post(f"/api/streams/{SHOW['stream']}/pin", json={"sku": self.sku}, headers=self._auth(),
                             name="/api/streams/[id]/pin")
        self.client.get(f"/api/sales/{SHOW['sale']}", name="/api/sales/[id]")


class BuyerUser(HttpUser):
    """A shopper per iteration: taps buy (sometimes twice with the same key), retries 503s with
    backoff honouring Retry-After, then pays with pm_card_visa or walks away and lets the hold expire."""

    weight = 1
    wait_time = between(0.2, 1.0)
    max_retries = 5

    def on_start(self) -> None:
        self.opts = _opts(self)
        SHOW_READY.wait()

    def _post(self, path: str, name: str, token: str, body: dict[str, Any], key: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        if key:
            headers["Idempotency-Key"] = key
        for attempt in range(self.max_retries + 1):
            with self.client.post(path, json=body, headers=headers, name=name, catch_response=True) as r:
                if r.status_code == 503 or r.status_code == 0:
                    r.failure(f"{r.status_code} {_error_code(r) if r.status_code else 'connection'}")
                    if attempt < self.max_retries:
                        gevent.sleep(wire.retry_delay(attempt, r.headers.get("Retry-After")))
                        continue
                elif r.status_code < 500:
                    r.success()  # a 4xx here is a correct answer (sold out, limit), not a load failure
                return r
        return r

    @task
    def buy(self) -> None:
        opts = self.opts
        env = self.environment
        user = f"buyer-{uuid.uuid4().hex[:12]}"
        token = mint(opts.livesale_secret, user, "viewer")
        key = uuid.uuid4().hex
        t0 = time.perf_counter()
        path = f"/api/sales/{SHOW['sale']}/orders"
        r = self._post(path, "/api/sales/[id]/orders", token, {"quantity": opts.quantity}, key)
        ms = (time.perf_counter() - t0) * 1000
        # 200: a retry (after a 503 or a dropped connection) found the order the lost attempt made, under
        # our fresh key; it is this buyer's reservation like a 201.
        if r.status_code not in (200, 201):
            outcome = _error_code(r)
            unexpected = r.status_code >= 500 or r.status_code in (0, 200, 400, 401, 403)
            _fire(env, "ORDER", outcome, ms, exc=RuntimeError(outcome) if unexpected else None)
            if outcome == "sale_not_active":
                gevent.sleep(1.0)
            return
        order = r.json()
        _fire(env, "ORDER", "reserved", ms)
        if random.random() < 0.05:  # a double tap: the same key must give the same order
            again = self._post(path, "/api/sales/[id]/orders", token, {"quantity": opts.quantity}, key)
            same = again.status_code == 200 and again.json().get("id") == order["id"]
            _fire(env, "ORDER", "retry_same_order", 0, exc=None if same else RuntimeError(f"{again.status_code}"))
        if random.random() >= opts.pay_ratio:
            _fire(env, "ORDER", "abandoned", 0)
            return
        gevent.sleep(random.uniform(0.5, 2.0))  # typing card details
        t0 = time.perf_counter()
        p = self._post(f"/api/orders/{order['id']}/pay", "/api/orders/[id]/pay", token, {"payment_method": "pm_card_visa"})
        ms = (time.perf_counter() - t0) * 1000
        outcome = "paid" if p.status_code == 200 or _paid_before(p) else f"pay_{_error_code(p)}"
        _fire(env, "ORDER", outcome, ms, exc=None if p.status_code in (200, 409) else RuntimeError(outcome))


class ViewerUser(User):
    """Watches the stream over the WebSocket: reads every event (lag from `ts`), likes in bursts,
    comments now and then; reconnects with `since` on 4000-4499 closes, gives up on 4500-4999."""

    weight = 10

    def wait_time(self) -> float:
        low, high = self.opts.viewer_wait
        return random.uniform(low, high)

    def on_start(self) -> None:
        self.opts = opts = _opts(self)
        SHOW_READY.wait()
        self.user_id = f"viewer-{uuid.uuid4().hex[:12]}"
        self.token = mint(opts.livesale_secret, self.user_id, "viewer")
        self.seq: int | None = None
        self.ws: websocket.WebSocket | None = None
        self.stopped = False
        self.reader = gevent.spawn(self._read_loop)

    def on_stop(self) -> None:
        self.stopped = True
        if self.ws is not None:
            self.ws.close()
        self.reader.kill(block=False)

    def _url(self) -> str:
        base = (self.host or "").replace("http://", "ws://").replace("https://", "wss://")
        since = f"&since={self.seq}" if self.seq is not None else ""
        return f"{base}/ws/streams/{SHOW['stream']}?token={self.token}{since}"

    def _connect(self) -> bool:
        t0 = time.perf_counter()
        try:
            self.ws = websocket.create_connection(self._url(), timeout=30, enable_multithread=True)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is a measured failure
            _fire(self.environment, "WS", "connect", (time.perf_counter() - t0) * 1000, exc=exc)
            return False
        _fire(self.environment, "WS", "connect", (time.perf_counter() - t0) * 1000)
        return True

    def _read_loop(self) -> None:
        attempt = 0
        while not self.stopped:
            if not self._connect():
                attempt += 1
                gevent.sleep(wire.retry_delay(attempt, None))
                continue
            code = self._read_until_close()
            if self.stopped:
                return
            _fire(self.environment, "WS", f"close {code}", 0,
                  exc=None if code in (1000, 1001) else RuntimeError(f"closed {code}"))
            if not wire.should_reconnect(code):
                return
            attempt += 1
            gevent.sleep(wire.retry_delay(attempt, None))

    def _read_until_close(self) -> int | None:
        ws = self.ws
        assert ws is not None
        env = self.environment
        while True:
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, OSError):
                return None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            received = wire.now_ms()
            batch = wire.decode_frame(frame.data)
            share = len(frame.data) // max(1, len(batch))
            for event in batch:
                kind = str(event.get("type"))
                if isinstance(event.get("seq"), int):
                    self.seq = event["seq"]
                lag = wire.lag_ms(event, received)
                _fire(env, "WS", f"recv {kind}", lag or 0.0, share,
                      exc=RuntimeError(str(event.get("code"))) if kind == "error" else None)

    def _send(self, name: str, payload: dict[str, Any]) -> None:
        if self.ws is None or not self.ws.connected:
            return
        t0 = time.perf_counter()
        data = orjson.dumps(payload)
        try:
            self.ws.send(data.decode())
        except Exception as exc:  # noqa: BLE001 - a dead socket is a measured failure; the reader reconnects
            _fire(self.environment, "WS", name, (time.perf_counter() - t0) * 1000, len(data), exc)
            return
        _fire(self.environment, "WS", name, (time.perf_counter() - t0) * 1000, len(data))

    @task
    def chat(self) -> None:
        if random.random() < self.opts.comment_share:
            self._send("send comment", {"type": "comment", "text": random.choice(COMMENTS)})
        else:
            self._send("send like", {"type": "like", "count": random.randint(1, 5)})


COMMENTS = ["🔥🔥🔥", "how much?", "size 42 please", "is it real leather?", "just bought one!", "love it",
            "ship to EU?", "restock when?", "wow", "what colours?"]


def _increment(price: int) -> int:
    """The auction increment table (docs/auctions.md)."""
    for below, inc in ((3000, 100), (5000, 200), (10000, 300), (30000, 500), (100000, 1000), (200000, 2000)):
        if price < below:
            return inc
    return 5000


class BidderUser(HttpUser):
    """An auction bidder (`--auction-id`): waits for the last `--bid-last-s` seconds, then bids a few
    increments over the last price it saw, with a fresh Idempotency-Key each time, up to a limit of
    its own (`--bid-cap`). Outcomes are request_type "BID" (leading, outbid, bid_too_low,
    already_leading, auction_not_active). Check the outcome afterwards with `python -m load.auction
    verify`. Without `--auction-id` it does nothing."""

    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        self.opts = _opts(self)
        self.user = f"bidder-{uuid.uuid4().hex[:12]}"
        self.token = mint(self.opts.livesale_secret, self.user, "viewer")
        self.cap = random.randint(*self.opts.bid_cap)
        self.seen = 0
        self.ends_at = 0.0
        self.done = not self.opts.auction_id

    def _ends_at(self) -> float:
        r = self.client.get(f"/api/auctions/{self.opts.auction_id}", name="/api/auctions/[id]")
        view = r.json()
        if view.get("status") not in ("active", "scheduled"):
            self.done = True
        ends = view.get("ends_at")
        return datetime.fromisoformat(ends.replace("Z", "+00:00")).timestamp() if ends else time.time() + 5

    @task
    def bid(self) -> None:
        if self.done:
            gevent.sleep(5)
            return
        if time.time() < self.ends_at - self.opts.bid_last_s or not self.ends_at:
            self.ends_at = self._ends_at()
            gevent.sleep(max(0.0, min(1.0, self.ends_at - self.opts.bid_last_s - time.time())))
            return
        amount = self.seen + random.randint(1, 8) * _increment(self.seen) if self.seen else random.randint(100, 3000)
        if amount > self.cap:
            self.done = True  # this bidder's limit
            return
        t0 = time.perf_counter()
        with self.client.post(f"/api/auctions/{self.opts.auction_id}/bids", json={"max_cents": amount},
                              headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": uuid.uuid4().hex},
                              name="/api/auctions/[id]/bids", catch_response=True) as r:
            ms = (time.perf_counter() - t0) * 1000
            body = r.json() if r.status_code in (200, 201, 409) else {}
            if r.status_code >= 500 or r.status_code == 0 or r.status_code in (400, 401, 403, 422):
                r.failure(f"{r.status_code} {_error_code(r) if r.status_code else 'connection'}")
                _fire(self.environment, "BID", _error_code(r), ms, exc=RuntimeError(str(r.status_code)))
                return
            r.success()
        outcome = str(body.get("status") if r.status_code in (200, 201) else body.get("error"))
        _fire(self.environment, "BID", outcome, ms)
        if outcome == "auction_not_active":
            self.done = True
        elif outcome == "bid_too_low":
            self.seen = int(body["min_bid_cents"])
        elif outcome in ("leading", "outbid"):
            self.seen = int(body["price_cents"])
            self.ends_at = datetime.fromisoformat(body["ends_at"].replace("Z", "+00:00")).timestamp()
