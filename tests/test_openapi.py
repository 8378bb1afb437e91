"""`GET /api/openapi.json` (live/openapi.py) describes every registered route and nothing else, and a real
`livesale serve` answers every operation as it says: schemathesis, with valid tokens and real ids mixed
into its generated requests, finds no 5xx and no answer outside the schema, and every sale's units add
up afterwards."""

from __future__ import annotations

import os
import time
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from live.app import create_app
from live.openapi import document
from livesale.auth import mint
from livesale.config import Settings
from tests.helpers import Api, spawn_server, stop_server

# WHIP/WHEP take an SDP offer: text, sent as text/plain would be.
schemathesis.serializer.alias("application/sdp", "text/plain")

METHODS = ("get", "post", "put", "patch", "delete", "options")
# Per operation, half positive and half negative: ~30 s for the whole API on a loaded 2-core machine.
# LIVESALE_FUZZ_EXAMPLES=200 for a longer hunt.
EXAMPLES_PER_OPERATION = int(os.environ.get("LIVESALE_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def registered_routes(settings: Settings) -> set[tuple[str, str]]:
    """(method, path template) of every route the app registers, HEAD (aiohttp adds it to each GET)
    and the catch-all that answers unknown paths 404/405 left out."""
    app = create_app(settings)
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*") or path is None:
            continue
        out.add((route.method.lower(), path))
    return out


def test_the_document_describes_every_route_and_nothing_else(settings: Settings) -> None:
    """The set of (method, path) in the document equals the app's route table."""
    described = {(method, path) for path, item in document()["paths"].items() for method in item if method in METHODS}
    registered = registered_routes(settings)
    assert described - registered == set(), "described but not registered"
    assert registered - described == set(), "registered but not described in live/openapi.py"


def test_the_document_is_valid_openapi_31() -> None:
    """schemathesis loads it as OpenAPI 3.1, every operation resolves, and every error response names
    the Error schema."""
    schema = schemathesis.openapi.from_dict(document())
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == sum(1 for item in document()["paths"].values() for m in item if m in METHODS)


class World:
    """What exists on the server before the fuzzing: a host's live stream with a product pinned, an
    active sale with a buyer's reserved order, an active auction, a group-buy with an open group, and
    the tokens of each role."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.tokens = {"host": mint(secret, "fuzz-host", "host"), "viewer": mint(secret, "fuzz-buyer"),
                       "moderator": mint(secret, "fuzz-mod", "moderator"), "admin": mint(secret, "fuzz-admin", "admin")}
        self.sales: set[str] = set()
        self.groupbuys: set[str] = set()
        self.sku = "FUZZ-1"
        self.call("POST", "/api/products", "host", 201, {"sku": self.sku, "title": "t", "price_cents": 500})
        self.ids = self.live_stream()
        # What `.../end` operations get instead, so that the others keep a live stream and active sales.
        self.spare = self.live_stream()

    def call(self, method: str, path: str, role: str, expect: int, body: Any = None, key: str | None = None) -> Any:
        headers = self.auth(role) | ({"Idempotency-Key": key} if key else {})
        r = requests.request(method, self.url + path, json=body, headers=headers, timeout=10)
        assert r.status_code == expect, (method, path, r.status_code, r.text)
        return r.json()

    def live_stream(self) -> dict[str, str]:
        """A live stream with the product pinned and, on it, an active sale with an order of the buyer's,
        an active auction, and a group-buy with a group the buyer opened."""
        stream = self.call("POST", "/api/streams", "host", 201, {"title": "fuzz"})["id"]
        self.call("POST", f"/api/streams/{stream}/start", "host", 200)
        self.call("POST", f"/api/streams/{stream}/pin", "host", 200, {"sku": self.sku})
        sale = self.call("POST", f"/api/streams/{stream}/sales", "host", 201, {
            "sku": self.sku, "price_cents": 500, "stock": 50, "per_user_limit": 5, "duration_s": 600,
            "hold_s": 600})["id"]
        self.sales.add(sale)
        self.call("POST", f"/api/sales/{sale}/start", "host", 200)
        order = self.call("POST", f"/api/sales/{sale}/orders", "viewer", 201, {"quantity": 1}, key=f"seed-{sale}")["id"]
        auction = self.call("POST", f"/api/streams/{stream}/auctions", "host", 201, {
            "sku": self.sku, "starting_bid_cents": 100, "duration_s": 600, "hold_s": 600})["id"]
        self.call("POST", f"/api/auctions/{auction}/start", "host", 200)
        groupbuy = self.call("POST", f"/api/streams/{stream}/groupbuys", "host", 201, {
            "sku": self.sku, "stock": 20, "tiers": [{"size": 2, "price_cents": 400}, {"size": 3, "price_cents": 300}],
            "group_ttl_s": 600})["id"]
        self.groupbuys.add(groupbuy)
        group = self.call("POST", f"/api/groupbuys/{groupbuy}/groups", "viewer", 201,
                          {"payment_method": "pm_card_visa"}, key=f"seed-{groupbuy}")["group"]
        return {"stream": stream, "sale": sale, "order": order, "auction": auction, "groupbuy": groupbuy,
                "group": group}

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def real_ids(self, path: str) -> dict[str, str]:
        """Ids that exist, for the path parameters of `path`."""
        kind = path.split("/")[2] if path.startswith("/api/") else path.split("/")[1]
        ids = self.spare if path.endswith("/end") else self.ids
        by_kind = {"streams": ids["stream"], "sales": ids["sale"], "orders": ids["order"], "products": self.sku,
                   "auctions": ids["auction"], "groupbuys": ids["groupbuy"], "groups": ids["group"]}
        return {"id": by_kind.get(kind, ids["stream"]), "sku": self.sku, "stream": ids["stream"], "user": "someone",
                "gid": ids["group"], "group": ids["group"], "path": "js/api.js"}


def fuzz(op: Any, mode: schemathesis.GenerationMode, world: World, session: requests.Session,
         failures: list[str]) -> None:
    """Bounded examples of one operation in one mode against the server; what fails a check goes to
    `failures`."""
    role = document()["paths"][op.path][op.method.lower()].get("x-role")

    @hypothesis.settings(max_examples=max(1, EXAMPLES_PER_OPERATION // 2), deadline=None, database=None,
                         derandomize=True, suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.generate])
    @hypothesis.given(case=op.as_strategy(generation_mode=mode), real=st.booleans(), signed=st.booleans())
    def run(case: Any, real: bool, signed: bool) -> None:
        if real and case.path_parameters:
            ids = world.real_ids(op.path)
            case.path_parameters = {k: ids.get(k, v) for k, v in case.path_parameters.items()}
        if real and isinstance(case.body, dict) and "sku" in case.body and op.path != "/api/products":
            case.body = {**case.body, "sku": world.sku}  # a product that exists: past the 404
        # Positive examples carry a valid token of the operation's role; negative ones, half the time.
        headers = world.auth(role) if role and (signed or mode is schemathesis.GenerationMode.POSITIVE) else None
        response = case.call(base_url=world.url, session=session, headers=headers, timeout=15)
        if op.path == "/api/streams/{id}/sales" and response.status_code == 201:
            world.sales.add(response.json()["id"])
        if op.path == "/api/streams/{id}/groupbuys" and response.status_code == 201:
            world.groupbuys.add(response.json()["id"])
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as exc:
            found = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
            failures.extend(f"{op.method.upper()} {op.path} ({mode.value}): {f}"[:1500] for f in found)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing to negate (no parameters, no body): negative examples do not exist.
        assert mode is schemathesis.GenerationMode.NEGATIVE, op.path


@pytest.mark.timeout(max(180, EXAMPLES_PER_OPERATION * 4))
def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_schema(settings: Settings) -> None:
    """Every operation, positive and negative examples (bounded per operation), with valid tokens of the
    operation's role and, in half the examples, ids that exist: no 5xx, every answer as documented; then
    every sale's `available + held + sold == stock`, every group-buy's `available + in_groups + sold ==
    stock`, and the server still ready."""
    srv = spawn_server(settings)
    failures: list[str] = []
    try:
        world = World(srv.url, settings.secret)
        session = requests.Session()
        for result in schemathesis.openapi.from_dict(document()).get_all_operations():
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                fuzz(result.ok(), mode, world, session, failures)
        for sale_id in world.sales:
            sale = requests.get(f"{srv.url}/api/sales/{sale_id}", timeout=10).json()
            assert sale["available"] + sale["held"] + sale["sold"] == sale["stock"], sale
        for gb_id in world.groupbuys:
            gb = requests.get(f"{srv.url}/api/groupbuys/{gb_id}", timeout=10).json()
            assert gb["available"] + gb["in_groups"] + gb["sold"] == gb["stock"], gb
        assert len(world.sales) > 1, "no sale was created by the fuzzing: the POST never got past validation"
        assert requests.get(srv.url + "/readyz", timeout=10).status_code == 200
    finally:
        stop_server(srv)
    assert not failures, "\n\n".join(failures[:10]) + f"\n\n{len(failures)} failures"


# Sequences of up to 15 steps: ~10 s on a loaded 2-core machine; LIVESALE_STATEFUL_EXAMPLES=500 for a longer hunt.
STATEFUL_EXAMPLES = int(os.environ.get("LIVESALE_STATEFUL_EXAMPLES", "100"))


@pytest.mark.timeout(max(180, STATEFUL_EXAMPLES * 3))
def test_schemathesis_follows_the_links_and_finds_no_5xx_and_no_oversell(settings: Settings) -> None:
    """schemathesis's stateful run over the document's links (live/openapi.py `LINKS`): sequences such as
    create stream -> start -> open sale -> start -> reserve -> pay / cancel -> get, each request with
    the operation's role's token, a sequence's first step on ids that exist. No 5xx, every
    answer as documented; then every sale's units add up (sold + held + available == the stock it was
    opened with), and on the sales the run opened, sold == the units of the paid orders the run made and
    held == those of its reserved ones, as GET /api/orders says."""
    srv = spawn_server(settings)
    failures: list[str] = []
    try:
        world = World(srv.url, settings.secret)
        session = requests.Session()
        made_sales: set[str] = set()
        orders: dict[str, str] = {}  # order id -> its sale, every order the run made
        ops = document()["paths"]

        # The commerce operations: what the links connect, and what can oversell.
        schema = schemathesis.openapi.from_dict(document()).include(
            path_regex="^/api/(products|streams|sales|orders|auctions|groupbuys|groups|me)").exclude(
            path_regex="/(comments|mutes|key|stats|pin)")
        # Valid requests (the other test sends the invalid ones), each with its role's token from us.
        schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE], with_security_parameters=False)
        # Only the document's links: no links schemathesis would infer from parameter names.
        schema.config.phases.stateful.inference.algorithms = []

        class Machine(schema.as_state_machine()):  # type: ignore[misc]
            def step(self, input: Any) -> Any:
                case = input.case
                if input.transition is None and case.path_parameters:  # a sequence's first step: real ids
                    ids = world.real_ids(case.operation.path)
                    case.path_parameters = {k: ids.get(k, v) for k, v in case.path_parameters.items()}
                if isinstance(case.body, dict):
                    # JSON Schema takes 3.0 as an integer; the API does not (the document says so, and
                    # the other test sends such bodies): whole floats go as integers here.
                    case.body = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                                 for k, v in case.body.items()}
                    if "sku" in case.body and case.operation.path != "/api/products":
                        case.body["sku"] = world.sku  # a product that exists: past the 404
                role = ops[case.operation.path][case.method.lower()].get("x-role")
                if role:
                    case.headers = {**(case.headers or {}), **world.auth(role)}
                return super().step(input)

            sequences = 0

            def teardown(self) -> None:
                type(self).sequences += 1
                super().teardown()

            def get_call_kwargs(self, case: Any) -> dict[str, Any]:
                return {"base_url": world.url, "session": session, "timeout": 15}

            def after_call(self, response: Any, case: Any) -> None:
                path, status = case.operation.path, response.status_code
                if path == "/api/streams/{id}/sales" and status == 201:
                    made_sales.add(response.json()["id"])
                    world.sales.add(response.json()["id"])
                if path == "/api/streams/{id}/groupbuys" and status == 201:
                    world.groupbuys.add(response.json()["id"])
                if path == "/api/sales/{id}/orders" and status == 201:
                    orders[response.json()["id"]] = response.json()["sale"]

            def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kw: Any) -> None:
                try:
                    case.validate_response(response, checks=CHECKS)
                except (Failure, FailureGroup) as exc:
                    found = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
                    failures.extend(f"{case.method} {case.operation.path} (stateful): {f}"[:1500] for f in found)

        # The server keeps its state from one sequence to the next, so hypothesis may find a replayed
        # prefix taking another turn (Flaky): as schemathesis's own runner does, that run ends there and
        # another starts, until STATEFUL_EXAMPLES sequences have run (or a time bound).
        deadline = time.monotonic() + STATEFUL_EXAMPLES * 2
        while Machine.sequences < STATEFUL_EXAMPLES and time.monotonic() < deadline:
            try:
                Machine.run(settings=hypothesis.settings(
                    max_examples=STATEFUL_EXAMPLES - Machine.sequences, stateful_step_count=15, deadline=None,
                    database=None, suppress_health_check=list(hypothesis.HealthCheck),
                    phases=[hypothesis.Phase.generate]))  # no replays to shrink: see above
            except hypothesis.errors.Flaky:
                pass
        for sale_id in world.sales:
            sale = requests.get(f"{srv.url}/api/sales/{sale_id}", timeout=10).json()
            assert sale["available"] + sale["held"] + sale["sold"] == sale["stock"], sale
        units = {s: {"paid": 0, "reserved": 0} for s in made_sales}
        for order_id, sale_id in orders.items():
            order = world.call("GET", f"/api/orders/{order_id}", "viewer", 200)
            if sale_id in units and order["status"] in ("paid", "reserved"):
                units[sale_id][order["status"]] += order["quantity"]
        for sale_id, u in units.items():
            sale = requests.get(f"{srv.url}/api/sales/{sale_id}", timeout=10).json()
            assert (sale["sold"], sale["held"]) == (u["paid"], u["reserved"]), (sale, u)
        for gb_id in world.groupbuys:
            gb = requests.get(f"{srv.url}/api/groupbuys/{gb_id}", timeout=10).json()
            assert gb["available"] + gb["in_groups"] + gb["sold"] == gb["stock"], gb
        assert made_sales and orders, "the run never got as far as a sale and an order"
        assert requests.get(srv.url + "/readyz", timeout=10).status_code == 200
    finally:
        stop_server(srv)
    assert not failures, "\n\n".join(failures[:10]) + f"\n\n{len(failures)} failures"


@pytest.mark.parametrize("starts_at", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "1999-12-31T23:59:59Z",
                                       "3000-01-01T00:00:00Z"])
async def test_a_sale_start_outside_the_years_2000_2999_is_422_and_nothing_is_created(api: Api, starts_at: str) -> None:
    """Found by fuzzing: a start whose end is past year 9999 (or before year 1) created the sale, then
    answered 500, and every later read of the stream and its sales was 500 as well."""
    s = await api.setup_sale()
    st, body = await api.call("POST", f"/api/streams/{s['stream_id']}/sales", token=s["host_token"], json={
        "sku": s["sku"], "price_cents": 1, "stock": 1, "per_user_limit": 1, "duration_s": 604800, "hold_s": 10,
        "starts_at": starts_at})
    assert (st, body["error"]) == (422, "validation_error"), body
    st, sales = await api.call("GET", f"/api/streams/{s['stream_id']}/sales")
    assert st == 200 and [x["id"] for x in sales["sales"]] == [s["sale_id"]]
    st, _ = await api.call("GET", f"/api/streams/{s['stream_id']}")
    assert st == 200
