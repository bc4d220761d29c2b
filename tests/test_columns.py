"""The C pass (service/offline/_columns.c) done in shares of the columns, as the workers do it for a
one-row-group Parquet file, against the one pass over all 30: the same float32 rows bit for bit,
the same bit sets once OR-ed, and the same reasons once joined share after share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from service.core.features import FEATURE_BOUND, FEATURES, FLOAT32_MAX, N_FEATURES
from service.offline import _columns
from service.offline.tables import UNBOUNDED, Features

pytestmark = pytest.mark.native  # the sanitizer run of `make test` repeats these


@pytest.fixture(scope="module")
def columns() -> list[np.ndarray]:
    """5,000 rows of every kind of value the service refuses or flags, scattered over all features."""
    rng = np.random.default_rng(12)
    X = rng.normal(scale=3.0, size=(5000, N_FEATURES))
    odd = [
        np.nan,
        np.inf,
        -np.inf,
        1e39,
        -1e39,
        FLOAT32_MAX,
        -FLOAT32_MAX,
        np.nextafter(FLOAT32_MAX, np.inf),
        0.0,
        -0.0,
    ]
    cells = rng.integers(0, X.size, 1500)
    X.flat[cells] = rng.choice(odd, len(cells))
    X[7, :] = np.nan  # a row refused on every feature
    return [np.ascontiguousarray(X[:, j]) for j in range(N_FEATURES)]


def bounds() -> tuple[np.ndarray, np.ndarray]:
    return np.full(N_FEATURES, -4.0), np.linspace(2.0, 6.0, N_FEATURES)


def one_pass(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(columns[0])
    rows, refused, outside = np.empty((n, N_FEATURES), np.float32), np.empty(n, np.uint32), np.empty(n, np.uint32)
    _columns.rows(tuple(columns), *bounds(), rows, refused, outside)
    return rows, refused, outside


@pytest.mark.parametrize("shares", [2, 3, 30])
def test_shares_of_the_columns_make_the_one_pass_rows_and_bit_sets(columns, shares):
    rows, refused, outside = one_pass(columns)
    n = len(columns[0])
    split = np.full((n, N_FEATURES), np.float32(12345.0))  # every place must be written over
    refused_parts, outside_parts = [], []
    for share in np.array_split(np.random.default_rng(shares).permutation(N_FEATURES), shares):
        bad, far = np.empty(n, np.uint32), np.empty(n, np.uint32)
        positions = tuple(int(j) for j in share)
        _columns.rows(tuple(columns[j] for j in positions), *bounds(), split, bad, far, positions)
        refused_parts.append(bad)
        outside_parts.append(far)
    assert np.array_equal(split.view(np.uint32), rows.view(np.uint32))
    assert np.array_equal(np.bitwise_or.reduce(refused_parts), refused)
    assert np.array_equal(np.bitwise_or.reduce(outside_parts), outside)
    assert refused.any() and outside.any() and (refused == 0).any()


def test_shares_read_from_a_batch_give_the_one_pass_reasons(columns):
    """Nulls too: a missing value is refused as missing, whichever share reads it."""
    arrays = [pa.array(column, mask=np.isnan(column) & (np.arange(len(column)) % 2 == 0)) for column in columns]
    batch = pa.RecordBatch.from_arrays(arrays, names=list(FEATURES))
    whole = Features.read(batch, *bounds())
    reasons = whole.reasons(batch)
    assert any("is missing" in reason for reason in reasons.values())
    rows = np.zeros((batch.num_rows, N_FEATURES), np.float32)
    parts = [
        Features.read(batch, *bounds(), rows, tuple(str(name) for name in share))
        for share in np.array_split(np.array(FEATURES), 2)
    ]
    assert np.array_equal(rows.view(np.uint32), whole.rows.view(np.uint32))
    assert np.array_equal(parts[0].refused | parts[1].refused, whole.refused)
    assert np.array_equal(parts[0].outside | parts[1].outside, whole.outside)
    first, second = (part.reasons(batch) for part in parts)
    joined = {
        i: "; ".join(part[i] for part in (first, second) if i in part) for i in sorted(first.keys() | second.keys())
    }
    assert joined == reasons


@pytest.mark.parametrize(
    ("positions", "message"),
    [((0, 30), "outside the row"), ((0,), "a position each"), ((0, -1), "outside the row")],
)
def test_positions_outside_the_row_are_refused(columns, positions, message):
    n = len(columns[0])
    rows, bad, far = np.empty((n, N_FEATURES), np.float32), np.empty(n, np.uint32), np.empty(n, np.uint32)
    with pytest.raises(ValueError, match=message):
        _columns.rows((columns[0], columns[1]), *bounds(), rows, bad, far, positions)


def test_a_table_refuses_numbers_written_as_integers_exactly_where_the_json_schema_does():
    """A table's text is read as the nearest double (Arrow's cast), as orjson reads a body: the
    integers around float32's largest are refused exactly beyond the schema's bound."""
    edge = [int(FLOAT32_MAX), int(FLOAT32_MAX) + 1, FEATURE_BOUND, FEATURE_BOUND + 1]
    integers = [sign * n for n in edge for sign in (1, -1)]
    arrays = [
        pa.array([str(n) for n in integers]) if name == "V7" else pa.array([0.5] * len(integers)) for name in FEATURES
    ]
    features = Features.read(pa.RecordBatch.from_arrays(arrays, names=list(FEATURES)), *UNBOUNDED)
    assert (features.refused != 0).tolist() == [abs(n) > FEATURE_BOUND for n in integers]
