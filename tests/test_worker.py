"""The sync worker that closes at once (service/runtime/worker.py), over real nginx: a body the app refused
without reading is drained first, so nginx gets the answer, never a reset (a 502); and on a graceful
stop it answers the connections already queued on its socket before it exits; one idle worker
wakes per connection, not all of them."""

from __future__ import annotations

import json
import os
import signal
import socket

from tests.helpers import Client, sample_transaction, wait_for


def test_answers_refused_before_the_body_is_read_still_arrive(client: Client, local_stack):
    limit_kb = local_stack.settings.batch_body_kb
    item = json.dumps(sample_transaction())
    count = (limit_kb * 1024 - 64) // (len(item) + 1)
    body = '{"transactions":[' + ",".join([item] * count) + "]}"
    assert len(body) > 256 * 1024  # far beyond a socket's buffer: the worker must read it to close cleanly
    for _ in range(5):
        reply = client.request("POST", "/v1/fraud-score/batch", body, key="not-a-valid-key-at-all")
        assert reply.status == 403 and reply.json["error"] == "forbidden"
        assert client.score(sample_transaction()).status == 200
    assert '"Using worker: service.runtime.worker.Worker"' in (local_stack.logs / "stack.log").read_text()


def test_a_graceful_stop_answers_the_connections_already_queued(stack_factory):
    """SIGTERM to the master (`docker stop`): it unlinks the socket, then stops its worker. The
    worker is held (SIGSTOP) while requests queue on the socket, so they are all still in the
    socket's backlog when it learns to stop: each must get its answer, none a reset."""
    stack = stack_factory(WORKERS="1")
    master = stack.gunicorn.pid
    with open(f"/proc/{master}/task/{master}/children") as f:
        (worker,) = (int(pid) for pid in f.read().split())
    queued = []
    os.kill(worker, signal.SIGSTOP)
    try:
        for _ in range(20):
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(20)
            connection.connect(str(stack.socket))
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            queued.append(connection)
        os.kill(master, signal.SIGTERM)
        wait_for(lambda: not stack.socket.exists())  # closed and unlinked: nothing new can arrive
    finally:
        os.kill(worker, signal.SIGCONT)
    answers = []
    for connection in queued:
        with connection:
            raw = b""
            while chunk := connection.recv(65536):
                raw += chunk
        answers.append(raw.split(b"\r\n", 1)[0])
    assert answers == [b"HTTP/1.1 200 OK"] * len(queued)
    assert stack.gunicorn.wait(20) == 0


class RecordedWrites:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def gunicorn_answer(response_class, method: str, headers: list[tuple[str, str]], body: list[bytes]) -> list[bytes]:
    """What a gunicorn Response of this class writes for an answer, write by write."""
    import socket

    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    cfg = Config()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(f"{method} /v1/fraud-score HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        request = next(RequestParser(cfg, ours, ("127.0.0.1", 1)))
        sock = RecordedWrites()
        response = response_class(request, sock, cfg)
        response.force_close()
        response.start_response("200 OK", list(headers))
        for chunk in body:
            response.write(chunk)
        response.close()
    return sock.writes


def without_date(answer: bytes) -> bytes:
    import re

    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


def test_an_answer_in_one_piece_leaves_in_one_write_with_the_bytes_gunicorn_would_send():
    from service.runtime.worker import Response

    gunicorn_response = Response.__mro__[1]
    json_answer = [("Content-Type", "application/json"), ("Content-Length", "17")]
    cases = [
        ("POST", json_answer, [b'{"fraud-score":3}'], 1),  # the common case: one write
        ("POST", [("Content-Type", "text/plain")], [b"ab", b"cd"], None),  # chunked: as gunicorn writes it
        ("POST", [("Content-Length", "4")], [b"ab", b"cd"], None),  # a body in pieces
        ("HEAD", json_answer, [b'{"fraud-score":3}'], None),  # no body on the wire
        ("POST", [("Content-Length", "0")], [], None),  # no body at all
    ]
    for method, headers, body, writes in cases:
        ours = gunicorn_answer(Response, method, headers, body)
        theirs = gunicorn_answer(gunicorn_response, method, headers, body)
        assert without_date(b"".join(ours)) == without_date(b"".join(theirs)), method
        assert len(ours) == (writes or len(theirs)), (method, headers, ours)
    assert len(gunicorn_answer(gunicorn_response, *cases[0][:3])) == 2  # what the one write saves


def voluntary_switches(pids: list[int]) -> int:
    """How often these processes have gone to sleep (waited for something), all told."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return total


def test_one_idle_worker_wakes_per_connection(stack_factory):
    """Connections arriving one at a time at four idle workers: each wakes one of them, which goes
    back to sleep once it has answered. gunicorn's select() wakes every idle worker for each, and
    all but one go back to sleep with nothing done: 3-4 sleeps per connection instead of 1."""
    stack = stack_factory(WORKERS="4")
    children = f"/proc/{stack.gunicorn.pid}/task/{stack.gunicorn.pid}/children"
    wait_for(lambda: len(open(children).read().split()) == 4)
    workers = [int(pid) for pid in open(children).read().split()]
    client = Client(stack.host, stack.port)
    for _ in range(20):  # every worker has booted and served: all wait for the next connection
        assert client.request("GET", "/health").status == 200
    connections = 200
    before = voluntary_switches(workers)
    for _ in range(connections):
        assert client.request("GET", "/health").status == 200
    per_connection = (voluntary_switches(workers) - before) / connections
    assert per_connection < 2, per_connection
