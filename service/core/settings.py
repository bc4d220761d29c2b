"""Configuration: read once, from the environment and an optional `.env` file, into a frozen object.

A variable set in the environment wins over `.env` (as with Compose's `env_file`). Any invalid
value raises ConfigError naming the variable; entry points turn it into one line and a non-zero exit.

Each setting is declared once, as a field of Settings: its environment variable, the parser that
checks it and its default (none: required). Adding one is one line there, e.g.

    request_deadline_ms: int = setting("REQUEST_DEADLINE_MS", _integer(DEADLINE_MIN_MS, DEADLINE_MAX_MS), 150)

plus its documented line in .env.example (a test checks that every variable has one)."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from service import __version__

MIN_KEY_LENGTH = 16
# The range a request's budget is clamped to, the client's X-Deadline-Ms and REQUEST_DEADLINE_MS
# alike: below 5 ms nothing but an idle worker could answer; above a second no payment path waits.
# nginx's body limits: one transaction's JSON (a few hundred bytes), and a batch's per transaction at
# its largest (pretty-printed with two spaces, full-precision numbers, a 256-character ASCII transaction_id:
# 1.46 KB);
# nginx/limits.sh applies the same rule.
CLIENT_MAX_BODY_KB = 8
BATCH_ITEM_KB = 1.5
DEADLINE_MIN_MS = 5
DEADLINE_MAX_MS = 1000


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return parse


def _api_keys(text: str) -> tuple[bytes, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise ValueError("is required: one key, or several separated by commas for rotation")
    for key in keys:
        if len(key) < MIN_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise ValueError(f"keys must be at least {MIN_KEY_LENGTH} printable ASCII characters")
    return tuple(k.encode() for k in keys)


def _sha256(text: str) -> str:
    digest = text.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("must be 64 hexadecimal digits (the output of sha256sum)")
    return digest


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a positive number") from None
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _networks(text: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.ip_network(part.strip(), strict=False)) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise ValueError(f"must be comma-separated addresses or CIDR networks ({e})") from None


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _store_url(text: str) -> str:
    url = text.strip()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    # Parsed here by the client's own parser, which each worker runs at its first lookup: a URL it
    # refuses (a port out of range, a bad query option) stops the start, not every by-id request.
    from redis.connection import parse_url  # only when a store is configured

    try:
        parse_url(url)
    except ValueError as e:
        raise ValueError(f"is not a URL the Redis client accepts: {e}") from None
    return url


def _path(text: str) -> Path:
    return Path(_nonempty(text))


def _cores() -> int:
    """The cores this process may run on (a container's cpuset, a `taskset`), not the machine's."""
    return len(os.sched_getaffinity(0)) or 1


def setting(
    variable: str,
    parse: Callable[[str], Any],
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    secret: bool = False,
) -> Any:
    """A field of Settings read from `variable` by `parse` (which raises ValueError saying what is
    wrong). Without a default the variable is required. A secret is never printed: not in repr(),
    not in an error message."""
    return field(
        default=default,
        default_factory=default_factory,
        repr=not secret,
        metadata={"variable": variable, "parse": parse, "secret": secret},
    )


@dataclass(frozen=True)
class Settings:
    api_keys: tuple[bytes, ...] = setting("API_KEY", _api_keys, secret=True)
    # None: the model's manifest decides (service/core/threshold.py).
    fraud_threshold: int | None = setting("FRAUD_THRESHOLD", _integer(0, 100), None)
    model_path: Path = setting("MODEL_PATH", _path, Path("model/fraud-model.joblib"))
    model_version: str | None = setting("MODEL_VERSION", _nonempty, None)
    model_sha256: str | None = setting("MODEL_SHA256", _sha256, None)
    app_version: str = setting("APP_VERSION", _nonempty, __version__)
    host: str = setting("HOST", _nonempty, "127.0.0.1")
    port: int = setting("PORT", _integer(1, 65535), 8080)
    # One per core, with a feature store too: a by-id worker's wait on a store beside the service is
    # short and mostly the store's own CPU time, so a worker beyond the cores adds time-slicing, not
    # throughput (docs/feature-store.md#workers).
    workers: int = setting("WORKERS", _integer(1, 64), default_factory=_cores)
    batch_max: int = setting("BATCH_MAX", _integer(1, 10_000), 1000)
    # None: the model's calibrated out-of-distribution bounds (service/engine/ood.py); set: mean ± z std.
    ood_z: float | None = setting("OOD_Z", _positive_float, None)
    model_required: bool = setting("MODEL_REQUIRED", _boolean, False)
    # nginx limits: requests per second per API key and per client address, and the
    # burst above the rate that is let through at once before 429s start.
    # The per-key rate is also the app's transactions per second per key (service/api/budget.py): its
    # ceiling leaves room for one binary V2 client scoring over a million rows a second.
    rate_limit_per_key: int = setting("RATE_LIMIT_PER_KEY", _integer(1, 100_000_000), 1000)
    rate_limit_per_ip: int = setting("RATE_LIMIT_PER_IP", _integer(1, 1_000_000), 2000)
    rate_limit_burst: int = setting("RATE_LIMIT_BURST", _integer(0, 1_000_000), 200)
    # Who may read /metrics besides loopback, and which proxies (the ALB's subnets) may name the
    # client address in X-Forwarded-For. Both are CIDR lists; empty means none.
    metrics_allow: tuple[str, ...] = setting("METRICS_ALLOW", _networks, ())
    trusted_proxies: tuple[str, ...] = setting("TRUSTED_PROXIES", _networks, ())
    # A request's budget from nginx's stamp unless it sends X-Deadline-Ms (service/api/deadline.py).
    request_deadline_ms: int = setting("REQUEST_DEADLINE_MS", _integer(DEADLINE_MIN_MS, DEADLINE_MAX_MS), 150)
    # Requests nginx lets wait for (or be served by) one worker at a time; beyond WORKERS times this,
    # nginx refuses at once with 503 unavailable (`scoring_queue`).
    queue_per_worker: int = setting("QUEUE_PER_WORKER", _integer(1, 1024), 128)
    # The online feature store of the by-id routes (unset: no such routes, nothing connects), and
    # whether `make run` starts a local redis-server for it (a loopback redis:// URL).
    feature_store_url: str | None = setting("FEATURE_STORE_URL", _store_url, None, secret=True)  # may hold a password
    feature_store_prefix: str = setting("FEATURE_STORE_PREFIX", _nonempty, "fraud:tx:")
    feature_store_timeout_ms: int = setting("FEATURE_STORE_TIMEOUT_MS", _integer(1, 1000), 5)
    # A store on another core of the host answers within tens of µs: a worker that reads on for that
    # long instead of sleeping keeps its caches and skips a wake-up (docs/feature-store.md#workers).
    feature_store_spin_us: int = setting("FEATURE_STORE_SPIN_US", _integer(0, 1000), 0)
    feature_store_start: bool = setting("FEATURE_STORE_START", _boolean, False)
    # A second model scored beside the champion (service/engine/challenger.py), its pin, and the share
    # of requests whose both scores are logged.
    challenger_model_path: Path | None = setting("CHALLENGER_MODEL_PATH", _path, None)
    challenger_model_sha256: str | None = setting("CHALLENGER_MODEL_SHA256", _sha256, None)
    challenger_log_sample: float = setting("CHALLENGER_LOG_SAMPLE", _share, 0.0)
    # The prediction log (docs/prediction-log.md): off when the directory is unset; the spool's byte
    # limit (beyond it records are dropped and counted, never waited for), when a worker's segment is
    # sealed for the compactor, the share of unflagged rows logged, and whether the client's address
    # is recorded (personal data: off unless an operator turns it on).
    prediction_log_dir: Path | None = setting("PREDICTION_LOG_DIR", _path, None)
    prediction_log_max_bytes: int = setting("PREDICTION_LOG_MAX_BYTES", _integer(1 << 20, 1 << 50), 1 << 30)
    prediction_log_segment_bytes: int = setting("PREDICTION_LOG_SEGMENT_BYTES", _integer(1 << 16, 1 << 34), 64 << 20)
    prediction_log_segment_seconds: int = setting("PREDICTION_LOG_SEGMENT_SECONDS", _integer(1, 86_400), 60)
    prediction_log_sample: float = setting("PREDICTION_LOG_SAMPLE", _share, 1.0)
    prediction_log_client_address: bool = setting("PREDICTION_LOG_CLIENT_ADDRESS", _boolean, False)
    # The label table (service/offline/labels.py): what became known about scored transactions,
    # appended by `make labels`, read by `make outcomes` (unset: `make` uses .run/labels).
    labels_dir: Path | None = setting("LABELS_DIR", _path, None)

    @property
    def scoring_queue(self) -> int:
        """The most API requests in nginx at once (nginx's limit_conn, docs/operations.md): those
        being served and those waiting for a worker. In time it is QUEUE_PER_WORKER requests'
        worth of each worker, which must stay well inside REQUEST_DEADLINE_MS or the queue's tail
        would wait its budget out and be shed rather than scored."""
        return self.workers * self.queue_per_worker

    @property
    def batch_body_kb(self) -> int:
        """nginx's limit on a batch's body, in KiB: BATCH_MAX transactions at their largest JSON
        (BATCH_ITEM_KB each) and a KiB for the envelope."""
        return math.ceil(self.batch_max * BATCH_ITEM_KB) + 1


def variables() -> dict[str, dataclasses.Field]:
    """Every setting's field, by its environment variable."""
    return {f.metadata["variable"]: f for f in dataclasses.fields(Settings)}


def from_mapping(env: Mapping[str, str], require_api_key: bool = True) -> Settings:
    """Builds Settings from a mapping of variables; raises ConfigError naming the first bad one.
    A variable that is unset or empty takes the field's default. Offline tools that serve nothing
    (bulk scoring) pass require_api_key=False: no key is read."""
    values: dict[str, Any] = {} if require_api_key else {"api_keys": ()}
    for variable, f in variables().items():
        if f.name in values:
            continue
        raw = env.get(variable)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and not (raw or "").strip():
            raise ConfigError(f"{variable} is required: set it in the environment or in .env (see .env.example)")
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as e:
            shown = "" if f.metadata["secret"] else f" (got {raw!r})"  # never echo a key
            raise ConfigError(f"{variable} {e}{shown}") from None
    return Settings(**values)


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over the `.env` file named by ENV_FILE (default `.env`)."""
    environ = os.environ if environ is None else environ
    env_file = Path(environ.get("ENV_FILE", ".env"))
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.is_file() else {}
    return {**from_file, **environ}


@cache
def load() -> Settings:
    """The process's settings, read once (in the gunicorn master, before fork)."""
    return from_mapping(read_environment())


def load_or_exit() -> Settings:
    """For entry points: a bad setting stops the process with one clear line."""
    try:
        return load()
    except ConfigError as e:
        sys.exit(f"config error: {e}")


def offline_or_exit() -> Settings:
    """For offline commands, which serve nothing (no API key is read): the same one line."""
    try:
        return from_mapping(read_environment(), require_api_key=False)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
