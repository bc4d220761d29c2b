"""Rate limits and /metrics access control, enforced by the real nginx in front of real workers."""

from __future__ import annotations

import http.client
import json
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.helpers import (
    OTHER_KEY,
    TEST_KEY,
    Client,
    install_model,
    sample_transaction,
    train_small_model,
    wait_for,
)

# Slow rates make the test independent of the machine's speed: in the time the test takes, the
# bucket refills by at most a request or two, so the counts below are exact to within that.
SLOW = {"RATE_LIMIT_PER_KEY": "1", "RATE_LIMIT_PER_IP": "1000", "RATE_LIMIT_BURST": "5"}


def statuses(client: Client, n: int, **kwargs) -> list[int]:
    return [client.score(sample_transaction(), **kwargs).status for _ in range(n)]


def timed(requests: Callable[[], list]) -> tuple[list, float]:
    """What `requests()` returns, and the seconds it took."""
    started = time.monotonic()
    found = requests()
    return found, time.monotonic() - started


def most_let_through(burst: int, rate: int, seconds: float) -> int:
    """The most requests limit_req lets through in `seconds`: the burst, the one the rate allows at
    once, and what the rate refills meanwhile (a slow machine's longer run refills more)."""
    return burst + 1 + math.ceil(rate * seconds)


def get_from(source: str, port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """A request from another loopback address (Linux routes all of 127.0.0.0/8 to lo)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def test_a_burst_beyond_the_key_limit_gets_429_and_another_key_does_not(stack_factory):
    stack = stack_factory(**SLOW)
    client = Client("127.0.0.1", stack.settings.port)
    first, seconds = timed(lambda: statuses(client, 20))
    assert set(first) == {200, 429}
    assert 6 <= first.count(200) <= most_let_through(5, 1, seconds), (first, seconds)
    assert first[:6] == [200] * 6
    limited = client.score(sample_transaction())
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["Content-Type"] == "application/json"
    assert limited.json["error"] == "rate_limited"
    assert limited.headers["X-Request-ID"]
    # The second key has its own bucket: its burst is untouched by the first key's.
    assert statuses(client, 6, key=OTHER_KEY) == [200] * 6
    # ALB health checks and scrapes are never limited.
    assert {client.request("GET", "/health").status for _ in range(30)} == {200}
    assert {client.request("GET", "/metrics").status for _ in range(10)} == {200}
    logged = (stack.logs / "stack.log").read_text() + (stack.logs / "nginx-access.log").read_text()
    assert '"status":429' in logged
    assert TEST_KEY not in logged and OTHER_KEY not in logged


def test_traffic_within_the_limits_gets_no_429(stack_factory):
    stack = stack_factory(RATE_LIMIT_PER_KEY="1", RATE_LIMIT_PER_IP="1000", RATE_LIMIT_BURST="10")
    client = Client("127.0.0.1", stack.settings.port)
    assert statuses(client, 10) == [200] * 10  # exactly the burst
    assert statuses(client, 10, key=OTHER_KEY) == [200] * 10


def test_rotating_keys_does_not_dodge_the_address_limit(stack_factory):
    stack = stack_factory(RATE_LIMIT_PER_KEY="1000", RATE_LIMIT_PER_IP="1", RATE_LIMIT_BURST="5")
    client = Client("127.0.0.1", stack.settings.port)
    keys = [TEST_KEY, OTHER_KEY] + [secrets.token_urlsafe(24) for _ in range(18)]
    replies, seconds = timed(lambda: [client.score(sample_transaction(), key=k).status for k in keys])
    assert replies[:2] == [200, 200]
    assert replies.count(429) >= len(keys) - most_let_through(5, 1, seconds), (replies, seconds)
    assert {client.request("GET", "/health").status for _ in range(20)} == {200}


def test_behind_a_trusted_proxy_each_client_address_has_its_own_limit(stack_factory):
    stack = stack_factory(
        RATE_LIMIT_PER_KEY="1000", RATE_LIMIT_PER_IP="1", RATE_LIMIT_BURST="3", TRUSTED_PROXIES="127.0.0.1/32"
    )
    client = Client("127.0.0.1", stack.settings.port)
    one, seconds = timed(lambda: statuses(client, 10, headers={"X-Forwarded-For": "198.51.100.7"}))
    assert one.count(429) >= 10 - most_let_through(3, 1, seconds), (one, seconds)
    other = statuses(client, 4, headers={"X-Forwarded-For": "198.51.100.8"})
    assert other == [200] * 4
    # An internet client named by the proxy is not loopback, whatever it claims further left.
    reply = get_from("127.0.0.1", stack.settings.port, "/metrics", {"X-Forwarded-For": "127.0.0.1, 198.51.100.7"})
    assert reply.status == 403


def test_metrics_only_for_loopback_and_allowed_networks(stack_factory):
    stack = stack_factory(METRICS_ALLOW="127.0.0.3/32")
    port = stack.settings.port
    assert get_from("127.0.0.1", port, "/metrics").status == 200
    assert get_from("127.0.0.3", port, "/metrics").status == 200
    denied = get_from("127.0.0.2", port, "/metrics")
    assert denied.status == 403
    assert denied.getheader("Content-Type") == "application/json"
    assert b"internal networks" in denied.body  # type: ignore[attr-defined]
    # X-Forwarded-For is not trusted unless TRUSTED_PROXIES says so.
    assert get_from("127.0.0.2", port, "/metrics", {"X-Forwarded-For": "127.0.0.1"}).status == 403
    assert get_from("127.0.0.2", port, "/health").status == 200


# --- Batches: the same zones in nginx, and the key's budget counted in transactions by the app ---


def batch(client: Client, rows: int, key: str = TEST_KEY):
    return client.request("POST", "/v1/fraud-score/batch", {"transactions": [sample_transaction()] * rows}, key=key)


def assert_rate_limited(reply) -> int:
    """The 429 that nginx and the app both give; returns its Retry-After."""
    assert reply.status == 429, reply.raw
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json["error"] == "rate_limited" and reply.json["message"]
    assert reply.headers["X-Request-ID"]
    retry_after = int(reply.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def app_refusal(reply) -> bool:
    return "transactions per second" in reply.json["message"]


def owed_after(started: float, seconds: int) -> float:
    """The least Retry-After for a debt of `seconds` incurred after `started`: what the time gone
    since has paid back (this machine may be slow), less the rounding up to a whole second."""
    return seconds - (time.monotonic() - started) - 1


def test_forty_batches_of_a_thousand_from_one_key_only_the_budget_passes(stack_factory):
    """A key that sends batches far beyond its budget: RATE_LIMIT_PER_KEY=5, RATE_LIMIT_BURST=5, 40 batches of 1,000 as
    fast as possible. The first batch is within the burst and passes; it leaves the key owing
    1,000 rows, 199 s of its rate, so every other batch is refused, by nginx's per-key zone or,
    for those nginx lets through, by the app."""
    stack = stack_factory(RATE_LIMIT_PER_KEY="5", RATE_LIMIT_BURST="5", REQUEST_DEADLINE_MS="1000")
    client = Client("127.0.0.1", stack.settings.port)
    body = json.dumps({"transactions": [sample_transaction()] * 1000})
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: client.request("POST", "/v1/fraud-score/batch", body), range(40)))
    assert [r.status for r in replies].count(200) == 1, [r.status for r in replies]
    # On a busy machine a batch queued behind others can wait out even a second: it is refused for
    # its deadline before the budget is consulted (tests/test_deadline.py). The rest are the budget's.
    late = [r for r in replies if r.status == 503 and r.json["error"] == "deadline_exceeded"]
    refused = [r for r in replies if r.status != 200 and r not in late]
    waits = [assert_rate_limited(r) for r in refused]
    from_app = [w for r, w in zip(refused, waits, strict=True) if app_refusal(r)]
    # Retry-After is the debt left: 199 s, less the time since the batch (however slow this machine).
    assert from_app and all(owed_after(started, 199) <= w <= 199 for w in from_app), waits
    assert len(from_app) < len(refused)  # nginx refused the rest: the batch route is in its zones
    # Once nginx's zone for the key (5 requests/s, burst 5) has drained, a single reaches the app,
    # which refuses it for the batch's debt: singles share it.
    single = wait_for(lambda: reply if app_refusal(reply := client.score(sample_transaction())) else None)
    assert owed_after(started, 199) <= assert_rate_limited(single) <= 199
    assert client.score(sample_transaction(), key=OTHER_KEY).status == 200


def test_single_and_batch_requests_share_one_budget_per_key(stack_factory):
    stack = stack_factory(RATE_LIMIT_PER_KEY="1", RATE_LIMIT_PER_IP="1000", RATE_LIMIT_BURST="10")
    client = Client("127.0.0.1", stack.settings.port)
    started = time.monotonic()
    assert statuses(client, 5) == [200] * 5  # excess 5, within the burst of 10
    assert batch(client, 30).status == 200  # within the burst when it arrives: it passes, and the key owes 35
    # nginx has seen six requests from this key (its burst is ten): the app refuses by rows.
    single, more = client.score(sample_transaction()), batch(client, 1)
    for reply in (single, more):  # 35 rows at 1 a second less the burst: 25 s of debt, less the time since
        assert app_refusal(reply) and owed_after(started, 25) <= assert_rate_limited(reply) <= 25
    # Another key's budget is its own.
    assert client.score(sample_transaction(), key=OTHER_KEY).status == 200
    assert batch(client, 20, key=OTHER_KEY).status == 200
    assert app_refusal(batch(client, 1, key=OTHER_KEY))
    logged = (stack.logs / "stack.log").read_text() + (stack.logs / "nginx-access.log").read_text()
    assert TEST_KEY not in logged and OTHER_KEY not in logged


def test_a_batch_that_is_not_json_or_over_batch_max_costs_its_key_a_row(stack_factory):
    """Reading such a body is work too (telling why a large body is not JSON takes a slow second
    parse): it costs one row, as a V2 request whose rows cannot be counted does. So a key over its
    budget is refused before the work, rather than answered 400 or 413 for free."""
    stack = stack_factory(RATE_LIMIT_PER_KEY="1", RATE_LIMIT_PER_IP="1000", RATE_LIMIT_BURST="10", BATCH_MAX="20")
    client = Client("127.0.0.1", stack.settings.port)
    started = time.monotonic()
    assert batch(client, 20).status == 200  # within the burst when it arrives; the key owes 20 rows
    too_many = {"transactions": [sample_transaction()] * 21}
    for body in ('{"transactions": [' + json.dumps(sample_transaction()), too_many):
        reply = client.request("POST", "/v1/fraud-score/batch", body)
        # 20 rows at 1 a second less the burst of 10: 10 s of debt, less the time since
        assert app_refusal(reply) and owed_after(started, 10) <= assert_rate_limited(reply) <= 10, reply.raw
    other = client.request("POST", "/v1/fraud-score/batch", '{"transactions": [', key=OTHER_KEY)
    assert other.status == 400 and other.json["error"] == "malformed_json"  # a key within its budget


def test_the_address_limit_applies_to_batches(stack_factory):
    stack = stack_factory(RATE_LIMIT_PER_KEY="1000", RATE_LIMIT_PER_IP="1", RATE_LIMIT_BURST="3")
    client = Client("127.0.0.1", stack.settings.port)
    replies, seconds = timed(lambda: [batch(client, 1, key=(TEST_KEY, OTHER_KEY)[i % 2]) for i in range(20)])
    assert [r.status for r in replies[:4]] == [200] * 4
    refused = [r for r in replies if r.status != 200]
    assert len(refused) >= 20 - most_let_through(3, 1, seconds), ([r.status for r in replies], seconds)
    assert not any(app_refusal(r) for r in refused)  # nginx's, not the keys' budgets
    for reply in refused:
        assert_rate_limited(reply)


def test_the_budget_outlives_a_model_rollout(stack_factory, tmp_path):
    """The budget lives in memory the gunicorn master made before the first fork: the workers a
    rollout forks from the new application spend from the same one."""
    model_path = tmp_path / "models" / "fraud-model.joblib"
    train_small_model(model_path, seed=4)
    stack = stack_factory(RATE_LIMIT_PER_KEY="2", RATE_LIMIT_BURST="20", MODEL_PATH=str(model_path))
    client = Client("127.0.0.1", stack.settings.port)
    assert batch(client, 1000).status == 200  # the key owes 490 s
    assert assert_rate_limited(client.score(sample_transaction())) >= 400
    train_small_model(tmp_path / "next" / "fraud-model.joblib", seed=5)
    install_model(tmp_path / "next" / "fraud-model.joblib", model_path)
    stack.reload()
    log = stack.logs / "stack.log"
    # The old workers have exited once the log says so twice (WORKERS=2).
    wait_for(lambda: "rolled out model test-5" in (text := log.read_text()) and text.count("Worker exiting") >= 2, 60)
    assert client.score(sample_transaction(), key=OTHER_KEY).json["model-version"] == "test-5"
    for _ in range(4):
        reply = client.score(sample_transaction())
        assert app_refusal(reply) and assert_rate_limited(reply) >= 300
