"""The online feature store (Redis): fetches stored transaction records by id.

Built once in the gunicorn master (nothing connects there); each worker opens its own connection
on first use and notices a fork by its pid, so a connection is never shared between processes.
Every command is bounded by the fetch timeout: a store that is down or slow costs a request at most
that long, and it answers 503 (`StoreUnavailable`) instead of holding the worker. The connection
reconnects by itself on the next command after a failure; redis-py's retries are turned off, so that
the timeout is the whole wait.

redis-py makes the connection (TLS, AUTH, SELECT, the handshake); the commands then go over its
socket directly (`Wire`): the command packed by hiredis, one send, and the reply read into one
buffer and parsed by a hiredis reader, the socket non-blocking and the wait a poll with the time
left. A sync worker serves one request at a time on one connection, so redis-py's pool, lock, retry
wrapper, response callbacks and its layered reader are per-call cost with nothing to do here, and
a socket with a timeout costs a poll before every send and receive, and a syscall each time the
request's time left changes the timeout. The worker's CPU per by-id request,
`python -m perf.experiments.by_id_cost` (perf/README.md)."""

from __future__ import annotations

import os
import select
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

import hiredis
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
    # How long a call keeps trying to read its reply before it sleeps in poll(). A worker that
    # sleeps and is woken pays for it in CPU: the switch, and the caches another process cooled
    # meanwhile. A store on another core of the host answers within it; over a network it is lost.
    spin_s: float = 0.0

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


# How long a status probe waits for the store: long enough that a busy host's slow answer reads as
# slow, short enough that a hung store holds the worker serving the probe for no more than this.
PROBE_TIMEOUT_S = 0.5

_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_READ_BYTES = 64 * 1024  # a batch's MGET reply arrives in a few reads


class Wire:
    """Commands over a connection redis-py made, without redis-py: one send, replies parsed by
    hiredis as they arrive, every wait a poll bounded by the call's time left. An error or a timeout
    closes the connection (a late reply must not answer the next request); the next call makes a new
    one."""

    def __init__(self, connection: AbstractConnection, spin_s: float = 0.0) -> None:
        connection.connect()  # TLS, AUTH, SELECT: redis-py's handshake, bounded by its timeouts
        self._connection = connection
        self._sock = connection._sock  # redis-py keeps the socket there; no public getter
        self._sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._reader = hiredis.Reader()
        self._buffer = bytearray(_READ_BYTES)
        self.closed = False
        self._spin_s = spin_s

    def call(self, packed: bytes, replies: int, timeout_s: float) -> list:
        """Sends `packed` (one or more commands) and returns their `replies`; a Redis error reply is
        returned as a hiredis.ReplyError, not raised. Raises redis.TimeoutError or ConnectionError."""
        due = time.monotonic() + timeout_s
        try:
            self._send(memoryview(packed), due)
            found = []
            while len(found) < replies:
                reply = self._reader.gets()
                if reply is False:
                    self._receive(due)
                else:
                    found.append(reply)
            return found
        except redis.RedisError:
            self.close()
            raise
        except (OSError, hiredis.ProtocolError) as e:
            self.close()
            raise redis.ConnectionError(str(e)) from e

    def _send(self, data: memoryview, due: float) -> None:
        while data:
            try:
                data = data[self._sock.send(data) :]
            except _WOULD_BLOCK:
                self._wait(select.POLLOUT, due)

    def _receive(self, due: float) -> None:
        spin_until = time.perf_counter() + self._spin_s
        while True:
            try:
                n = self._sock.recv_into(self._buffer)
            except _WOULD_BLOCK:
                if time.perf_counter() < spin_until:
                    continue
                self._wait(select.POLLIN, due)
                continue
            if not n:
                raise redis.ConnectionError("the store closed the connection")
            self._reader.feed(self._buffer, 0, n)
            return

    def _wait(self, events: int, due: float) -> None:
        self._poll.modify(self._sock.fileno(), events)
        left_ms = (due - time.monotonic()) * 1000.0
        if left_ms <= 0 or not self._poll.poll(max(1, int(left_ms + 0.999))):
            raise redis.TimeoutError("the store did not answer in time")

    def close(self) -> None:
        self.closed = True
        self._connection.disconnect()


class FeatureStore:
    def __init__(self, config: StoreConfig, observe_fetch=lambda seconds, rows, misses: None) -> None:
        self.config = config
        self._prefix = config.prefix.encode()
        self._observe = observe_fetch  # metrics: fetch latency and misses
        self._wire: Wire | None = None
        self._pid = 0

    def _connected(self) -> Wire:
        """This process's connection, made on first use and after a failure closed it."""
        pid = os.getpid()
        if self._wire is None or self._pid != pid or self._wire.closed:
            # A connection made in another process (the master, before fork) is dropped unused.
            self._wire = Wire(connect(self.config), self.config.spin_s)
            self._pid = pid
        return self._wire

    def _call(self, packed: bytes, replies: int, timeout_s: float | None) -> list:
        """`packed` commands' replies, waiting at most `timeout_s` (default: the store's timeout),
        connecting first if need be (bounded by the store's timeout)."""
        return self._connected().call(packed, replies, self.config.timeout_s if timeout_s is None else timeout_s)

    def key(self, transaction_id: str) -> bytes:
        return self._prefix + transaction_id.encode()

    def fetch(self, transaction_ids: Sequence[str], timeout_s: float | None = None) -> list[bytes | None]:
        """The stored records of these ids, in order (None where there is none): one round trip,
        waiting at most `timeout_s` (default: the store's timeout)."""
        prefix = self._prefix
        keys = [prefix + i.encode() for i in transaction_ids]
        started = time.perf_counter()
        command = (b"GET", keys[0]) if len(keys) == 1 else (b"MGET", *keys)
        try:
            (reply,) = self._call(hiredis.pack_command(command), 1, timeout_s)
        except redis.RedisError as e:
            raise _unavailable(e) from e
        if isinstance(reply, hiredis.ReplyError):
            if not str(reply).startswith("WRONGTYPE"):  # e.g. a store that refuses commands
                raise _unavailable(redis.ResponseError(str(reply)))
            reply = None  # another type under the key: no record, as MGET reads it (kinds() says what)
        records = [reply] if len(keys) == 1 else reply
        self._observe(time.perf_counter() - started, len(keys), records.count(None))
        return records

    def kinds(self, transaction_ids: Sequence[str], timeout_s: float | None = None) -> list[str]:
        """The Redis type of each id's key ("none" where there is no key), in one round trip: why
        fetch() found no record. Only asked on that error path."""
        packed = b"".join(hiredis.pack_command((b"TYPE", self.key(i))) for i in transaction_ids)
        try:
            kinds = self._call(packed, len(transaction_ids), timeout_s)
        except redis.RedisError as e:
            raise _unavailable(e) from e
        return [kind.decode() if isinstance(kind, bytes) else str(kind) for kind in kinds]

    def reachable(self, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, float | None]:
        """Whether the store answers a PING within `timeout_s`, and the PING's round trip (ms).

        On a connection of its own, made and closed here: a probe neither waits on nor disturbs the
        worker's fetch connection, and a store slower than the fetch timeout shows as slow (its
        latency above the config's timeout), not as gone."""
        try:
            wire = Wire(connect(replace(self.config, timeout_s=timeout_s)))
        except redis.RedisError:
            return False, None
        try:
            started = time.perf_counter()
            (answer,) = wire.call(hiredis.pack_command((b"PING",)), 1, timeout_s)
            latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
        except redis.RedisError:
            return False, None
        finally:
            wire.close()
        if isinstance(answer, hiredis.ReplyError):
            return False, None
        return True, latency_ms
