"""Rate limits and /metrics access control, enforced by the real nginx in front of real workers."""

from __future__ import annotations

import http.client
import secrets

from tests.helpers import OTHER_KEY, TEST_KEY, Client, sample_transaction

# Slow rates make the test independent of the machine's speed: in the time the test takes, the
# bucket refills by at most a request or two, so the counts below are exact to within that.
SLOW = {"RATE_LIMIT_PER_KEY": "1", "RATE_LIMIT_PER_IP": "1000", "RATE_LIMIT_BURST": "5"}


def statuses(client: Client, n: int, **kwargs) -> list[int]:
    return [client.score(sample_transaction(), **kwargs).status for _ in range(n)]


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
    first = statuses(client, 20)
    assert set(first) == {200, 429}
    # burst 5 plus the one the rate allows, plus at most two refilled while the test runs
    assert 6 <= first.count(200) <= 8, first
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
    replies = [client.score(sample_transaction(), key=k).status for k in keys]
    assert replies[:2] == [200, 200]
    assert replies.count(429) >= 11, replies  # 20 requests, at most 6-8 let through by the address
    assert {client.request("GET", "/health").status for _ in range(20)} == {200}


def test_behind_a_trusted_proxy_each_client_address_has_its_own_limit(stack_factory):
    stack = stack_factory(
        RATE_LIMIT_PER_KEY="1000", RATE_LIMIT_PER_IP="1", RATE_LIMIT_BURST="3", TRUSTED_PROXIES="127.0.0.1/32"
    )
    client = Client("127.0.0.1", stack.settings.port)
    one = statuses(client, 10, headers={"X-Forwarded-For": "198.51.100.7"})
    assert one.count(429) >= 4
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
