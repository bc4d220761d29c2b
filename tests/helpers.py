"""Helpers shared by the tests: their stacks (through stack/harness.py), a raw HTTP client, tiny
models, and checks several test files make. Test files import this module, never one another."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import string
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import RandomForestClassifier

from model import synthetic
from model.export import export, feature_stats
from service.api.deadline import DEADLINE_HEADER, RETRY_AFTER_SECONDS, SPENT
from service.api.errors import protocol_v2
from service.contract.schema import sample_transaction  # noqa: F401  (the data set's first row, for the tests)
from service.core.artifacts import ArtifactPaths
from service.core.features import FEATURES
from service.core.settings import DEADLINE_MAX_MS
from stack import harness
from stack.harness import UNLIMITED, free_port  # noqa: F401  (for the tests)
from stack.launcher import Stack

# Screenshots and other files a reviewer looks at after the run (CI keeps them).
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


def screenshot(page: Path, name: str, tmp_path: Path) -> Path:
    """A headless Chromium screenshot of an HTML file, kept in ARTIFACTS under name."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: run `make install`"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
    flags += ["--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1800"]
    subprocess.run(
        [*flags, f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=120, check=True
    )
    return shot


# Set when the tests run against a service that is already running (see stack/harness.py).
EXTERNAL = harness.external()
TEST_KEY, OTHER_KEY = EXTERNAL.keys[:2] if EXTERNAL else ("test-key-0123456789abcdef", "rotated-key-abcdef0123456789")
TEST_KEYS = f"{TEST_KEY},{OTHER_KEY}"  # the stacks' API_KEY: one key and a rotated one
PYTHONPATH = ("PYTHONPATH",)  # passed on to the tests' stacks, as CI may set it

# The share of its generated examples (property examples, random rows) a test runs: all of them,
# except in `make test`'s second run against the sanitizer build, which looks for memory errors and
# undefined behaviour in the C paths the examples reach (the first run checked them against their
# references in full) at a fraction of the cost.
EXAMPLE_SHARE = float(os.environ.get("TEST_EXAMPLE_SHARE", "1"))


def a_row_that_empties_itself(length: int) -> list:
    """A row whose first value, read, empties the row: a C reader that kept the list's item pointer
    across that conversion (Python code) would read freed memory."""
    row: list = [0.5] * length

    class Emptying:
        def __float__(self) -> float:
            row.clear()
            return 0.5

    row[0] = Emptying()
    return row


def examples(n: int) -> int:
    """How many of a test's n generated examples to run."""
    return max(10, round(n * EXAMPLE_SHARE))


def stack_env(model_path: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a test stack: both test keys, two workers, the given model and port."""
    return harness.environment(TEST_KEYS, model_path, PYTHONPATH, **{"PORT": str(port), "WORKERS": "2", **extra})


def start_stack(model_path: Path, logs: Path, wrapper: tuple[str, ...] = (), **extra: str) -> Stack:
    """Real gunicorn and real nginx on a free loopback port, with their logs in `logs`
    (`stack.log`, `nginx-access.log`, also at `stack.logs`). Skips against an external service.
    `wrapper`: a command gunicorn runs inside (a mount namespace)."""
    if EXTERNAL:
        pytest.skip(harness.EXTERNAL_SKIP_REASON)
    logs.mkdir(parents=True, exist_ok=True)
    # The longest request budget unless a test sets its own: on a busy test machine a request can
    # wait out the 150 ms default in the queue and get the documented 503 deadline_exceeded, which
    # is the service working, not what a test of answers is about. tests/test_deadline.py tests the
    # budget itself with stamps it sets.
    defaults = {"WORKERS": "2", "REQUEST_DEADLINE_MS": str(DEADLINE_MAX_MS)}
    env = harness.environment(TEST_KEYS, model_path, PYTHONPATH, **{**defaults, **extra})
    stack = harness.start(env, log=logs / "stack.log", access_log=str(logs / "nginx-access.log"), wrapper=wrapper)
    stack.logs = logs  # type: ignore[attr-defined]
    return stack


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class Client:
    """Speaks raw HTTP/1.1 to one base address, so tests control every byte and header."""

    def __init__(self, host: str, port: int, key: str | None = TEST_KEY) -> None:
        self.host, self.port, self.key = host, port, key

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        headers: dict[str, str | bytes] | None = None,
        key: str | None = "default",
    ) -> Reply:
        all_headers = {}
        if isinstance(body, dict):
            body = json.dumps(body)
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        if key == "default":
            key = self.key
        if key is not None:
            all_headers["X-API-Key"] = key
        all_headers.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=all_headers)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def score(self, transaction: dict, **kwargs: Any) -> Reply:
        return self.request("POST", "/v1/fraud-score", transaction, **kwargs)


def assert_error(reply: Reply, status: int, field: str | None = None) -> dict:
    """The error shape every refusal has: JSON with `error` and `message`, the field named if given."""
    assert reply.status == status, reply.raw
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json
    assert isinstance(body["error"], str) and isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert field in {e["field"] for e in body["errors"]}, body
        assert field in body["message"]
    assert b"Traceback" not in reply.raw
    return body


def samples(client: Client) -> dict[tuple[str, frozenset], float]:
    """Every sample /metrics gives, by (name, labels)."""
    reply = client.request("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.raw.decode())
        for s in family.samples
    }


SERVER_TIMING_METRIC = re.compile(r"([a-z]+);dur=(\d+\.\d{3})")


def server_timing(header: str) -> dict[str, float]:
    """A Server-Timing value as the app writes it (W3C Server Timing: `name;dur=ms`, comma-separated),
    parsed strictly: each metric once, a duration in milliseconds with three decimals."""
    found: dict[str, float] = {}
    for metric in header.split(", "):
        matched = SERVER_TIMING_METRIC.fullmatch(metric)
        assert matched, f"not a Server-Timing metric: {metric!r} in {header!r}"
        assert matched[1] not in found, header
        found[matched[1]] = float(matched[2])
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate, timeout: float = 30.0):
    """Polls until predicate() is truthy and returns its value; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


def as_transaction(row: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(FEATURES, row, strict=True)}


def write_published_csv(
    path: Path, X: np.ndarray, y: np.ndarray, spreadsheet: bool = False, ids: list[str] | None = None
) -> Path:
    """Rows in the published creditcard.csv's own format: every header name quoted, `Class` a quoted
    "0" or "1", `Time` an integer where it is whole (on most rows; "406.0" on every third, as a tool
    that rewrote a few rows would), the V's and Amount as Python writes floats. spreadsheet: the
    same file saved again by a spreadsheet, with a UTF-8 byte-order mark and CRLF line ends. ids:
    a quoted `transaction_id` column first (the feature writer's)."""
    names = (["transaction_id"] if ids is not None else []) + [*FEATURES, "Class"]
    lines = [",".join(f'"{name}"' for name in names)]
    for i, (row, label) in enumerate(zip(X.tolist(), y.tolist(), strict=True)):
        time_ = f"{row[0]:.0f}" if row[0].is_integer() and i % 3 else repr(row[0])
        fields = ([f'"{ids[i]}"'] if ids is not None else []) + [time_, *map(repr, row[1:]), f'"{int(label)}"']
        lines.append(",".join(fields))
    end = "\r\n" if spreadsheet else "\n"
    path.write_bytes(("\ufeff" if spreadsheet else "").encode() + (end.join(lines) + end).encode())
    return path


def train_small_model(path: Path, n_rows: int = 6000, trees: int = 25, seed: int = 3) -> RandomForestClassifier:
    """A real forest in about a second; frauds are oversampled so that scores vary."""
    X, y = synthetic.generate(n_rows, seed=seed)
    Xf, yf = synthetic.generate(40 * n_rows, seed=seed + 1)
    X = np.vstack([X, Xf[yf == 1]])
    y = np.concatenate([y, yf[yf == 1]])
    model = RandomForestClassifier(n_estimators=trees, random_state=seed).fit(X, y)
    export(
        model,
        path,
        data_source=f"test synthetic rows={len(y)}",
        metrics={"roc_auc": 1.0},
        stats=feature_stats(X),
        version=f"test-{seed}",
    )
    return model


def install_model(source: Path, target: Path) -> None:
    """As an operator (or `make model`) does: each file renamed into place, never overwritten."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(
        ArtifactPaths.for_model(source).__dict__.values(),
        ArtifactPaths.for_model(target).__dict__.values(),
        strict=True,
    ):
        tmp = dst.with_name(f".{dst.name}.new")
        shutil.copy(src, tmp)
        os.replace(tmp, dst)


def sklearn_arrays(estimator) -> dict:
    """The trees exactly as sklearn holds them (float64 thresholds), with global node indices."""
    trees = [t.tree_ for t in getattr(estimator, "estimators_", [estimator])]
    offsets = np.cumsum([0] + [t.node_count for t in trees])

    def glue(side):
        return np.concatenate(
            [
                np.where(getattr(t, side) >= 0, getattr(t, side) + o, -1)
                for t, o in zip(trees, offsets[:-1], strict=True)
            ]
        )

    return {
        "left": glue("children_left"),
        "right": glue("children_right"),
        "feature": np.concatenate([t.feature for t in trees]),
        "threshold": np.concatenate([t.threshold for t in trees]),
        "value": np.concatenate([t.value[:, 0, 1] for t in trees]),
        "roots": offsets[:-1],
    }


def rows_on_thresholds(arrays: dict, X: np.ndarray, rng: np.random.Generator, n_rows: int) -> np.ndarray:
    """Rows whose features sit exactly on split thresholds, and one float32 step either side:
    where a walker that skips sklearn's float32 cast would take the other branch."""
    internal = np.flatnonzero(arrays["left"] >= 0)
    rows = X[rng.integers(0, len(X), size=n_rows)].copy()
    for row in rows:
        for node in rng.choice(internal, size=8):
            threshold = arrays["threshold"][node]
            nudge = rng.integers(-1, 2)
            value = np.float32(threshold)
            if nudge:
                value = np.nextafter(value, np.float32(np.inf * nudge))
            row[arrays["feature"][node]] = threshold if nudge == 0 and rng.random() < 0.5 else float(value)
    return rows


def log_text(logs: Path) -> str:
    return (logs / "stack.log").read_text()


def two_trained_models(base: Path) -> tuple[Path, Path, dict[str, float], dict[str, int]]:
    """Models A (version test-3) and B (test-4) under `base`, a transaction that they score
    differently, and each one's score of it."""
    a = base / "a" / "fraud-model.joblib"
    b = base / "b" / "fraud-model.joblib"
    model_a = train_small_model(a, trees=25, seed=3)
    model_b = train_small_model(b, trees=15, seed=4)
    X, y = synthetic.generate(3000, seed=30)
    candidates = X[y == 1]
    score_a = np.round(100 * model_a.predict_proba(candidates)[:, 1])
    score_b = np.round(100 * model_b.predict_proba(candidates)[:, 1])
    probe = candidates[np.flatnonzero(score_a != score_b)[0]]
    return (
        a,
        b,
        as_transaction(probe),
        {"test-3": int(score_a[score_a != score_b][0]), "test-4": int(score_b[score_a != score_b][0])},
    )


SPENT_MESSAGE = re.compile(
    "".join(re.escape(text) + (r"\d+" if field else "") for text, field, _, _ in string.Formatter().parse(SPENT))
)


def is_deadline_answer(path: str, status: int, retry_after: str | None, body: bytes) -> bool:
    """Whether an answer is the documented one to a request whose budget (X-Deadline-Ms, from
    5 ms) was spent in the queue, which a busy machine can cause: 503, Retry-After and the message
    of service/api/deadline.py in the route's error shape, {"error": "deadline_exceeded",
    "message": …}, or under /v2 the Open Inference Protocol's {"error": …}."""
    if status != 503 or retry_after != RETRY_AFTER_SECONDS:
        return False
    try:
        found = json.loads(body)
    except ValueError:
        return False
    if not isinstance(found, dict):
        return False
    if protocol_v2(urlsplit(path).path):
        return list(found) == ["error"] and SPENT_MESSAGE.fullmatch(str(found["error"])) is not None
    return (
        list(found) == ["error", "message"]
        and found["error"] == "deadline_exceeded"
        and SPENT_MESSAGE.fullmatch(str(found["message"])) is not None
    )


# The longest budget a client may ask for (X-Deadline-Ms), for load that must not be refused for a
# busy machine's queue.
LONGEST_BUDGET = {DEADLINE_HEADER: str(DEADLINE_MAX_MS)}


def past_the_queue(client: Client, method: str, path: str, body: Any = None, headers=None, tries: int = 20) -> Reply:
    """client.request's answer, asked again while it is the documented deadline refusal (a busy
    machine's queue outlasted the budget; the request was not scored, so nothing of it was
    recorded), waiting its Retry-After between tries."""
    for _ in range(tries - 1):
        reply = client.request(method, path, body, headers)
        if not is_deadline_answer(path, reply.status, reply.headers.get("Retry-After"), reply.raw):
            return reply
        time.sleep(float(RETRY_AFTER_SECONDS))
    return client.request(method, path, body, headers)


class SteadyTraffic(threading.Thread):
    """Scores the probe transaction back to back over keep-alive connections through nginx."""

    def __init__(self, client: Client, transaction: dict) -> None:
        super().__init__(daemon=True)
        self.client, self.transaction = client, transaction
        self.seen: list[tuple[int, str | None, int | None]] = []
        # The documented answer to a request that waited out its deadline in the queue, which a busy
        # machine causes during a rollout: set aside, since it is the service working as designed.
        self.past_deadline = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        path = "/v1/fraud-score"
        while not self.stopping.is_set():
            try:
                reply = self.client.score(self.transaction)
                if is_deadline_answer(path, reply.status, reply.headers.get("Retry-After"), reply.raw):
                    self.past_deadline += 1
                    continue
                body = reply.json if reply.status == 200 else {}
                self.seen.append((reply.status, body.get("model-version"), body.get("fraud-score")))
            except Exception as e:  # a refused or cut connection is a failure to count, not to hide
                self.seen.append((0, repr(e), None))

    def stop(self) -> list[tuple[int, str | None, int | None]]:
        self.stopping.set()
        self.join(10)
        return self.seen


class Upstream:
    """An HTTP/1.1 exchange with gunicorn's unix socket, byte by byte as nginx would send it."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def read_reply(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(status_line.split()[1]), headers, body

    def close(self) -> None:
        self.sock.close()


def call_upstream(socket_path: Path, method: str, path: str, stamp: float | None, body: bytes = b"", **headers: str):
    """One request straight to gunicorn with nginx's X-Request-Start set to `stamp` (None: unset)."""
    upstream = Upstream(socket_path)
    try:
        head = {"X-API-Key": TEST_KEY, **headers}
        if stamp is not None:
            head["X-Request-Start"] = f"{stamp:.3f}"
        if method == "POST":
            head |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
        upstream.send_head(method, path, head)
        if body:  # a worker may answer a bodiless request and close before an empty send
            upstream.sock.sendall(body)
        return upstream.read_reply()
    finally:
        upstream.close()


def workers_of(master_pid: int) -> set[int]:
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as f:
        return {int(pid) for pid in f.read().split()}


# Inside a new mount namespace (private: nothing propagates back to the host), bind the directory
# onto itself and remount that bind read-only, then exec the command: gunicorn keeps the pid.
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'


def read_only(directory: Path) -> tuple[str, ...]:
    """A command prefix that runs the rest with `directory` read-only."""
    return ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", READ_ONLY, "sh", str(directory))


def require_read_only_mounts(directory: Path) -> None:
    probe = subprocess.run(
        [*read_only(directory), "touch", str(directory / ".probe")], capture_output=True, text=True, timeout=30
    )
    if "Read-only file system" not in probe.stderr:
        (directory / ".probe").unlink(missing_ok=True)
        pytest.skip(
            "needs a private mount namespace with a read-only bind mount (root with CAP_SYS_ADMIN: "
            f"unshare --mount, mount --bind); here: {probe.stderr.strip() or 'the directory stayed writable'}"
        )


# --- nginx.conf.template, read as text ---------------------------------------------------------


def blocks(text: str, opening: str, every: bool = False):
    """The bodies of nginx blocks whose header matches `opening` (one group: the block's name), by
    name; or, with `every`, all of them in order (blocks of one name: `server`)."""
    found = []
    for match in re.finditer(opening + r"\s*\{", text):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found.append((match.group(1), text[match.end() : i - 1]))
    return [body for _, body in found] if every else dict(found)


def api_server(template: str) -> str:
    """The body of the server block that listens for clients (not the stub_status socket's)."""
    (body,) = [b for b in blocks(template, r"\b(server)(?=\s*\{)", every=True) if "listen ${NGINX_LISTEN}" in b]
    return body


def nginx_locations(template: str) -> dict[str, str]:
    """'= /path' or '/prefix' -> block body, in the server clients reach. Regex locations would defeat
    the lookup below."""
    template = api_server(template)
    locations = blocks(template, r"\blocation\s+((?:=\s*)?/[^\s{]*)")
    assert not re.search(r"\blocation\s+[~@]", template), "regex and named locations are not covered by this test"
    return {re.sub(r"=\s*", "= ", name): body for name, body in locations.items()}


def location_for(locations: dict[str, str], path: str) -> str:
    """nginx's choice for a path: an exact match, else the longest matching prefix."""
    if f"= {path}" in locations:
        return f"= {path}"
    return max((name for name in locations if not name.startswith("=") and path.startswith(name)), key=len)
