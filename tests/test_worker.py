"""The sync worker that closes at once (service/worker.py), over real nginx: a body the app refused
without reading is drained first, so nginx gets the answer, never a reset (a 502)."""

from __future__ import annotations

import json

from service.stack import batch_body_limit
from tests.helpers import Client, sample_transaction


def test_answers_refused_before_the_body_is_read_still_arrive(client: Client, local_stack):
    limit_kb = int(batch_body_limit(local_stack.settings.batch_max).removesuffix("k"))
    item = json.dumps(sample_transaction())
    count = (limit_kb * 1024 - 64) // (len(item) + 1)
    body = '{"transactions":[' + ",".join([item] * count) + "]}"
    assert len(body) > 256 * 1024  # far beyond a socket's buffer: the worker must read it to close cleanly
    for _ in range(5):
        reply = client.request("POST", "/v1/fraud-score/batch", body, key="not-a-valid-key-at-all")
        assert reply.status == 403 and reply.json["error"] == "forbidden"
        assert client.score(sample_transaction()).status == 200
    assert '"Using worker: service.worker.Worker"' in (local_stack.logs / "stack.log").read_text()
