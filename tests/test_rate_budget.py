"""The per-key row budget (service/api/budget.py): its rule on a controlled clock, its atomicity across
forked processes, and a walk over the routing table (nginx template and Falcon routes) that fails
for any route that does work without a limit."""

from __future__ import annotations

import mmap
import os
import re
import struct

import falcon
import falcon.testing
import pytest
from service.api._budget import SLOT_BYTES, spend

from service.api.app import create_app
from service.api.budget import RowBudget
from service.api.errors import ApiError
from service.api.routes import ROUTES
from service.core.settings import from_mapping
from service.engine.loader import load_model
from service.engine.scoring import Scoring
from stack.launcher import TEMPLATE
from tests.helpers import OTHER_KEY, TEST_KEY, blocks, location_for, nginx_locations, sample_transaction

T0 = 10**15  # an arbitrary instant on the monotonic clock, in ns
S = 10**9


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def refusal(budget: RowBudget, key: int, rows: int) -> ApiError:
    with pytest.raises(ApiError) as refused:
        budget.spend(key, rows)
    return refused.value


@pytest.mark.native
def test_singles_pass_up_to_the_burst_plus_one_like_nginx():
    clock = Clock()
    budget = RowBudget(2, per_second=5, burst=5, clock=clock)
    for _ in range(6):  # excess 0..5 is within the burst: six pass, as nginx's limit_req lets six through
        budget.spend(0, 1)
    error = refusal(budget, 0, 1)
    assert error.status == falcon.HTTP_429
    assert error.to_dict()["error"] == "rate_limited"
    assert error.headers == {"Retry-After": "1"}  # one row over the burst at 5 rows/s: 0.2 s, rounded up
    clock.now += S // 5 - 1
    refusal(budget, 0, 1)
    clock.now += 1
    budget.spend(0, 1)


@pytest.mark.native
def test_a_clock_reading_gone_stale_before_the_spend_does_not_refuse():
    """Worker A reads the clock, is preempted for 2 ms; worker B spends at the later instant. A's
    stale reading makes B's spend look like 2 ms of debt, twice the 1 ms its burst allows: A is
    refused only if a fresh reading says so."""
    readings = iter([T0, T0 + 2_000_000])
    budget = RowBudget(1, per_second=100_000_000, burst=100_000, clock=lambda: next(readings))
    shared = RowBudget(1, per_second=100_000_000, burst=100_000, clock=lambda: T0 + 2_000_000)
    shared._memory = budget._memory  # worker B: the same shared slot, its own (later) clock
    shared.spend(0, 1)
    budget.spend(0, 1)  # reads T0 (stale), then T0 + 2 ms: admitted


@pytest.mark.native
def test_a_batch_within_the_burst_passes_and_its_debt_blocks_the_key_until_paid():
    clock = Clock()
    budget = RowBudget(2, per_second=5, burst=5, clock=clock)
    budget.spend(0, 1000)
    error = refusal(budget, 0, 1)
    assert error.headers == {"Retry-After": "199"}  # (1000 - 5) rows at 5 rows/s
    assert "5 transactions per second" in error.to_dict()["message"]
    refusal(budget, 0, 1000)  # refused requests cost nothing…
    clock.now += 199 * S - 1
    assert refusal(budget, 0, 1).headers == {"Retry-After": "1"}
    clock.now += 1
    budget.spend(0, 1000)  # …so exactly at Retry-After a request of any size passes
    budget.spend(1, 1000)  # and the other key was never affected


@pytest.mark.native
def test_over_any_interval_a_key_gets_at_most_rate_times_t_plus_burst_plus_one_request():
    clock = Clock()
    budget = RowBudget(1, per_second=1000, burst=200, clock=clock)
    served = 0
    for step in range(4000):  # 2 s of mixed singles and batches, offered far faster than the rate
        rows = 250 if step % 7 == 0 else 1
        try:
            budget.spend(0, rows)
            served += rows
        except ApiError:
            pass
        clock.now += S // 2000
    elapsed = clock.now - T0
    assert 1000 * elapsed // S + 200 <= served <= 1000 * elapsed // S + 200 + 250


@pytest.mark.native
def test_costs_round_in_the_budgets_favour_only_by_a_nanosecond():
    clock = Clock()
    budget = RowBudget(1, per_second=3, burst=0, clock=clock)
    budget.spend(0, 1)
    clock.now += S // 3  # 333,333,333 ns: a row costs 333,333,334
    refusal(budget, 0, 1)
    clock.now += 1
    budget.spend(0, 1)


@pytest.mark.native
def test_slots_are_checked_and_arguments_validated():
    budget = RowBudget(2, per_second=1, burst=0)
    with pytest.raises(IndexError):
        budget.spend(2, 1)
    with pytest.raises(IndexError):
        budget.spend(-1, 1)
    with pytest.raises(ValueError):
        RowBudget(0, per_second=1, burst=0)


@pytest.mark.native
def test_spend_refuses_what_it_cannot_compute_exactly():
    """A bad argument is the first error raised, before any other argument's conversion runs code;
    a slot or instant so large that the arithmetic on it would overflow is refused, not wrapped."""

    class Index:
        def __index__(self) -> int:
            return 1

    memory = mmap.mmap(-1, 2 * SLOT_BYTES)
    with pytest.raises(TypeError):
        spend(memory, "slot", Index(), 0, 0)
    with pytest.raises(IndexError):
        spend(memory, 2**62, T0, 0, 0)
    for now, cost, tolerance in ((-1, 0, 0), (2**62, 0, 0), (T0, 2**62, 0), (T0, 0, 2**62), (T0, -1, 0)):
        with pytest.raises(ValueError):
            spend(memory, 0, now, cost, tolerance)
    assert spend(memory, 0, 2**62 - 1, 2**62 - 1, 2**62 - 1) == 0


@pytest.mark.native
def test_forked_workers_spend_one_budget_atomically():
    """Four processes forked after the budget was made (as gunicorn's workers are) race for one
    key's budget on a stopped clock: exactly burst + 1 single rows pass in all, never more."""
    budget = RowBudget(2, per_second=1, burst=999, clock=lambda: T0)
    children = []
    for _ in range(4):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            admitted = 0
            try:
                for _ in range(600):
                    try:
                        budget.spend(0, 1)
                        admitted += 1
                    except ApiError:
                        pass
                os.write(write, struct.pack("q", admitted))
            finally:
                os._exit(0)
        os.close(write)
        children.append((pid, read))
    total = 0
    for pid, read in children:
        total += struct.unpack("q", os.read(read, 8))[0]
        os.close(read)
        os.waitpid(pid, 0)
    assert total == 1000
    refusal(budget, 0, 1)  # the parent sees the children's spending
    budget.spend(1, 1)


# --- The routing table ---------------------------------------------------------------------------

# ALB checks, Kubernetes probes (V2's live and ready) and internal scrapes: never limited
EXEMPT = {route.path for route in ROUTES if route.probe}
ZONES = ("limit_req zone=per_ip ", "limit_req zone=per_key ")


def unlimited_in_nginx(template: str, paths: list[str]) -> list[str]:
    """Every proxied location must carry both zones, every other one must be internal, and only
    /health and /metrics may map to an empty (uncounted) zone key."""
    problems = []
    locations = nginx_locations(template)
    for name, body in locations.items():
        if "proxy_pass" in body:
            problems += [f"location {name} lacks {zone.strip()}" for zone in ZONES if zone not in body]
        elif not re.search(r"^\s*internal;", body, re.M):
            problems.append(f"location {name} neither proxies (limited) nor is internal")
    for variable in ("limit_per_key", "limit_per_ip"):
        body = blocks(template, rf"\bmap\s+\$uri\s+\$({variable})")[variable]
        uncounted = {line.split()[0] for line in body.strip().splitlines() if line.split()[1:] == ['"";']}
        if uncounted != EXEMPT:
            problems.append(f"${variable} does not count {sorted(uncounted)}")
    for path in paths:
        name = location_for(locations, path)
        if "proxy_pass" not in locations[name]:
            problems.append(f"{path} is not proxied by nginx (location {name})")
    return problems


def routes(app: falcon.App) -> dict[str, object]:
    """Every path template the app serves, with its resource."""
    found: dict[str, object] = {}

    def walk(nodes) -> None:
        for node in nodes:
            if node.resource is not None:
                found[node.uri_template] = node.resource
            walk(node.children)

    walk(app._router._roots)
    return found


def holds(resource: object, kind: type) -> bool:
    """Whether a resource keeps an instance of `kind`, or one of its bound methods."""
    return any(isinstance(getattr(v, "__self__", v), kind) for v in vars(resource).values())


def unbudgeted_scoring(app: falcon.App) -> list[str]:
    """Routes whose resource can score (holds a Scoring) but cannot spend the row budget."""
    return [
        path
        for path, resource in routes(app).items()
        if hasattr(resource, "__dict__") and holds(resource, Scoring) and not holds(resource, RowBudget)
    ]


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]*\}", "x", template)


@pytest.fixture(scope="module")
def settings(small_model):
    # A feature store URL adds the by-id routes to the walk (nothing connects to it here).
    return from_mapping(
        {
            "API_KEY": f"{TEST_KEY},{OTHER_KEY}",
            "MODEL_PATH": str(small_model[0]),
            "FEATURE_STORE_URL": "redis://127.0.0.1:1/0",
        }
    )


@pytest.fixture(scope="module")
def model(settings):
    return load_model(settings)


def test_every_route_the_app_serves_is_limited_by_both_nginx_zones(settings, model):
    paths = [concrete(template) for template in routes(create_app(settings, model))]
    paths += [concrete(template) for template in routes(create_app(settings, None, "no model"))]
    assert "/v1/fraud-score/batch" in paths and "/docs/static/x" in paths
    assert unlimited_in_nginx(TEMPLATE.read_text(), paths) == []


def test_every_scoring_route_spends_the_row_budget(settings, model):
    app = create_app(settings, model)
    assert unbudgeted_scoring(app) == []
    scoring = [path for path, resource in routes(app).items() if holds(resource, Scoring)]
    assert sorted(scoring) == [  # the walk finds them
        "/v1/fraud-score",
        "/v1/fraud-score/batch",
        "/v1/fraud-score/by-id",
        "/v1/fraud-score/by-id/batch",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ]


def test_the_walk_fails_for_a_route_added_without_a_limit(settings, model):
    app = create_app(settings, model)
    scoring = next(r for r in routes(app).values() if holds(r, Scoring))._scoring

    class Unbudgeted:
        def __init__(self) -> None:
            self._one = scoring.one

    app.add_route("/v1/new-score", Unbudgeted())
    assert unbudgeted_scoring(app) == ["/v1/new-score"]
    template = TEMPLATE.read_text()
    unlimited = template.replace(
        "        location = /v1/fraud-score/batch {",
        "        location = /v1/new-score {\n            proxy_pass http://gunicorn;\n        }\n"
        "        location = /v1/fraud-score/batch {",
    )
    assert unlimited_in_nginx(unlimited, ["/v1/new-score"]) == [
        "location = /v1/new-score lacks limit_req zone=per_ip",
        "location = /v1/new-score lacks limit_req zone=per_key",
    ]
    exempted = template.replace('        /metrics "";\n', '        /metrics "";\n        /v1/new-score "";\n', 1)
    assert unlimited_in_nginx(exempted, []) == [
        "$limit_per_key does not count ['/health', '/metrics', '/v1/new-score', '/v2/health/live', '/v2/health/ready']"
    ]


def test_single_and_batch_routes_spend_from_the_callers_key(settings, model):
    """Through the Falcon app itself, on a stopped clock: 1 row/s, no burst."""
    budget = RowBudget(2, per_second=1, burst=0, clock=lambda: T0)
    client = falcon.testing.TestClient(create_app(settings, model, budget=budget))

    def post(path: str, body: dict, key: str) -> falcon.testing.Result:
        return client.simulate_post(path, json=body, headers={"X-API-Key": key})

    batch = {"transactions": [sample_transaction()] * 3}
    assert post("/v1/fraud-score/batch", batch, TEST_KEY).status_code == 200
    refused = post("/v1/fraud-score", sample_transaction(), TEST_KEY)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "3"  # the batch's 3 rows at 1 row/s
    assert refused.json["error"] == "rate_limited"
    assert post("/v1/fraud-score", sample_transaction(), OTHER_KEY).status_code == 200
    assert post("/v1/fraud-score/batch", {"transactions": [sample_transaction()]}, OTHER_KEY).status_code == 429
    # A wrong key is refused before it can spend anyone's budget.
    assert post("/v1/fraud-score", sample_transaction(), "x" * 20).status_code == 403


def test_v2_inference_spends_its_rows_from_the_callers_key(settings, model):
    """The V2 route spends the same budget as the batch route, by rows; its 429 has the protocol's shape."""
    budget = RowBudget(2, per_second=1, burst=0, clock=lambda: T0)
    client = falcon.testing.TestClient(create_app(settings, model, budget=budget))
    row = list(sample_transaction().values())
    request = {"inputs": [{"name": "features", "shape": [4, 30], "datatype": "FP64", "data": [row] * 4}]}

    def infer(key: str) -> falcon.testing.Result:
        return client.simulate_post("/v2/models/fraud/infer", json=request, headers={"X-API-Key": key})

    assert infer(TEST_KEY).status_code == 200
    refused = client.simulate_post("/v1/fraud-score", json=sample_transaction(), headers={"X-API-Key": TEST_KEY})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "4"  # 4 rows at 1 row/s
    v2_refused = infer(TEST_KEY)
    assert v2_refused.status_code == 429 and list(v2_refused.json) == ["error"]
    assert infer(OTHER_KEY).status_code == 200
