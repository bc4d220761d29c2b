"""Configuration: read once, from the environment and an optional `.env` file, into a frozen object.

A variable set in the environment wins over `.env` (as with Compose's `env_file`). Any invalid
value raises ConfigError naming the variable; entry points turn it into one line and a non-zero exit."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values

from service import __version__

T = TypeVar("T")
MIN_KEY_LENGTH = 16
# The range a request's budget is clamped to, the client's X-Deadline-Ms and REQUEST_DEADLINE_MS
# alike: below 5 ms nothing but an idle worker could answer; above a second no payment path waits.
DEADLINE_MIN_MS = 5
DEADLINE_MAX_MS = 1000


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    api_keys: tuple[bytes, ...] = field(repr=False)  # never printed
    fraud_threshold: int = 50
    model_path: Path = Path("model/fraud-model.joblib")
    model_version: str | None = None
    model_sha256: str | None = None
    app_version: str = __version__
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    batch_max: int = 1000
    ood_z: float = 3.0
    model_required: bool = False
    # nginx limits: requests per second per API key and per client address, and the
    # burst above the rate that is let through at once before 429s start.
    rate_limit_per_key: int = 1000
    rate_limit_per_ip: int = 2000
    rate_limit_burst: int = 200
    # Who may read /metrics besides loopback, and which proxies (the ALB's subnets) may name the
    # client address in X-Forwarded-For. Both are CIDR lists; empty means none.
    metrics_allow: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    # A request's budget in ms from nginx's stamp, unless it sends X-Deadline-Ms (service/deadline.py).
    request_deadline_ms: int = 150


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


def from_mapping(env: Mapping[str, str]) -> Settings:
    """Builds Settings from a mapping of variables; raises ConfigError naming the first bad one."""

    def get(name: str, parse: Callable[[str], T], default: T) -> T:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError as e:
            raise ConfigError(f"{name} {e} (got {raw!r})") from None

    if not (env.get("API_KEY") or "").strip():
        raise ConfigError("API_KEY is required: set it in the environment or in .env (see .env.example)")
    try:
        api_keys = _api_keys(env["API_KEY"])
    except ValueError as e:
        raise ConfigError(f"API_KEY {e}") from None  # never echo a key
    return Settings(
        api_keys=api_keys,
        fraud_threshold=get("FRAUD_THRESHOLD", _integer(0, 100), 50),
        model_path=get("MODEL_PATH", lambda s: Path(_nonempty(s)), Path("model/fraud-model.joblib")),
        model_version=get("MODEL_VERSION", _nonempty, None),
        model_sha256=get("MODEL_SHA256", _sha256, None),
        app_version=get("APP_VERSION", _nonempty, __version__),
        host=get("HOST", _nonempty, "127.0.0.1"),
        port=get("PORT", _integer(1, 65535), 8080),
        workers=get("WORKERS", _integer(1, 64), os.cpu_count() or 1),
        batch_max=get("BATCH_MAX", _integer(1, 10_000), 1000),
        ood_z=get("OOD_Z", _positive_float, 3.0),
        model_required=get("MODEL_REQUIRED", _boolean, False),
        rate_limit_per_key=get("RATE_LIMIT_PER_KEY", _integer(1, 1_000_000), 1000),
        rate_limit_per_ip=get("RATE_LIMIT_PER_IP", _integer(1, 1_000_000), 2000),
        rate_limit_burst=get("RATE_LIMIT_BURST", _integer(0, 1_000_000), 200),
        metrics_allow=get("METRICS_ALLOW", _networks, ()),
        trusted_proxies=get("TRUSTED_PROXIES", _networks, ()),
        request_deadline_ms=get("REQUEST_DEADLINE_MS", _integer(DEADLINE_MIN_MS, DEADLINE_MAX_MS), 150),
    )


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
