"""The feature store's client against a real redis-server: the commands go over redis-py's
connection without redis-py (service/store/feature_store.py, `Wire`), so what redis-py did for
them is checked here: replies in order, errors, a timeout that leaves no late reply behind."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from service.store.feature_record import encode_record
from service.store.feature_store import FeatureStore, StoreConfig, StoreUnavailable
from stack.harness import free_port
from stack.launcher import RedisServer

PREFIX = "t:"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = RedisServer(free_port(), unix_socket=tmp_path_factory.mktemp("redis") / "redis.sock").start()
    client = redis.Redis.from_url(store.url)
    for i in range(5):
        client.set(f"{PREFIX}tx-{i}", encode_record([float(i)] * 30))
    client.hset(f"{PREFIX}a-hash", "f", "v")
    yield store
    store.stop()


@pytest.mark.parametrize("spin_s", [0.0, 0.001])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_records_come_back_in_order_whatever_the_spin_or_transport(server, spin_s, transport):
    url = server.url if transport == "tcp" else server.unix_url
    store = FeatureStore(StoreConfig(url, PREFIX, 1.0, spin_s))
    assert store.fetch(["tx-3"]) == [encode_record([3.0] * 30)]
    assert store.fetch(["tx-1", "missing", "tx-4"]) == [encode_record([1.0] * 30), None, encode_record([4.0] * 30)]
    assert store.fetch(["a-hash"]) == [None]  # WRONGTYPE: no record, as MGET reads it
    assert store.kinds(["a-hash", "missing", "tx-0"]) == ["hash", "none", "string"]
    assert store.reachable()[0]


def test_a_timeout_leaves_no_late_reply_for_the_next_request(server):
    store = FeatureStore(StoreConfig(server.url, PREFIX, 0.05, 0.0))
    assert store.fetch(["tx-1"]) == [encode_record([1.0] * 30)]
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            store.fetch(["tx-1"])
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    # the reply to the timed-out GET of tx-1 went with the closed connection
    assert store.fetch(["tx-2"], 1.0) == [encode_record([2.0] * 30)]


def test_a_probe_waits_its_own_time_on_its_own_connection(server):
    """The status probe is bounded by its own wait, not the fetch timeout, and leaves the fetch
    connection as it was; a stopped store is unreachable once that wait is spent."""
    store = FeatureStore(StoreConfig(server.url, PREFIX, 0.000001, 0.0))  # no fetch could keep to it
    assert store.reachable(5.0)[0]
    store = FeatureStore(StoreConfig(server.url, PREFIX, 1.0, 0.0))
    assert store.fetch(["tx-1"]) == [encode_record([1.0] * 30)]
    fetching = store._wire
    assert store.reachable()[0] and store._wire is fetching and not fetching.closed
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        assert store.reachable(0.05) == (False, None)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert store.fetch(["tx-2"]) == [encode_record([2.0] * 30)] and store._wire is fetching


def test_a_store_that_is_gone_is_unavailable_and_one_that_is_back_answers(tmp_path):
    port = free_port()
    store = FeatureStore(StoreConfig(f"redis://127.0.0.1:{port}/0", PREFIX, 0.5, 0.0))
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        store.fetch(["tx-1"])
    assert store.reachable() == (False, None)
    server = RedisServer(port).start()
    try:
        assert store.fetch(["tx-1"]) == [None]
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.fetch(["tx-1"])
    finally:
        server.stop()
