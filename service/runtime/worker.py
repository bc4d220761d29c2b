"""gunicorn's sync worker, freed as soon as its answer is written.

gunicorn's sync worker closes every connection after one request, and closes it gracefully: it
shuts down its side, then waits (up to 2 s) for the peer to close first, so that unread request
bytes in its buffer cannot make the kernel reset the connection under the answer. The peer here is
nginx, which closes its end only when its event loop comes round to the answer: until then the
worker sits idle, one such wait per request, and under load that wait is most of a worker's time.

This worker reads whatever the app left unread of the request body (nginx sends the whole body with
its length before the worker answers, so the read does not wait on the network), then closes the
connection at once: nothing unread remains to cause a reset, and the worker takes the next request.

It also sends an answer whose body comes in one piece (what the app gives: one bytes object of the
declared Content-Length) in one write with its headers, where gunicorn makes two: a syscall less
per request, and nginx wakes once for the answer instead of twice.

On a graceful stop (SIGTERM to the master: `docker stop`), gunicorn's master closes and unlinks the
unix socket, then sends SIGTERM to its workers, which leave their loop. Connections already in the
socket's backlog were accepted by the kernel, and nginx has sent their requests: when the last worker
closes the listener they are reset (nginx: "reset by peer", a 502). So before it exits, a worker
answers what is already queued. Only once the socket's path is gone: nothing new can arrive, so the
queue empties; a worker retired while the socket stays (SIGHUP's rollout, max_requests) leaves the
queue to the workers that keep serving, but for one connection (below).

And it waits for a connection on an epoll of its own, the listener registered EPOLLEXCLUSIVE, where
gunicorn's sync worker waits in select(): with select every idle worker wakes for each connection,
one accepts it and the others find the queue empty and go back to sleep, wake-ups (CPU, context
switches) that grow with the idle workers, i.e. at any load short of saturation. With EPOLLEXCLUSIVE
the kernel wakes one waiting worker per connection (a busy worker, not waiting, takes the next one
from the queue itself); a woken worker that finds the queue empty (a busy worker took the connection
first) waits again. As only one worker is woken for a connection, the woken one must take it: one
that learns to stop at that moment answers one queued connection before it leaves. Everything else
about the wait is gunicorn's: the heartbeat before it, its timeout, a signal ending it (gunicorn's
wake-up pipe, registered beside the listener)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
from typing import Any

import orjson
from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.sync import SyncWorker

DRAIN_CHUNK = 64 * 1024


class _Collected:
    """Stands in for the socket while gunicorn writes headers and body, to send them as one."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(data)


class Response(wsgi.Response):
    def write(self, arg: bytes) -> None:
        whole_body = (
            not self.headers_sent
            and not self.chunked
            and isinstance(arg, bytes)
            and self.response_length == len(arg)
            and not self._omits_body
        )
        if not whole_body:
            super().write(arg)
            return
        sock, self.sock = self.sock, _Collected()
        try:
            super().write(arg)  # gunicorn's own framing and bookkeeping, into the collector
        finally:
            collected, self.sock = self.sock, sock
        sock.sendall(b"".join(collected.parts))


# gunicorn builds each request's Response by this name (gunicorn.http.wsgi.create); this worker
# class is gunicorn's only user of it in a process that loads it.
wsgi.Response = Response


def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own answer to a request it refuses to parse (bytes nginx lets through: a request
    target with bytes beyond ASCII, a header value with a control character), in the service's
    error shape (service/api/errors.py) instead of gunicorn's HTML page."""
    body = orjson.dumps({"error": reason.lower().replace(" ", "_"), "message": mesg or reason})
    head = f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    util.write_nonblock(sock, f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)


# gunicorn's workers call it by this name (gunicorn.workers.base.Worker.handle_error).
util.write_error = write_error


class Worker(SyncWorker):
    spool: Any = None

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> None:
        try:
            super().handle_request(listener, req, client, addr)
            try:
                while req.body.read(DRAIN_CHUNK):
                    pass
            except (OSError, NoMoreData):
                pass  # the peer went away: nothing left to protect
        finally:
            # gunicorn's graceful close, which follows in SyncWorker.handle, finds the socket
            # closed and returns at once.
            client.close()

    def run(self) -> None:
        # The service's prediction-log spool, when the preloaded app is the service's.
        self.spool = getattr(sys.modules.get("service.runtime.wsgi"), "spool", None)
        # Made here, after fork: an epoll made in the master would be one interest list shared by
        # every worker.
        self.poller = select.epoll()
        self.listeners = {listener.fileno(): listener for listener in self.sockets}
        for fd in self.listeners:
            self.poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        self.poller.register(self.PIPE[0], select.EPOLLIN)
        super().run()
        if not self.alive:  # asked to stop, not orphaned (that returns with alive still set)
            for listener in self.sockets:
                if self.reachable(listener):
                    self.answer_woken(listener)
                else:
                    self.answer_backlog(listener)

    def wait(self, timeout: float) -> list[Any]:
        """SyncWorker.wait on the epoll: the listeners ready to accept, after the heartbeat (and
        the prediction log's segment sealed if it is past its age, so an idle worker's records
        reach the compactor)."""
        self.notify()
        if self.spool is not None:
            self.spool.tick()
        ready = []
        for fd, _ in self.poller.poll(timeout):
            if fd in self.listeners:
                ready.append(self.listeners[fd])
            else:  # the wake-up pipe: a signal arrived (its handler has already run)
                os.read(fd, 1)
        return ready

    @staticmethod
    def reachable(listener: Any) -> bool:
        """Whether new connections can still arrive: a TCP listener, or a unix socket whose path exists."""
        if listener.family != socket.AF_UNIX:
            return True
        path = listener.getsockname()
        return not isinstance(path, str) or not path or os.path.exists(path)

    def answer_woken(self, listener: Any) -> None:
        """A worker retired while the socket stays (SIGHUP's rollout, max_requests) may have been
        woken for a connection just as it learnt to stop. EPOLLEXCLUSIVE woke no other worker for
        that one, so it would wait for the next connection to wake them, or for their wait's
        timeout (15 s) at low traffic: answer one queued connection, if any, before leaving."""
        self.notify()
        with contextlib.suppress(OSError):  # non-blocking listener: raises at once when nothing is queued
            self.accept(listener)

    def answer_backlog(self, listener: Any) -> None:
        # At most one backlog's worth: nothing can join the queue after the unlink.
        for _ in range(self.cfg.backlog):
            self.notify()
            try:
                self.accept(listener)  # non-blocking listener: raises once the queue is empty
            except OSError:
                return
