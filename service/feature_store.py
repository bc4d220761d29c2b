"""The online feature store (Redis): fetches stored transaction records by id.

Built once in the gunicorn master (nothing connects there); each worker opens its own connection
on first use and notices a fork by its pid, so a connection is never shared between processes.
Every command is bounded by the fetch timeout: a store that is down or slow costs a request at most
that long, and it answers 503 (`StoreUnavailable`) instead of holding the worker. redis-py
reconnects by itself on the next command after a failure; its own retries are turned off, so that
the timeout is the whole wait."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


class StoreUnavailable(Exception):
    """The store did not answer within the timeout, or could not be reached."""


@dataclass(frozen=True)
class StoreConfig:
    url: str
    prefix: str
    timeout_s: float

    @property
    def display_url(self) -> str:
        return redacted(self.url)


def redacted(url: str) -> str:
    """The URL without its password, for logs and status pages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(config: StoreConfig) -> redis.Redis:
    """One connection, no retries, every wait bounded by the timeout (connect included)."""
    return redis.Redis.from_url(
        config.url,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        single_connection_client=True,
        health_check_interval=0,
    )


class FeatureStore:
    def __init__(self, config: StoreConfig, observe_fetch=lambda seconds, rows, misses: None) -> None:
        self.config = config
        self._prefix = config.prefix.encode()
        self._observe = observe_fetch  # metrics: fetch latency and misses
        self._client: redis.Redis | None = None
        self._pid = 0
        self._timeout_s = config.timeout_s  # what the connection's socket is set to now

    def _connection(self) -> redis.Redis:
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            # A client made in another process (the master, before fork) is dropped unused.
            self._client = connect(self.config)
            self._pid = pid
            self._timeout_s = self.config.timeout_s
        return self._client

    def _bound(self, client: redis.Redis, timeout_s: float) -> None:
        """This call's timeout (the smaller of the store's and the request's time left) on the one
        connection: its socket now, and a reconnect's. Touched only when it changes."""
        if timeout_s == self._timeout_s:
            return
        connection = client.connection  # single_connection_client: the one connection
        connection.socket_timeout = connection.socket_connect_timeout = timeout_s
        if connection._sock is not None:  # redis-py keeps the socket there; no public setter
            connection._sock.settimeout(timeout_s)
        self._timeout_s = timeout_s

    def key(self, transaction_id: str) -> bytes:
        return self._prefix + transaction_id.encode()

    def fetch(self, transaction_ids: Sequence[str], timeout_s: float | None = None) -> list[bytes | None]:
        """The stored records of these ids, in order (None where there is none): one round trip,
        waiting at most `timeout_s` (default: the store's timeout)."""
        keys = [self.key(i) for i in transaction_ids]
        started = time.perf_counter()
        try:
            client = self._connection()
            self._bound(client, self.config.timeout_s if timeout_s is None else timeout_s)
            records = [client.get(keys[0])] if len(keys) == 1 else client.mget(keys)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailable(f"the feature store did not answer: {type(e).__name__}") from e
        except redis.RedisError as e:  # e.g. a wrong-type key, a store that refuses commands
            raise StoreUnavailable(f"the feature store refused the request: {e}") from e
        self._observe(time.perf_counter() - started, len(keys), records.count(None))
        return records

    def reachable(self) -> tuple[bool, float | None]:
        """Whether the store answers a PING within the timeout, and how long it took (ms)."""
        started = time.perf_counter()
        try:
            self._connection().ping()
        except redis.RedisError:
            return False, None
        return True, round((time.perf_counter() - started) * 1000.0, 3)
