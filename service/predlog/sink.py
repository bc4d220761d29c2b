"""From one request's scores to one spool frame, and back.

The hot path pays for what changes per request only: the model's facts (versions, digest, threshold,
schema version) are serialised once; a single row's frame is built by one C call in place, in the
segment's mapping (_frame.c's Writer: the same bytes as this module's Python makes of a batch), a
batch's numbers are its arrays' bytes. A
frame holds one request's records column by column:

    <u32 length of the JSON meta><meta><X f8[n,30]><probability f8[n]><fraud_score i2[n]>
    <is_fraud u1[n]><sample_weight f8[n]>[<challenger_probability f8[n]><challenger_is_fraud u1[n]>]

the last two when the meta names a challenger. The meta holds the request's fields and the few
per-row values that are rare or variable: transaction ids, the flagged rows' ood features, reasons,
and which rows were kept when sampling dropped some.

Sampling (PREDICTION_LOG_SAMPLE < 1) keeps a row that was flagged (is-fraud or ood-warning) or on
which the challenger disagrees; any other row is kept when a hash of its transaction id (else of its
request id and row) falls below the rate, so that a transaction is kept or not wherever it is
scored, and is weighted 1 / rate, so that rates computed from the log stay unbiased."""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from service.core.features import FEATURES, N_FEATURES
from service.predlog.record import SCHEMA_VERSION
from service.predlog.spool import Spool, frame

META_LENGTH = struct.Struct("<I")
# V2's request `id` names the request, not a transaction: its rows are sampled apart.
V2_PREFIX = "/v2/"
_HASH_SCALE = float(2**64)
NAN = float("nan")  # a challenger's probability when it did not score the row


class Entry(NamedTuple):
    """What the API layer knows of a request that the records need. (_frame.c reads its fields by
    position: a new one goes at the end.)"""

    request_id: str
    route: str
    key_id: str
    transaction_ids: str | list[Any] | None  # one for every row (V2's id), one per row, or none
    explained: bool
    started_ns: int  # time.perf_counter_ns() when the app took the request
    due: float | None  # the wall-clock time the answer was due (the deadline), when known
    client_address: str | None
    trace_id: str | None = None  # the request's W3C trace id (service/telemetry/trace_context.py)


def service_us(entry: Entry) -> int:
    """The request's time in the app so far, in microseconds."""
    return (time.perf_counter_ns() - entry.started_ns) // 1000


def deadline_ns(due: float) -> int:
    return int(due * 1e9)


def key_id(key: bytes) -> str:
    """A short, stable, non-secret name for an API key: the start of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:12]


def kept(name: str, sample: float) -> bool:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") / _HASH_SCALE < sample


def sampling_name(entry: Entry, row: int) -> str:
    """What decides whether a row is sampled: its own transaction id; else the request's id (V2's
    `id`, else X-Request-ID) and the row's index."""
    tids = entry.transaction_ids
    if isinstance(tids, list):
        tid = tids[row]
        if isinstance(tid, str) and tid:
            return tid
        return f"{entry.request_id}/{row}"
    if isinstance(tids, str) and tids and not entry.route.startswith(V2_PREFIX):
        return tids
    return f"{tids or entry.request_id}/{row}"


_new_entry = tuple.__new__


class PredictionLog:
    """The records of the requests a model scores, into a spool. Built with the app, in the master."""

    def __init__(
        self,
        spool: Spool,
        *,
        model_version: str,
        model_sha256: str | None,
        threshold: int,
        challenger_version: str | None = None,
        challenger_threshold: int | None = None,
        sample: float = 1.0,
        key_ids: Sequence[str] = (),
        client_address: bool = False,
    ) -> None:
        self.spool = spool
        self._writer = spool.writer
        self.sample = sample
        self._weight = 1.0 / sample if sample else 0.0
        self.key_ids = tuple(key_ids)
        self.client_address = client_address
        self._challenger = challenger_version is not None
        self._challenger_threshold = challenger_threshold
        head = {
            "v": SCHEMA_VERSION,
            "model_version": model_version,
            "model_sha256": model_sha256,
            "threshold": threshold,
            "challenger_version": challenger_version,
        }
        self._head = orjson.dumps(head)[:-1] + b","  # the per-request fields follow

    def entry(
        self,
        request_id: str,
        route: str,
        key: int,
        transaction_ids: str | list[Any] | None = None,
        explained: bool = False,
        started_ns: int | None = None,
        due: float | None = None,
        client_address: str | None = None,
        trace_id: str | None = None,
    ) -> Entry:
        # tuple.__new__ is what Entry(...) calls, less a Python frame (on every logged request)
        return _new_entry(
            Entry,
            (
                request_id,
                route,
                self.key_ids[key] if 0 <= key < len(self.key_ids) else "",
                transaction_ids,
                explained,
                time.perf_counter_ns() if started_ns is None else started_ns,
                due,
                client_address if self.client_address else None,
                trace_id,
            ),
        )

    def _meta(self, entry: Entry, now_ns: int, n: int, extra: dict[str, Any], service_us: int) -> bytes:
        meta = {
            "ts": now_ns,
            "request_id": entry.request_id,
            "route": entry.route,
            "explained": entry.explained,
            "key_id": entry.key_id,
            "n": n,
            "service_us": service_us,
            **extra,
        }
        if entry.due is not None:
            meta["deadline"] = deadline_ns(entry.due)
        if entry.client_address is not None:
            meta["client_address"] = entry.client_address
        if entry.trace_id is not None:
            meta["trace_id"] = entry.trace_id
        encoded = self._head + orjson.dumps(meta)[1:]
        return META_LENGTH.pack(len(encoded)) + encoded

    def one(
        self,
        entry: Entry,
        row: Sequence[float],
        probability: float,
        score: int,
        is_fraud: bool,
        ood_features: list[str],
        reasons: list[dict[str, Any]] | None,
        challenger_probability: float | None,
    ) -> None:
        """One scored row's record, written (one frame) before the answer leaves: built in place in
        the segment's mapping by one C call (Writer.single), or handed to Spool.write when the
        spool has work to do first (a segment to open or seal, a scan, an allocation) or refuses."""
        weight = 1.0
        challenger_is_fraud = False
        if self._challenger:
            if challenger_probability is None:
                challenger_probability = NAN
            else:
                challenger_is_fraud = round(100.0 * challenger_probability) >= self._challenger_threshold
        else:
            challenger_probability = None  # the frame has the challenger's columns only when it names one
        # Flagged rows and disagreements are always kept: with is-fraud false, a disagreement is the
        # challenger's fraud (one that did not score the row has none).
        if self.sample < 1.0 and not (is_fraud or ood_features or challenger_is_fraud):
            if not kept(sampling_name(entry, 0), self.sample):
                return
            weight = self._weight
        extra = None
        tids = entry.transaction_ids
        if ood_features or reasons is not None or not (tids is None or isinstance(tids, str)):
            # the meta's rarer members, in the order _meta writes them: after a transaction id (a
            # single string the C writes itself)
            members: dict[str, Any] = {}
            if not (tids is None or isinstance(tids, str)):
                members["tid"] = tids
            if ood_features:
                members["ood"] = [[0, ood_features]]
            if reasons is not None:
                members["reasons"] = [reasons]
            extra = orjson.dumps(members)[1:-1]
        data = self._writer.single(
            self._head,
            entry,
            extra,
            row,
            probability,
            score,
            is_fraud,
            weight,
            challenger_probability,
            challenger_is_fraud,
        )
        if data is not None:
            self.spool.write(data, 1, time.time_ns())

    def many(
        self,
        entry: Entry,
        X: np.ndarray,
        probability: np.ndarray,
        score: np.ndarray,
        is_fraud: np.ndarray,
        outside: np.ndarray,
        reasons: list[list[dict[str, Any]]] | None,
        challenger_probability: np.ndarray | None,
    ) -> None:
        """A matrix of scored rows' records: one frame for the request."""
        n = len(X)
        challenger_is_fraud = None
        if self._challenger and challenger_probability is not None:
            challenger_is_fraud = np.round(100.0 * challenger_probability) >= self._challenger_threshold
        ood_warning = outside.any(axis=1)
        weight = np.ones(n)
        rows = None
        if self.sample < 1.0:
            always = is_fraud | ood_warning
            if challenger_is_fraud is not None:
                always |= challenger_is_fraud != is_fraud
            keep = always.copy()
            for i in np.flatnonzero(~always).tolist():
                keep[i] = kept(sampling_name(entry, i), self.sample)
            weight[~always] = self._weight
            rows = np.flatnonzero(keep)
            if not len(rows):
                return
            X, probability, score, is_fraud, outside, weight = (
                a[rows] for a in (X, probability, score, is_fraud, outside, weight)
            )
            if challenger_probability is not None:
                challenger_probability, challenger_is_fraud = challenger_probability[rows], challenger_is_fraud[rows]
            if reasons is not None:
                reasons = [reasons[i] for i in rows.tolist()]
            ood_warning = ood_warning[rows]
        extra: dict[str, Any] = {}
        tids = entry.transaction_ids
        if tids is not None:
            extra["tid"] = [tids[i] for i in rows.tolist()] if rows is not None and isinstance(tids, list) else tids
        if rows is not None:
            extra["rows"] = rows.tolist()
        flagged = np.flatnonzero(ood_warning)
        if len(flagged):
            extra["ood"] = [[i, [FEATURES[j] for j in np.flatnonzero(outside[i]).tolist()]] for i in flagged.tolist()]
        if reasons is not None:
            extra["reasons"] = reasons
        parts = [
            np.ascontiguousarray(X, dtype="<f8").tobytes(),
            np.asarray(probability, dtype="<f8").tobytes(),
            np.asarray(score, dtype="<i2").tobytes(),
            np.asarray(is_fraud, dtype=np.bool_).tobytes(),
            weight.astype("<f8", copy=False).tobytes(),
        ]
        if self._challenger:
            if challenger_probability is None:
                challenger_probability, challenger_is_fraud = np.full(len(X), np.nan), np.zeros(len(X), np.bool_)
            parts += [
                np.asarray(challenger_probability, dtype="<f8").tobytes(),
                np.asarray(challenger_is_fraud, dtype=np.bool_).tobytes(),
            ]
        now = time.time_ns()
        payload = b"".join([self._meta(entry, now, len(X), extra, service_us(entry)), *parts])
        self.spool.write(frame(payload), len(X), now)


def decode(payload: bytes | memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A frame's payload as (meta, arrays): the inverse of PredictionLog.one and .many."""
    (length,) = META_LENGTH.unpack_from(payload, 0)
    at = META_LENGTH.size
    meta = orjson.loads(payload[at : at + length])
    at += length
    n = meta["n"]
    arrays: dict[str, np.ndarray] = {}
    layout = [("X", "<f8", n * N_FEATURES), ("probability", "<f8", n), ("fraud_score", "<i2", n)]
    layout += [("is_fraud", "?", n), ("sample_weight", "<f8", n)]
    if meta.get("challenger_version") is not None:
        layout += [("challenger_probability", "<f8", n), ("challenger_is_fraud", "?", n)]
    for name, dtype, count in layout:
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=at)
        at += arrays[name].nbytes
    arrays["X"] = arrays["X"].reshape(n, N_FEATURES)
    return meta, arrays
