"""gunicorn's sync worker, freed as soon as its answer is written.

gunicorn's sync worker closes every connection after one request, and closes it gracefully: it
shuts down its side, then waits (up to 2 s) for the peer to close first, so that unread request
bytes in its buffer cannot make the kernel reset the connection under the answer. The peer here is
nginx, which closes its end only when its event loop comes round to the answer: until then the
worker sits idle, one such wait per request, and under load that wait is most of a worker's time.

This worker reads whatever the app left unread of the request body (nginx sends the whole body with
its length before the worker answers, so the read does not wait on the network), then closes the
connection at once: nothing unread remains to cause a reset, and the worker takes the next request."""

from __future__ import annotations

from typing import Any

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.sync import SyncWorker

DRAIN_CHUNK = 64 * 1024


class Worker(SyncWorker):
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
