"""A single-row request's spool frame from the C pass (service/predlog/_frame.c) is, byte for byte,
the frame the Python of a batch writes for the same request (PredictionLog._meta, the numbers as
struct packs them, spool.frame), for thousands of random requests: any strings (quotes, control
characters, any Unicode), with and without a challenger, transaction id, deadline, client address,
trace id, out-of-distribution features and reasons; it decodes to what was logged; bad arguments
raise, never crash. Also the frames' writes through the spool's shared mapping."""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest
from service.predlog._frame import single

from service.core.features import FEATURES, N_FEATURES
from service.predlog.sink import Entry, PredictionLog, deadline_ns, decode
from service.predlog.spool import CHUNK, Spool, frame, spool_dir, whole_frames

pytestmark = pytest.mark.native  # the sanitizer run of `make test` repeats these

ALPHABET = 'ab"\\/\x00\x01\x08\t\n\x0c\r\x1f\x7fé€😀 '


def text(rng: random.Random, most: int = 12) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, most)))


def make_log(directory: Path, challenger: bool) -> PredictionLog:
    return PredictionLog(
        Spool(directory, 1 << 30, 1 << 26, 3600),
        model_version='m-1 "quoted"',
        model_sha256="ab" * 32,
        threshold=50,
        challenger_version="c-2" if challenger else None,
        challenger_threshold=40 if challenger else None,
        key_ids=["k0"],
    )


def python_frame(log: PredictionLog, entry: Entry, now: int, service_us: int, extra: dict, numbers: tuple) -> bytes:
    """The reference: a batch's meta for one row, and the single row's numbers as struct packs them."""
    packed = struct.pack(f"<{N_FEATURES}ddh?d" + ("d?" if log._challenger else ""), *numbers)
    if entry.transaction_ids is not None:  # the batch's meta takes every transaction id among its members
        extra = {"tid": entry.transaction_ids, **extra}
    return frame(log._meta(entry, now, 1, extra, service_us) + packed)


def random_request(rng: random.Random, log: PredictionLog):
    tid = rng.choice([None, text(rng), [text(rng)], 7])
    entry = Entry(
        request_id=text(rng, 40),
        route=rng.choice(["/v1/fraud-score", "/v1/fraud-score/by-id/{transaction_id}", text(rng)]),
        key_id=text(rng),
        transaction_ids=tid,
        explained=rng.random() < 0.5,
        started=0.0,
        due=rng.choice([None, rng.uniform(1.6e9, 1.9e9)]),
        client_address=rng.choice([None, text(rng)]),
        trace_id=rng.choice([None, text(rng, 32)]),
    )
    extra: dict = {}
    if tid is not None and not isinstance(tid, str):
        extra["tid"] = tid
    if rng.random() < 0.3:
        extra["ood"] = [[0, rng.sample(FEATURES, rng.randint(1, 4))]]
    if rng.random() < 0.3:
        extra["reasons"] = [[{"feature": text(rng), "value": rng.uniform(-9, 9), "contribution": rng.random()}]]
    row = tuple(
        rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, 5e-324, 1.7976931348623157e308, rng.randint(-9, 9)])
        for _ in FEATURES
    )
    probability = rng.random()
    score = round(100 * probability)
    numbers = [*row, probability, score, rng.random() < 0.5, rng.choice([1.0, 4.0])]
    if log._challenger:
        numbers += [rng.choice([rng.random(), math.nan]), rng.random() < 0.5]
    return entry, extra, tuple(numbers)


@pytest.mark.parametrize("challenger", [False, True])
def test_the_c_frame_is_the_python_frame_for_random_requests(tmp_path, challenger):
    rng = random.Random(11 + challenger)
    log = make_log(tmp_path, challenger)
    for _ in range(3000):
        entry, extra, numbers = random_request(rng, log)
        now, service_us = rng.randrange(1 << 62), rng.randrange(1 << 40)
        tids = entry.transaction_ids
        built = single(
            log._head,
            now,
            entry.request_id,
            entry.route,
            entry.explained,
            entry.key_id,
            service_us,
            tids if isinstance(tids, str) else None,
            orjson.dumps(extra)[1:-1] if extra else None,
            None if entry.due is None else deadline_ns(entry.due),
            entry.client_address,
            entry.trace_id,
            numbers[:N_FEATURES],
            *(numbers[N_FEATURES:] if challenger else (*numbers[N_FEATURES:], None, False)),
        )
        assert built == python_frame(log, entry, now, service_us, extra, numbers)
        (payload,), _ = whole_frames(built)
        meta, arrays = decode(payload)
        assert meta["request_id"] == entry.request_id and meta["ts"] == now
        assert arrays["X"][0].tobytes() == np.array(numbers[:N_FEATURES], dtype="<f8").tobytes()
        assert arrays["probability"][0] == numbers[N_FEATURES]


def test_one_logs_what_it_was_given(tmp_path):
    log = make_log(tmp_path, challenger=True)
    entry = log.entry("req-1", "/v1/fraud-score", 0, "tx-9", trace_id="t" * 32)
    row = tuple(float(i) / 3 for i in range(N_FEATURES))
    log.one(entry, row, 0.625, 63, True, ["V3"], None, 0.125)
    log.spool.seal()
    (segment,) = spool_dir(tmp_path).glob("*.seg")
    (payload,), whole = whole_frames(segment.read_bytes())
    assert whole == segment.stat().st_size  # sealed: cut to its frames, the allocation's rest gone
    meta, arrays = decode(payload)
    assert (meta["tid"], meta["ood"], meta["trace_id"], meta["n"]) == ("tx-9", [[0, ["V3"]]], "t" * 32, 1)
    assert arrays["X"][0].tolist() == list(row) and arrays["fraud_score"][0] == 63 and arrays["is_fraud"][0]
    assert arrays["challenger_probability"][0] == 0.125 and not arrays["challenger_is_fraud"][0]


def test_bad_arguments_raise(tmp_path):
    log = make_log(tmp_path, challenger=False)
    good = [log._head, 1, "r", "/v1/fraud-score", False, "k", 2, None, None, None, None, None]
    numbers = [tuple([0.5] * N_FEATURES), 0.5, 50, True, 1.0, None, False]
    assert single(*good, *numbers)
    with pytest.raises(TypeError):
        single(*good)
    for at, bad in [(0, "head"), (2, None), (2, b"r"), (7, 5), (8, "extra"), (9, 1.5), (1, 1 << 70)]:
        arguments = [*good, *numbers]
        arguments[at] = bad
        with pytest.raises((TypeError, ValueError, OverflowError)):
            single(*arguments)
    for at, bad in [(0, (0.5,) * 29), (0, ("x",) * N_FEATURES), (0, 5), (2, 1 << 20), (1, "p")]:
        arguments = [*good, *numbers]
        arguments[len(good) + at] = bad
        with pytest.raises((TypeError, ValueError, OverflowError)):
            single(*arguments)


def test_frames_past_a_chunk_grow_the_mapping_and_a_seal_cuts_it(tmp_path):
    spool = Spool(tmp_path, 1 << 30, 1 << 26, 3600)
    frames = [frame(bytes([i % 251 + 1]) * (i * 997 % 70_000 + 1)) for i in range(40)]
    for data in frames:
        assert spool.write(data, 1, 1)
    assert spool._allocated >= sum(map(len, frames)) > CHUNK
    spool.seal()
    (segment,) = spool_dir(tmp_path).glob("*.seg")
    assert segment.read_bytes() == b"".join(frames)
