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
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from service.predlog._frame import Writer

from service.core.features import FEATURES, N_FEATURES
from service.predlog.sink import Entry, PredictionLog, decode
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
        started_ns=rng.choice([0, time.perf_counter_ns() + rng.randrange(10**15)]),  # a time ahead: negative
        due=rng.choice([None, rng.uniform(1.6e9, 1.9e9), rng.uniform(-1e9, 0)]),
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
    writer = log.spool.writer  # no segment open: it hands every frame back
    for _ in range(3000):
        entry, extra, numbers = random_request(rng, log)
        before_ns, before = time.time_ns(), time.perf_counter_ns()
        built = writer.single(
            log._head,
            entry,
            orjson.dumps(extra)[1:-1] if extra else None,
            numbers[:N_FEATURES],
            *(numbers[N_FEATURES:] if challenger else (*numbers[N_FEATURES:], None, False)),
        )
        after_ns, after = time.time_ns(), time.perf_counter_ns()
        (payload,), _ = whole_frames(built)
        meta, arrays = decode(payload)
        # the clocks the C read: the wall clock's ns, and the µs since `started_ns` as perf_counter_ns counts
        assert before_ns <= meta["ts"] <= after_ns
        assert (before - entry.started_ns) // 1000 <= meta["service_us"] <= (after - entry.started_ns) // 1000
        assert built == python_frame(log, entry, meta["ts"], meta["service_us"], extra, numbers)
        assert meta["request_id"] == entry.request_id
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
    writer = log.spool.writer
    entry = log.entry("r", "/v1/fraud-score", 0)
    good = [log._head, entry, None, (0.5,) * N_FEATURES, 0.5, 50, True, 1.0, None, False]
    assert writer.single(*good)
    with pytest.raises(TypeError):
        writer.single(*good[:-1])
    bad_entries = [
        tuple(entry),
        entry[:-1],
        entry._replace(request_id=None),
        entry._replace(request_id=b"r"),
        entry._replace(route=5),
        entry._replace(key_id=None),
        entry._replace(trace_id=7),
        entry._replace(started_ns="x"),
        entry._replace(started_ns=1.5),
        entry._replace(started_ns=-(1 << 63)),
        entry._replace(started_ns=1 << 64),
        entry._replace(due="x"),
        entry._replace(due=1e300),
    ]
    arguments_bad = [(0, "head"), (2, "extra"), (3, (0.5,) * 29), (3, ("x",) * N_FEATURES), (3, 5)]
    arguments_bad += [(4, "p"), (5, 1 << 20), (5, 1 << 70), (7, None)]
    arguments_bad += [(1, bad) for bad in bad_entries[1:]]
    assert writer.single(*[bad_entries[0] if i == 1 else a for i, a in enumerate(good)])  # a plain tuple will do
    for at, bad in arguments_bad:
        arguments = list(good)
        arguments[at] = bad
        with pytest.raises((TypeError, ValueError, OverflowError)):
            writer.single(*arguments)
    with pytest.raises(ValueError):
        writer.put(b"no mapping")
    with pytest.raises(TypeError):
        Writer(1, 1, 1, "not callable")


def test_a_single_frame_goes_into_the_mapping_when_the_spool_has_nothing_to_do_first(tmp_path):
    written = []
    spool = Spool(tmp_path, 1 << 30, 1 << 26, 3600, on_written=written.append)
    log = PredictionLog(spool, model_version="m", model_sha256=None, threshold=50, key_ids=["k0"])
    row = tuple(float(i) for i in range(N_FEATURES))
    entry = log.entry("r0", "/v1/fraud-score", 0, "tx-0")
    assert spool.writer.single(log._head, entry, None, row, 0.25, 25, False, 1.0, None, False) is not None
    log.one(entry, row, 0.25, 25, False, [], None, None)  # handed to Spool.write, which opens the segment
    assert spool.writer.allocated == CHUNK and spool.writer.size > 0
    writer = spool.writer
    writer.scan_at_ns = 1 << 62  # no scan due while the loop runs, however slow the machine
    for i in range(1, 200):
        before = (writer.size, writer.spool_bytes, writer.unscanned)
        entry_i = log.entry(f"r{i}", "/v1/fraud-score", 0)
        assert writer.single(log._head, entry_i, None, row, 0.25, 25, False, 1.0, None, False) is None
        grown = writer.size - before[0]  # the frame, in the mapping: every account grew by its length
        assert grown > 0 and (writer.spool_bytes - before[1], writer.unscanned - before[2]) == (grown, grown)
    assert written == [1] * 200
    spool.writer.seal_at_ns = 0  # a rotation due: the C leaves it to Spool.write
    assert spool.writer.single(log._head, entry, None, row, 0.25, 25, False, 1.0, None, False) is not None
    spool.seal()
    (segment,) = spool_dir(tmp_path).glob("*.seg")
    payloads, whole = whole_frames(segment.read_bytes())
    assert whole == segment.stat().st_size and len(payloads) == 200
    assert [decode(p)[0]["request_id"] for p in payloads] == [f"r{i}" for i in range(200)]


def test_frames_past_a_chunk_grow_the_mapping_and_a_seal_cuts_it(tmp_path):
    spool = Spool(tmp_path, 1 << 30, 1 << 26, 3600)
    frames = [frame(bytes([i % 251 + 1]) * (i * 997 % 70_000 + 1)) for i in range(40)]
    for data in frames:
        assert spool.write(data, 1, 1)
    assert spool.writer.allocated >= sum(map(len, frames)) > CHUNK
    spool.seal()
    (segment,) = spool_dir(tmp_path).glob("*.seg")
    assert segment.read_bytes() == b"".join(frames)
