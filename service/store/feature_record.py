"""How one transaction's features are stored in the online feature store: the single definition
shared by the writer (`python -m service.offline.feature_writer`, `make features`) and the reader (the
by-id routes).

A record is a format byte followed by the 30 features as little-endian IEEE-754 doubles, in
FEATURES order: 241 bytes. Chosen over a hash of 30 fields because one GET (or one MGET for a
batch) returns the whole row, decoding is a single `struct.unpack` (no 30 string-to-float parses)
and a double carries exactly the value a JSON client would send, so a score by id is bit-equal to
the score of the same features posted as JSON. The format byte lets a later layout coexist with
this one during a migration; the reader refuses formats it does not know."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from service.core.features import FEATURES, N_FEATURES

FORMAT_V1 = 1
_LAYOUT = struct.Struct(f"<B{N_FEATURES}d")
RECORD_SIZE = _LAYOUT.size
_RECORDS = np.dtype([("format", "u1"), ("features", "<f8", (N_FEATURES,))])  # the same layout, packed
assert _RECORDS.itemsize == RECORD_SIZE


class RecordError(ValueError):
    """A stored record that is not a transaction this service can score."""


def encode_record(row: Sequence[float]) -> bytes:
    """The record for one row of the 30 features, in FEATURES order."""
    if len(row) != N_FEATURES:
        raise RecordError(f"a record holds {N_FEATURES} features, got {len(row)}")
    return _LAYOUT.pack(FORMAT_V1, *row)


def decode_record(data: bytes) -> tuple[float, ...]:
    """The 30 features of a stored record, in FEATURES order. A double can hold NaN and infinities,
    which JSON cannot carry (so the contract never sees them): they are refused here; the caller
    validates the rest as the HTTP contract does."""
    if len(data) != RECORD_SIZE or data[0] != FORMAT_V1:
        version = data[0] if data else None
        raise RecordError(
            f"the stored record is not in a known format (format byte {version}, {len(data)} bytes; "
            f"expected format {FORMAT_V1}, {RECORD_SIZE} bytes)"
        )
    row = _LAYOUT.unpack(data)[1:]
    if not all(map(math.isfinite, row)):
        name, value = next((n, v) for n, v in zip(FEATURES, row, strict=True) if not math.isfinite(v))
        raise RecordError(f"{name} is not a finite number ({value})")
    return row


def decode_records(records: Sequence[bytes]) -> np.ndarray | None:
    """The features of many records as a float64 matrix (one row per record, FEATURES order), when
    every one is a record decode_record accepts; None otherwise (decode each to learn which and why)."""
    if not all(len(r) == RECORD_SIZE for r in records):
        return None
    fields = np.frombuffer(b"".join(records), dtype=_RECORDS)
    X = np.ascontiguousarray(fields["features"])
    if not (fields["format"] == FORMAT_V1).all() or not np.isfinite(X).all():
        return None
    return X


def as_transaction(row: Sequence[float]) -> dict[str, float]:
    """The row as the JSON object the HTTP contract validates."""
    return dict(zip(FEATURES, row, strict=True))
