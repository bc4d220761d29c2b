"""The compiled validator must accept and reject exactly what jsonschema (the reference) does."""

import json
import math
from importlib import resources

import jsonschema
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.openapi import build_openapi
from service.contract import _rows
from service.contract import schema as schema_module
from service.contract.schema import (
    ID_FIELD,
    SCHEMA_FILE,
    TransactionValidator,
    batch_document,
    compile_batch_of_flat_numbers,
    compile_flat_numbers,
    compile_flat_numbers_matrix,
    compile_flat_numbers_row,
    compile_flat_numbers_rows,
    id_document,
    load_schema_document,
    sample_transaction,
)
from service.core.features import FEATURE_BOUND, FEATURE_DESCRIPTIONS, FEATURES, FLOAT32_MAX
from tests.helpers import examples

pytestmark = pytest.mark.native  # the sanitizer run of `make test` repeats these

DOCUMENT = load_schema_document()
VALIDATOR = TransactionValidator(DOCUMENT)
REFERENCE = jsonschema.Draft202012Validator(DOCUMENT)

# Integers at the float32 bound, on both sides of it and of the schema's exact bound, both signs:
# JSON carries them whole; orjson reads one beyond 64 bits as its nearest double, jsonschema
# compares it exactly.
EDGE_INTEGERS = [
    sign * n
    for n in (
        int(FLOAT32_MAX) - 1,
        int(FLOAT32_MAX),
        int(FLOAT32_MAX) + 1,
        FEATURE_BOUND - 1,
        FEATURE_BOUND,
        FEATURE_BOUND + 1,
        int(math.nextafter(FLOAT32_MAX, math.inf)),
        2**128,
    )
    for sign in (1, -1)
]
edge_integers = st.sampled_from(EDGE_INTEGERS) | st.integers(int(FLOAT32_MAX) - 2**76, FEATURE_BOUND + 2**76).map(
    lambda n: n if n % 2 else -n
)

# JSON values as orjson decodes them (no NaN/Infinity: JSON has none).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
feature_values = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**64), 2**64)
    | edge_integers
    | st.sampled_from(
        [FLOAT32_MAX, -FLOAT32_MAX, math.nextafter(FLOAT32_MAX, math.inf), 0, -0.0, True, False, None, "1"]
    )
)


# transaction_id: the rule's edges (id_document, one place), strings of any characters, other types.
ID_RULE = id_document()
SHORTEST, LONGEST = ID_RULE["minLength"], ID_RULE["maxLength"]
id_values = (
    st.sampled_from(
        ["", "x" * SHORTEST, "tx-1", "x" * LONGEST, "x" * (LONGEST + 1), "é" * LONGEST, "é" * (LONGEST + 1)]
    )
    | st.text(max_size=LONGEST + 2)
    | st.text(st.characters(codec="ascii"), min_size=LONGEST - 1, max_size=LONGEST + 1)
    | json_values
)


@st.composite
def transactions(draw):
    body = {name: draw(feature_values) for name in FEATURES}
    for name in draw(st.lists(st.sampled_from(FEATURES), max_size=3)):
        body.pop(name, None)
    body.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3)))
    if draw(st.booleans()):
        body[ID_FIELD] = draw(id_values)
    return body


# No deadlines: the suite shares its cores with other work; speed is measured by `make perf`.
@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transactions())
def test_compiled_agrees_with_reference_on_transactions(body):
    assert VALIDATOR.is_valid(body) == REFERENCE.is_valid(body)


@settings(max_examples=examples(500), deadline=None)
@given(json_values)
def test_compiled_agrees_with_reference_on_any_json(value):
    assert VALIDATOR.is_valid(value) == REFERENCE.is_valid(value)


BATCH_DOCUMENT = batch_document(DOCUMENT, 3)
BATCH_VALIDATOR = TransactionValidator(BATCH_DOCUMENT)
BATCH_REFERENCE = jsonschema.Draft202012Validator(BATCH_DOCUMENT)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(transactions(), max_size=4) | json_values)
def test_batch_validator_agrees_with_reference(items):
    body = {"transactions": items} if isinstance(items, list) else items
    assert BATCH_VALIDATOR.is_valid(body) == BATCH_REFERENCE.is_valid(body)


# Mostly valid batches, so that the one-pass reader (service/contract/_rows.c) decides most of them itself:
# plain floats and ints, now and then one value that is not (a bool, a string, a huge integer, a
# value just past the float32 bound, a missing field).
plain_values = st.floats(-FLOAT32_MAX, FLOAT32_MAX) | st.integers(-(2**53), 2**53)
odd_values = (
    st.sampled_from(
        [True, False, None, "1", [], {}, 2**53 + 1, -(2**60), 2**70, math.nextafter(FLOAT32_MAX, math.inf), -1e300]
    )
    | edge_integers
)


@st.composite
def plain_batches(draw):
    items = [{name: draw(plain_values) for name in FEATURES} for _ in range(draw(st.integers(0, 4)))]
    for item in items:
        if draw(st.integers(0, 2)) == 0:
            item[ID_FIELD] = draw(st.text(max_size=8) | id_values)
    if items and draw(st.booleans()):
        item = draw(st.sampled_from(items))
        name = draw(st.sampled_from(FEATURES))
        if draw(st.booleans()):
            item[name] = draw(odd_values)
        else:
            del item[name]
    if items and draw(st.booleans()):
        items[draw(st.integers(0, len(items) - 1))] = draw(json_values)
    return {"transactions": items}


@settings(max_examples=examples(1500), suppress_health_check=[HealthCheck.too_slow])
@given(plain_batches())
def test_batch_reader_agrees_with_reference_and_reads_every_value(body):
    matrix = BATCH_VALIDATOR.matrix(body)
    assert (matrix is not None) == BATCH_REFERENCE.is_valid(body)
    if matrix is not None:
        expected = [[float(item[name]) for name in FEATURES] for item in body["transactions"]]
        assert matrix.shape == (len(expected), len(FEATURES))
        assert matrix.tolist() == expected


def route_accepts(validator: TransactionValidator, raw: bytes) -> bool:
    """What the routes decide from a body's bytes: the batch route reads them into the matrix when
    it can, else it decodes them with orjson and checks the matrix; the single route decodes and
    checks."""
    if validator.read_body is not None and validator.read_body(raw) is not None:
        return True
    body = orjson.loads(raw)
    return validator.matrix(body) is not None if validator.matrix is not None else validator.is_valid(body)


@settings(max_examples=examples(1000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(transactions(), min_size=1, max_size=3), st.sampled_from(FEATURES), edge_integers)
def test_the_routes_decide_a_body_as_jsonschema_decides_its_text(items, name, integer):
    """From the bytes, as the service reads them, against jsonschema on the same text read by
    Python's json (integers whole): for integers at and around the bounds above all."""
    items[0][name] = integer
    one = json.dumps(items[0]).encode()
    assert route_accepts(VALIDATOR, one) == REFERENCE.is_valid(json.loads(one)), one
    many = json.dumps({"transactions": items}).encode()
    assert route_accepts(BATCH_VALIDATOR, many) == BATCH_REFERENCE.is_valid(json.loads(many)), many


@pytest.mark.parametrize("integer", EDGE_INTEGERS)
def test_an_integer_at_the_bounds_is_decided_on_every_path_as_jsonschema_decides_it(integer):
    valid = abs(integer) <= FEATURE_BOUND
    body = {name: 0.5 for name in FEATURES} | {"V7": integer}
    one, many = json.dumps(body).encode(), json.dumps({"transactions": [body, body]}).encode()
    assert REFERENCE.is_valid(json.loads(one)) is valid
    assert route_accepts(VALIDATOR, one) is valid and route_accepts(BATCH_VALIDATOR, many) is valid
    assert VALIDATOR.is_valid(body) is valid and (BATCH_VALIDATOR.matrix({"transactions": [body]}) is not None) is valid
    assert ROW_CHECK(tuple(float(body[name]) for name in FEATURES)) is valid  # a stored record holds its double


def test_the_exact_bound_is_the_last_number_whose_double_is_float32s_largest():
    assert float(np.finfo(np.float32).max) == FLOAT32_MAX
    assert float(FEATURE_BOUND) == FLOAT32_MAX and float(FEATURE_BOUND + 1) > FLOAT32_MAX
    assert orjson.loads(str(FEATURE_BOUND)) == FLOAT32_MAX and orjson.loads(str(FEATURE_BOUND + 1)) > FLOAT32_MAX
    assert {DOCUMENT["properties"][name]["maximum"] for name in FEATURES} == {FEATURE_BOUND}
    assert {DOCUMENT["properties"][name]["minimum"] for name in FEATURES} == {-FEATURE_BOUND}


# Every double a stored record can hold (the by-id routes' rows), the edges most often.
record_values = st.floats(width=64) | st.sampled_from(
    [
        FLOAT32_MAX,
        -FLOAT32_MAX,
        math.nextafter(FLOAT32_MAX, math.inf),
        math.nextafter(-FLOAT32_MAX, -math.inf),
        math.nextafter(FLOAT32_MAX, 0.0),
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        math.inf,
        -math.inf,
        math.nan,
    ]
)
ROW_CHECK = compile_flat_numbers_row(DOCUMENT, FEATURES)
MATRIX_CHECK = compile_flat_numbers_matrix(DOCUMENT, FEATURES)


@settings(max_examples=examples(3000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_values, min_size=len(FEATURES), max_size=len(FEATURES)))
def test_the_row_check_decides_as_the_contracts_validator(values):
    row = tuple(values)
    body = dict(zip(FEATURES, row, strict=True))
    assert ROW_CHECK(row) == VALIDATOR.is_valid(body)
    if all(map(math.isfinite, row)):  # the reference, for what JSON can carry
        assert ROW_CHECK(row) == REFERENCE.is_valid(body)
    assert MATRIX_CHECK(np.array([row])) == ROW_CHECK(row)


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(record_values, min_size=len(FEATURES), max_size=len(FEATURES)), min_size=1, max_size=6))
def test_the_matrix_check_is_every_rows_check(rows):
    assert MATRIX_CHECK(np.array(rows, dtype=np.float64)) == all(ROW_CHECK(tuple(r)) for r in rows)


def test_the_row_check_on_each_feature_at_and_past_its_bounds():
    for i in range(len(FEATURES)):
        for value, valid in ((FLOAT32_MAX, True), (-FLOAT32_MAX, True), (math.nextafter(FLOAT32_MAX, math.inf), False)):
            for sign in (1, -1):
                row = tuple(sign * value if j == i else 0.5 for j in range(len(FEATURES)))
                assert ROW_CHECK(row) is valid
                assert VALIDATOR.is_valid(dict(zip(FEATURES, row, strict=True))) is valid


def test_the_row_check_reads_a_schema_with_other_bounds_and_order():
    properties = dict(reversed(DOCUMENT["properties"].items()))
    properties["Amount"] = {**properties["Amount"], "minimum": 0, "maximum": 10}
    document = {**DOCUMENT, "required": [name for name in properties if name in FEATURES], "properties": properties}
    check, reference = compile_flat_numbers_row(document, FEATURES), jsonschema.Draft202012Validator(document)
    matrix = compile_flat_numbers_matrix(document, FEATURES)
    for amount in (-1.0, 0.0, 10.0, 10.5):
        row = tuple(amount if name == "Amount" else 1.0 for name in FEATURES)
        assert check(row) == reference.is_valid(dict(zip(FEATURES, row, strict=True))) == (0.0 <= amount <= 10.0)
        assert matrix(np.array([row, [1.0] * len(FEATURES)])) == check(row)
    for compile_check in (compile_flat_numbers_row, compile_flat_numbers_matrix):
        assert compile_check(document, FEATURES[:-1]) is None  # a required feature the row lacks
        assert compile_check(BATCH_DOCUMENT, FEATURES) is None  # not the flat shape


def test_the_transaction_schema_gets_the_specialised_check_and_others_do_not():
    assert compile_flat_numbers(DOCUMENT) is not None and compile_flat_numbers_rows(DOCUMENT) is not None
    assert compile_flat_numbers(BATCH_DOCUMENT) is None
    assert BATCH_VALIDATOR.matrix is not None and VALIDATOR.matrix is None
    for changed in ({"additionalProperties": False}, {"minProperties": 2}, {"required": []}):
        assert compile_batch_of_flat_numbers(BATCH_DOCUMENT | changed) is None
    for changed in ({"additionalProperties": False}, {"required": ["V1"]}, {"minProperties": 2}):
        assert compile_flat_numbers(DOCUMENT | changed) is None
    one_string = {**DOCUMENT["properties"], "V1": {"type": "string"}}
    assert compile_flat_numbers(DOCUMENT | {"properties": one_string}) is None
    for changed in ({"pattern": "^t"}, {"type": ["string", "null"]}, {"maxLength": 2.5}, {"minLength": -1}):
        other_id = {**DOCUMENT["properties"], ID_FIELD: DOCUMENT["properties"][ID_FIELD] | changed}
        assert compile_flat_numbers(DOCUMENT | {"properties": other_id}) is None, changed
    unbounded = {**DOCUMENT["properties"], ID_FIELD: {"type": "string"}}
    assert compile_flat_numbers(DOCUMENT | {"properties": unbounded}) is not None


def test_specialised_check_follows_jsonschema_on_python_number_types():
    from decimal import Decimal
    from fractions import Fraction

    for value in (Decimal("1.5"), Fraction(1, 3), 10**400, -0.0, True, 1 + 0j, "1"):
        body = {name: 0.5 for name in FEATURES} | {"V2": value}
        try:
            expected = REFERENCE.is_valid(body)
        except TypeError:  # jsonschema cannot order a complex number either
            continue
        assert VALIDATOR.is_valid(body) == expected, value


def test_sample_is_valid():
    body = {name: 0.5 for name in FEATURES}
    assert VALIDATOR.is_valid(body) and VALIDATOR.violations(body) == []


@pytest.mark.parametrize(
    "value, message",
    [
        ("1", "must be a number, got string"),
        (True, "must be a number, got boolean"),
        (None, "must be a number, got null"),
        ([], "must be a number, got array"),
        (1e39, "must be a finite number within the float32 range"),
    ],
)
def test_violations_name_field_and_reason(value, message):
    body = {name: 0.5 for name in FEATURES} | {"V9": value}
    assert not VALIDATOR.is_valid(body)
    [violation] = VALIDATOR.violations(body)
    assert violation.field == "V9"
    assert violation.message.startswith(message)


def test_missing_fields_listed_once_each_in_feature_order():
    violations = VALIDATOR.violations({"V5": 1.0})
    assert [v.field for v in violations] == [f for f in FEATURES if f != "V5"]
    assert {v.message for v in violations} == {"is required"}


def test_whole_body_violation_has_no_field():
    [violation] = VALIDATOR.violations([1, 2])
    assert violation.field is None and "object" in violation.message


def test_schema_is_the_contract():
    assert DOCUMENT["required"] == list(FEATURES)
    jsonschema.Draft202012Validator.check_schema(DOCUMENT)


def test_the_schema_file_does_not_list_the_features_again():
    """properties and required come from service/core/features.py alone: a second list could drift."""
    template = json.loads(resources.files("service.contract.schemas").joinpath(SCHEMA_FILE).read_text())
    assert not {"properties", "required"} & set(template)
    assert list(DOCUMENT["properties"]) == [*DOCUMENT["required"], ID_FIELD] and DOCUMENT["required"] == list(FEATURES)
    assert compile_flat_numbers(DOCUMENT) is not None  # the hot path keeps its specialised check


def test_the_sample_transaction_has_exactly_the_features():
    assert list(sample_transaction()) == list(FEATURES)


def test_a_feature_added_to_the_table_reaches_every_validator_and_openapi(monkeypatch):
    table = {**FEATURE_DESCRIPTIONS, "MerchantRisk": "Risk score of the merchant."}
    monkeypatch.setattr(schema_module, "FEATURE_DESCRIPTIONS", table)
    document = load_schema_document()
    assert document["required"][-1] == "MerchantRisk" and len(document["properties"]) == len(FEATURES) + 2
    assert document["properties"]["MerchantRisk"]["description"] == "Risk score of the merchant."
    one, many = TransactionValidator(document), TransactionValidator(batch_document(document, 3))
    assert compile_flat_numbers(document) is not None
    old = sample_transaction()
    new = {**old, "MerchantRisk": 0.5}
    assert one.is_valid(new) and not one.is_valid(old)
    assert [v.describe() for v in one.violations(old)] == ["MerchantRisk is required"]
    assert many.is_valid({"transactions": [new, new]}) and not many.is_valid({"transactions": [new, old]})
    assert (
        build_openapi(document, 3, "test", deadline_ms=150)["components"]["schemas"]["Transaction"]["required"][-1]
        == "MerchantRisk"
    )


def test_the_row_filler_holds_a_row_while_a_key_comparison_runs_code():
    """Looking a feature up in a row can run Python code (a key of the same hash compares equal or
    not); code that empties the batch must not free the row under the look-up. The filler then
    leaves the changed batch undecided, to the per-item validator."""
    items: list = []

    class SameHashAsTheFirstFeature:
        def __hash__(self) -> int:
            return hash(FEATURES[0])

        def __eq__(self, other: object) -> bool:
            items.clear()
            return False

    items.append({SameHashAsTheFirstFeature(): 0, **dict.fromkeys(FEATURES, 0.0)})
    k = len(FEATURES)
    bounds = np.full(k, -np.inf), np.full(k, np.inf)
    assert _rows.fill(items, tuple(FEATURES), *bounds, np.empty((1, k)), ()) == _rows.UNDECIDED


def test_the_transaction_id_is_the_by_id_routes_id():
    """One rule for a transaction id: the v1 transaction's optional property is id_document's."""
    declared = DOCUMENT["properties"][ID_FIELD]
    assert {k: v for k, v in declared.items() if k != "description"} == {
        k: v for k, v in id_document().items() if k != "description"
    }
    assert ID_FIELD not in DOCUMENT["required"]


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "transaction_id must be a string, got null"),
        (7, "transaction_id must be a string, got integer"),
        ("", f"transaction_id must be a string of 1 to {LONGEST} characters, got 0"),
        ("x" * (LONGEST + 1), f"transaction_id must be a string of 1 to {LONGEST} characters, got {LONGEST + 1}"),
    ],
)
def test_a_bad_transaction_id_is_named(value, message):
    body = sample_transaction() | {ID_FIELD: value}
    assert not VALIDATOR.is_valid(body) and not REFERENCE.is_valid(body)
    assert [v.describe() for v in VALIDATOR.violations(body)] == [message]


# Batch bodies as bytes, the id written every way JSON allows: plain, its key or value escaped, not
# ASCII, repeated, null, a number, too long; and the reader's ids against the decoded items'.
ESCAPES = {"_": "\\u005f", "t": "\\u0074", "x": "\\u0078"}


@st.composite
def id_members(draw):
    key = draw(st.sampled_from(['"transaction_id"', '"transaction\\u005fid"', '"\\u0074ransaction_id"']))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        value = json.dumps(draw(id_values))
    elif kind == 1:  # a plain ASCII string, often at the rule's edges
        value = '"' + "x" * draw(st.sampled_from([0, 1, 2, LONGEST - 1, LONGEST, LONGEST + 1])) + '"'
    elif kind == 2:  # escaped characters: the length is the decoded text's
        text = "x" * draw(st.integers(LONGEST - 2, LONGEST + 1))
        value = '"' + "".join(ESCAPES.get(c, c) if draw(st.integers(0, 9)) == 0 else c for c in text) + '"'
    elif kind == 3:
        value = json.dumps(draw(st.text(max_size=LONGEST + 1)), ensure_ascii=draw(st.booleans()))
    elif kind == 4:
        value = draw(st.sampled_from(["null", "7", "true", "[]", '{"a":1}', '"a\\"b"', '"\\ud83d\\ude00"']))
    else:
        value = '"tx-' + str(draw(st.integers(0, 99))) + '"'
    return key + ":" + value


@st.composite
def id_batches(draw):
    items = []
    for _ in range(draw(st.integers(1, 3))):
        members = [f'"{name}":{draw(plain_values)!r}' for name in FEATURES]
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):  # two: a repeated key
            members.insert(draw(st.integers(0, len(members))), draw(id_members()))
        items.append("{" + ",".join(members) + "}")
    return ('{"transactions":[' + ",".join(items) + "]}").encode()


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(id_batches())
def test_the_batch_reader_decides_transaction_ids_as_jsonschema_and_reads_them_as_orjson(raw):
    decoded = json.loads(raw)  # Python's reading, for jsonschema (a repeated key: the last, as orjson)
    valid = BATCH_REFERENCE.is_valid(decoded)
    assert route_accepts(BATCH_VALIDATOR, raw) == valid, raw
    read = BATCH_VALIDATOR.read_body(raw)
    if read is not None:
        items = orjson.loads(raw)["transactions"]
        ids = [item.get(ID_FIELD) for item in items]
        assert read.strings == ({ID_FIELD: ids} if any(i is not None for i in ids) else {}), raw
        assert read.matrix.tolist() == [[float(item[name]) for name in FEATURES] for item in items]
    for item in decoded["transactions"]:  # the single route, on each item's text
        one = json.dumps(item).encode()
        assert route_accepts(VALIDATOR, one) == REFERENCE.is_valid(item), one


def test_the_reader_reads_plain_ids_and_leaves_the_rest_to_the_decoded_path():
    def body(*members: str) -> bytes:
        item = json.dumps({name: 0.5 for name in FEATURES})[:-1]
        return ('{"transactions":[' + ",".join(item + m + "}" for m in members) + "]}").encode()

    read = BATCH_VALIDATOR.read_body(body(',"transaction_id":"a"', "", ',"transaction_id":"c"'))
    assert read is not None and read.strings == {ID_FIELD: ["a", None, "c"]}
    assert BATCH_VALIDATOR.read_body(body("", "")).strings == {}
    for undecided in (
        ',"transaction\\u005fid":"a"',  # an escaped key: decoded, so never taken for an unknown key
        ',"transaction_id":"\\u0061"',
        ',"transaction_id":"é"',
        ',"transaction_id":"a","transaction_id":"b"',
        ',"transaction_id":null',
        ',"transaction_id":""',
        ',"transaction_id":"' + "x" * (LONGEST + 1) + '"',
    ):
        raw = body(undecided)
        assert BATCH_VALIDATOR.read_body(raw) is None, raw
        assert route_accepts(BATCH_VALIDATOR, raw) == BATCH_REFERENCE.is_valid(json.loads(raw)), raw
    longest = body(',"transaction_id":"' + "x" * LONGEST + '"')
    assert BATCH_VALIDATOR.read_body(longest).strings == {ID_FIELD: ["x" * LONGEST]}


def test_the_row_filler_decides_ids_and_leaves_a_str_subclass_undecided():
    class Text(str):
        pass

    rows = compile_flat_numbers_rows(DOCUMENT)
    base = {name: 0.5 for name in FEATURES}
    assert rows([base | {ID_FIELD: "a"}, base]) is not None
    for bad in (None, 7, "", "x" * (LONGEST + 1), ["a"]):
        assert rows([base, base | {ID_FIELD: bad}]) is None
    assert rows([base | {ID_FIELD: Text("a")}]) is not None  # decided by the per-item check, as jsonschema
    assert REFERENCE.is_valid(base | {ID_FIELD: Text("a")})
