"""The online feature store (Redis): fetches stored transaction records by id.

Built once in the gunicorn master (nothing connects there); each worker opens its own connection
on first use and notices a fork by its pid, so a connection is never shared between processes.
Every command is bounded by the fetch timeout: a store that is down or slow costs a request at most
that long, and it answers 503 (`StoreUnavailable`) instead of holding the worker. The connection
reconnects by itself on the next command after a failure; redis-py's retries are turned off, so that
the timeout is the whole wait.

The hot call is one GET (one MGET for a batch) on that connection through redis-py's documented
connection interface (`send_packed_command`, `read_response` with its hiredis parser), not through
`Redis.execute_command`: a sync worker serves one request at a time on one connection, so the
client's pool, lock, retry wrapper and response callbacks (none for GET and MGET) are per-call
cost with nothing to do here."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry


class StoreUnavailable(Exception):
    """The store did not answer within the timeout, or could not be reached."""


def _unavailable(error: redis.RedisError) -> StoreUnavailable:
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return StoreUnavailable(f"the feature store did not answer: {type(error).__name__}")
    return StoreUnavailable(f"the feature store refused the request: {error}")


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


def connect(config: StoreConfig) -> AbstractConnection:
    """One connection (TCP, TLS or a unix socket, as the URL says), no retries, every wait bounded
    by the timeout (connect included). Nothing connects here: the first command does."""
    pool = redis.ConnectionPool.from_url(
        config.url,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    return pool.make_connection()


class FeatureStore:
    def __init__(self, config: StoreConfig, observe_fetch=lambda seconds, rows, misses: None) -> None:
        self.config = config
        self._prefix = config.prefix.encode()
        self._observe = observe_fetch  # metrics: fetch latency and misses
        self._connection_made: AbstractConnection | None = None
        self._pid = 0
        self._timeout_s = config.timeout_s  # what the connection's socket is set to now

    def _connection(self) -> AbstractConnection:
        pid = os.getpid()
        if self._connection_made is None or self._pid != pid:
            # A connection made in another process (the master, before fork) is dropped unused.
            self._connection_made = connect(self.config)
            self._pid = pid
            self._timeout_s = self.config.timeout_s
        return self._connection_made

    def _bound(self, connection: AbstractConnection, timeout_s: float) -> None:
        """This call's timeout (the smaller of the store's and the request's time left) on the one
        connection: its socket now, and a reconnect's. Touched only when it changes."""
        if timeout_s == self._timeout_s:
            return
        connection.socket_timeout = connection.socket_connect_timeout = timeout_s
        if connection._sock is not None:  # redis-py keeps the socket there; no public setter
            connection._sock.settimeout(timeout_s)
        self._timeout_s = timeout_s

    def _bounded(self, timeout_s: float | None) -> AbstractConnection:
        """The worker's connection, bounded by `timeout_s` (default: the store's timeout)."""
        connection = self._connection()
        self._bound(connection, self.config.timeout_s if timeout_s is None else timeout_s)
        return connection

    def key(self, transaction_id: str) -> bytes:
        return self._prefix + transaction_id.encode()

    def fetch(self, transaction_ids: Sequence[str], timeout_s: float | None = None) -> list[bytes | None]:
        """The stored records of these ids, in order (None where there is none): one round trip,
        waiting at most `timeout_s` (default: the store's timeout)."""
        prefix = self._prefix
        keys = [prefix + i.encode() for i in transaction_ids]
        started = time.perf_counter()
        try:
            connection = self._bounded(timeout_s)
            if len(keys) == 1:
                connection.send_packed_command(connection.pack_command(b"GET", keys[0]), check_health=False)
                records = [connection.read_response()]
            else:
                connection.send_packed_command(connection.pack_command(b"MGET", *keys), check_health=False)
                records = connection.read_response()
        except redis.ResponseError as e:
            if not str(e).startswith("WRONGTYPE"):  # e.g. a store that refuses commands
                raise _unavailable(e) from e
            records = [None]  # another type under the key: no record, as MGET reads it (kinds() says what)
        except redis.RedisError as e:
            raise _unavailable(e) from e
        self._observe(time.perf_counter() - started, len(keys), records.count(None))
        return records

    def kinds(self, transaction_ids: Sequence[str], timeout_s: float | None = None) -> list[str]:
        """The Redis type of each id's key ("none" where there is no key), in one round trip: why
        fetch() found no record. Only asked on that error path."""
        try:
            connection = self._bounded(timeout_s)
            commands = [(b"TYPE", self.key(i)) for i in transaction_ids]
            connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            kinds = [connection.read_response() for _ in commands]
        except redis.RedisError as e:
            raise _unavailable(e) from e
        return [kind.decode() if isinstance(kind, bytes) else str(kind) for kind in kinds]

    def reachable(self) -> tuple[bool, float | None]:
        """Whether the store answers a PING within the timeout, and how long it took (ms)."""
        started = time.perf_counter()
        try:
            connection = self._connection()
            connection.send_command("PING", check_health=False)
            connection.read_response()
        except redis.RedisError:
            return False, None
        return True, round((time.perf_counter() - started) * 1000.0, 3)
