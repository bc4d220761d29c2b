"""The transaction JSON Schema: one document, a compiled validator for the hot path and
`jsonschema` as the reference that explains what is wrong."""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from operator import gt, itemgetter, lt
from typing import Any, NamedTuple

import fastjsonschema
import jsonschema
import numpy as np

from service.contract import _rows
from service.core.features import FEATURE_BOUND, FEATURE_DESCRIPTIONS, FEATURES, FLOAT32_MAX

SCHEMA_FILE = "transaction.schema.json"
EXAMPLE_FILE = "transaction.example.json"  # the README's curl sends it; /openapi.json embeds it
BATCH_FIELD = "transactions"
ID_FIELD = "transaction_id"
IDS_FIELD = "transaction_ids"


def load_schema_document() -> dict[str, Any]:
    """The transaction schema: the document-level keywords of transaction.schema.json, one
    required, float32-bounded number per feature of service/core/features.py, in column order, and
    the optional `transaction_id` under the by-id routes' rules for an id (id_document). Built
    here, never written down twice, so that a feature is added in one place. The bounds are
    ±FEATURE_BOUND, the exact numbers whose nearest double is ±FLOAT32_MAX."""
    template = json.loads(resources.files("service.contract.schemas").joinpath(SCHEMA_FILE).read_text())
    template.pop("$comment", None)
    number = {"type": "number", "minimum": -FEATURE_BOUND, "maximum": FEATURE_BOUND}
    features = {name: {**number, "description": text} for name, text in FEATURE_DESCRIPTIONS.items()}
    transaction_id = {**id_document(), "description": TRANSACTION_ID_DESCRIPTION}
    return {**template, "required": list(features), "properties": {**features, ID_FIELD: transaction_id}}


def sample_transaction() -> dict[str, float]:
    """The data set's first row: a valid transaction, for examples and tests."""
    return json.loads(resources.files("service.contract.schemas").joinpath(EXAMPLE_FILE).read_text())


def embeddable(document: dict[str, Any]) -> dict[str, Any]:
    """The schema without its document-level keywords, to be nested in another document."""
    return {k: v for k, v in document.items() if k not in ("$schema", "$id")}


def batch_document(transaction: dict[str, Any], batch_max: int) -> dict[str, Any]:
    """The batch body's schema, built from the transaction schema (one source, no copy)."""
    return {
        "$schema": transaction["$schema"],
        "title": "TransactionBatch",
        "type": "object",
        "required": [BATCH_FIELD],
        "properties": {
            BATCH_FIELD: {"type": "array", "minItems": 1, "maxItems": batch_max, "items": embeddable(transaction)},
        },
    }


def id_document() -> dict[str, Any]:
    """A transaction id: the rule for it, in one place (the by-id routes' ids, a v1 transaction's
    optional transaction_id, the feature writer's longest id)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": 256,
        "description": "the id the feature pipeline stored the transaction's features under",
    }


TRANSACTION_ID_DESCRIPTION = (
    "optional: the caller's id for the transaction, under the by-id routes' rules for an id; echoed in "
    "the transaction's answer and recorded with it in the prediction log"
)


def by_id_document() -> dict[str, Any]:
    return {
        "$schema": load_schema_document()["$schema"],
        "title": "TransactionId",
        "type": "object",
        "required": [ID_FIELD],
        "properties": {ID_FIELD: id_document()},
    }


def by_id_batch_document(batch_max: int) -> dict[str, Any]:
    return {
        "$schema": load_schema_document()["$schema"],
        "title": "TransactionIdBatch",
        "type": "object",
        "required": [IDS_FIELD],
        "properties": {IDS_FIELD: {"type": "array", "minItems": 1, "maxItems": batch_max, "items": id_document()}},
    }


@dataclass(frozen=True)
class Violation:
    """What is wrong with one field of a request: `field` is None when the whole body (or batch
    item) is wrong; `index` is the batch item's position."""

    field: str | None
    message: str
    index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.index is not None:
            found["index"] = self.index
        return found

    def describe(self) -> str:
        if self.index is not None and self.field == IDS_FIELD:  # an id of a by-id batch: the item itself
            return f"{IDS_FIELD}[{self.index}] {self.message}"
        where = f"{BATCH_FIELD}[{self.index}]" if self.index is not None else ""
        if self.field:
            where = f"{where}.{self.field}" if where else self.field
        return f"{where or 'the body'} {self.message}"


def _kind(instance: Any) -> str:
    return {
        bool: "boolean",
        str: "string",
        dict: "object",
        list: "array",
        type(None): "null",
        int: "integer",
        float: "number",
    }.get(type(instance), type(instance).__name__)


def _located(path: list[Any]) -> tuple[str | None, int | None]:
    index = next((p for p in path if isinstance(p, int)), None)
    names = [p for p in path if isinstance(p, str)]
    field = names[-1] if names and not (index is not None and names[-1] == BATCH_FIELD) else None
    return field, index


def _describe(error: jsonschema.ValidationError) -> list[Violation]:
    field, index = _located(list(error.absolute_path))
    if error.validator == "required":
        # jsonschema reports each missing property in its own error; name them all, once each.
        return [Violation(p, "is required", index) for p in error.validator_value if p not in error.instance]
    if error.validator == "type":
        expected = error.validator_value
        article = "an" if str(expected)[0] in "aeiou" else "a"
        return [Violation(field, f"must be {article} {expected}, got {_kind(error.instance)}", index)]
    if error.validator in ("minimum", "maximum"):
        return [Violation(field, f"must be a finite number within the float32 range (|x| <= {FLOAT32_MAX})", index)]
    if error.validator in ("minLength", "maxLength"):
        low, high = error.schema.get("minLength", 0), error.schema.get("maxLength")
        length = f"{low} to {high}" if high is not None else f"at least {low}"
        return [Violation(field, f"must be a string of {length} characters, got {len(error.instance)}", index)]
    return [Violation(field, error.message, index)]


_FLAT_DOCUMENT_KEYS = {
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "required",
    "properties",
    "additionalProperties",
}
_NUMBER_KEYS = {"type", "minimum", "maximum", "description"}
_STRING_KEYS = {"type", "minLength", "maxLength", "description"}
_ABSENT = object()


def _bounds(properties: dict[str, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Each property's minimum and maximum as the document states them (unbounded: ∓inf)."""
    specs = properties.values()
    return tuple(s.get("minimum", -math.inf) for s in specs), tuple(s.get("maximum", math.inf) for s in specs)


def _double(bound: Any, toward: float) -> float:
    """The double nearest `bound` on the side of `toward` (or `bound` itself, if a double holds it)."""
    try:
        x = float(bound)
    except OverflowError:
        return math.inf if bound > 0 else -math.inf
    return math.nextafter(x, toward) if (x > bound if toward < 0 else x < bound) else x


def _double_bounds(properties: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The bounds for the readers that compare doubles: the smallest double at or above each
    minimum, the largest at or below each maximum, so that a double (or an integer a double holds)
    is within them exactly when it is within the document's bounds, which may be numbers no double
    holds (the transaction schema's are: service/core/features.py, FEATURE_BOUND)."""
    low, high = _bounds(properties)
    return tuple(_double(b, math.inf) for b in low), tuple(_double(b, -math.inf) for b in high)


def _object_properties(document: dict[str, Any]) -> dict[str, Any] | None:
    """The properties of an object document whose other keywords change nothing the specialised
    checks below decide; None for any other document."""
    properties = document.get("properties")
    if (
        set(document) - _FLAT_DOCUMENT_KEYS
        or document.get("type") != "object"
        or document.get("additionalProperties", True) is not True
        or not isinstance(properties, dict)
    ):
        return None
    return properties


def _required_properties(document: dict[str, Any]) -> dict[str, Any] | None:
    """_object_properties of a document whose properties are all required; None for any other."""
    properties = _object_properties(document)
    return properties if properties is not None and list(document.get("required", ())) == list(properties) else None


def _length(spec: dict[str, Any], keyword: str, default: int) -> int | None:
    found = spec.get(keyword, default)
    return found if type(found) is int and found >= 0 else None


def _flat_numbers(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[int, int]]] | None:
    """For an object document whose required properties are bounded numbers (at least one) and
    whose other properties are strings bounded in length only: the numbers' specs, in the order of
    `required` and of the properties, and each optional string's (minLength, maxLength). None for
    any other document."""
    properties = _object_properties(document)
    if not properties:
        return None
    required = list(document.get("required", ()))
    numbers = {name: spec for name, spec in properties.items() if name in required}
    if not numbers or list(numbers) != required:
        return None
    for spec in numbers.values():
        if not isinstance(spec, dict) or set(spec) - _NUMBER_KEYS or spec.get("type") != "number":
            return None
    strings = {}
    for name, spec in properties.items():
        if name in numbers:
            continue
        if not isinstance(spec, dict) or set(spec) - _STRING_KEYS or spec.get("type") != "string":
            return None
        lengths = _length(spec, "minLength", 0), _length(spec, "maxLength", sys.maxsize)
        if None in lengths:
            return None
        strings[name] = lengths
    return numbers, strings


def compile_flat_numbers(document: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A specialised check for a document of exactly this shape: an object whose required
    properties are bounded numbers and whose optional ones are strings bounded in length, extra
    properties allowed (the transaction schema: the features and transaction_id). Several times
    faster than fastjsonschema's general code for it (perf/README.md); None for any other document, which then
    gets fastjsonschema. It follows jsonschema's semantics: a bool is not a number, a bound
    fails only on `<` / `>` (so NaN, which JSON cannot carry, passes, as it does in jsonschema), a
    string is any str (a subclass too) and its length is len()'s, in code points."""
    found = _flat_numbers(document)
    if found is None:
        return None
    properties, strings = found
    names = tuple(properties)
    count = len(names)
    optional = tuple(strings.items())
    bounds = tuple(zip(*_double_bounds(properties), strict=True))
    exact_bounds = tuple(zip(*_bounds(properties), strict=True))
    values_of = itemgetter(*names) if len(names) > 1 else (lambda d: (d[names[0]],))

    def exactly_valid(values: Sequence[Any]) -> bool:
        for value, (low, high) in zip(values, exact_bounds, strict=True):
            if type(value) is bool or not isinstance(value, numbers.Number) or value < low or value > high:
                return False
        return True

    def strings_valid(instance: dict[Any, Any]) -> bool:
        for name, (shortest, longest) in optional:
            value = instance.get(name, _ABSENT)
            if value is not _ABSENT and not (isinstance(value, str) and shortest <= len(value) <= longest):
                return False
        return True

    def is_valid(instance: Any) -> bool:
        if not isinstance(instance, dict):
            return False
        try:
            values = values_of(instance)
        except KeyError:
            return False
        for value, (low, high) in zip(values, bounds, strict=True):
            kind = type(value)
            # float and int are the two types JSON numbers decode to
            if kind is not float and kind is not int and (kind is bool or not isinstance(value, numbers.Number)):
                return False
            if value < low or value > high:
                # The double bounds decide a float; another number (an int beyond 2**53, a
                # Decimal) outside them may still be within the exact bounds, which decide then.
                if kind is float or not exactly_valid(values):
                    return False
                break
        # Holding the required keys and no more, it holds no optional one: the common case costs a len().
        return len(instance) == count or strings_valid(instance)

    return is_valid


def _bounds_by_position(
    document: dict[str, Any], names: Sequence[str]
) -> tuple[list[int], tuple[float, ...], tuple[float, ...]] | None:
    """For values in `names` order: each required property's position and its bounds. None unless
    compile_flat_numbers handles the document and every property it requires is among `names`."""
    found = _flat_numbers(document)
    if found is None or not set(found[0]) <= set(names):
        return None
    properties = found[0]
    return [names.index(name) for name in properties], *_double_bounds(properties)


def compile_flat_numbers_row(
    document: dict[str, Any], names: Sequence[str]
) -> Callable[[Sequence[float]], bool] | None:
    """For a row of floats in `names` order (a stored record's values): whether the object of those
    names and values is valid, decided as compile_flat_numbers decides it (the same bounds, the
    same `<` / `>` comparisons) without building the object. A float is always a number, so the
    bounds are the whole check. None where _bounds_by_position is."""
    found = _bounds_by_position(document, names)
    if found is None:
        return None
    positions, low, high = found
    values_of = itemgetter(*positions) if len(positions) > 1 else (lambda row: (row[positions[0]],))
    if positions == list(range(len(names))):
        values_of = tuple  # the row itself, in the document's order

    def is_valid(row: Sequence[float]) -> bool:
        values = values_of(row)
        return not any(map(lt, values, low)) and not any(map(gt, values, high))

    return is_valid


def compile_flat_numbers_matrix(document: dict[str, Any], names: Sequence[str]) -> Callable[[np.ndarray], bool] | None:
    """compile_flat_numbers_row for a float64 matrix of such rows at once: whether every row is
    valid (the same comparisons, vectorised). None where _bounds_by_position is."""
    found = _bounds_by_position(document, names)
    if found is None:
        return None
    positions, low_values, high_values = found
    columns = np.array(positions)
    low, high = np.array(low_values, dtype=np.float64), np.array(high_values, dtype=np.float64)

    def all_valid(X: np.ndarray) -> bool:
        values = X[:, columns]
        return not bool((values < low).any() or (values > high).any())

    return all_valid


_ARRAY_KEYS = {"type", "minItems", "maxItems", "items", "description"}


def compile_flat_numbers_rows(document: dict[str, Any]) -> Callable[[list[Any]], np.ndarray | None] | None:
    """For a list of instances of a flat-numbers document (see compile_flat_numbers): the float64
    matrix of their required numbers, one row per instance in the document's property order, when
    every instance is valid (its optional strings too); None when one is not. None for any other
    document.

    service/contract/_rows.c reads and checks plain floats and small ints, and the optional strings,
    in one pass; whatever it cannot decide exactly (a bool, a string for a number, an integer beyond
    2**53, a str subclass…) is decided by the per-item check."""
    is_valid = compile_flat_numbers(document)
    if is_valid is None:
        return None
    properties, strings = _flat_numbers(document)
    names = tuple(properties)
    optional = tuple((name, *lengths) for name, lengths in strings.items())
    low, high = (np.array(bounds, dtype=np.float64) for bounds in _double_bounds(properties))
    values_of = itemgetter(*names) if len(names) > 1 else (lambda d: (d[names[0]],))

    def rows(items: list[Any]) -> np.ndarray | None:
        out = np.empty((len(items), len(names)), dtype=np.float64)
        verdict = _rows.fill(items, names, low, high, out, optional)
        if verdict == _rows.VALID:
            return out
        if verdict == _rows.INVALID or not all(map(is_valid, items)):
            return None
        return np.array([[float(v) for v in values_of(item)] for item in items], dtype=np.float64).reshape(out.shape)

    return rows


def _batch_of_flat_numbers(document: dict[str, Any]) -> tuple[str, dict[str, Any], int, int | float] | None:
    """For a batch document (an object with one required array of flat-numbers items, as
    batch_document builds): the array's field, its items' document and its bounds on length. None
    for any other document."""
    properties = _required_properties(document)
    if properties is None or len(properties) != 1:
        return None
    (field, spec), *_ = properties.items()
    if not isinstance(spec, dict) or set(spec) - _ARRAY_KEYS or spec.get("type") != "array":
        return None
    items = spec.get("items")
    min_items, max_items = spec.get("minItems", 0), spec.get("maxItems", math.inf)
    if (
        not isinstance(items, dict)
        or compile_flat_numbers(items) is None
        or not isinstance(min_items, int)
        or not isinstance(max_items, int | float)
    ):
        return None
    return field, items, min_items, max_items


def compile_batch_of_flat_numbers(document: dict[str, Any]) -> Callable[[Any], np.ndarray | None] | None:
    """For a batch document (see _batch_of_flat_numbers): the items' matrix when the decoded body
    is valid, else None. None for any other document."""
    found = _batch_of_flat_numbers(document)
    rows = compile_flat_numbers_rows(found[1]) if found is not None else None
    if found is None or rows is None:
        return None
    field, _, min_items, max_items = found

    def matrix(instance: Any) -> np.ndarray | None:
        if not isinstance(instance, dict) or field not in instance:
            return None
        found = instance[field]
        if not isinstance(found, list) or not min_items <= len(found) <= max_items:
            return None
        return rows(found)

    return matrix


class BodyRows(NamedTuple):
    """A batch body read from its bytes: the items' matrix, and each optional string property that
    some item carries, one value per item (None where an item has none)."""

    matrix: np.ndarray
    strings: dict[str, list[str | None]]


def compile_batch_body_reader(document: dict[str, Any]) -> Callable[[bytes], BodyRows | None] | None:
    """For a batch document with a bounded array (see _batch_of_flat_numbers): reads a request
    body's bytes straight into the items' matrix and optional strings when the body is valid and
    plain (service/contract/_rows.c `parse` says which bodies it reads: the matrix is then exactly the one
    compile_batch_of_flat_numbers gives for the decoded body, the strings exactly the decoded
    items'); None when undecided, and the body is then decoded and checked as before. None for any
    other document."""
    found = _batch_of_flat_numbers(document)
    if found is None or not isinstance(found[3], int):
        return None
    field, items, min_items, max_items = found
    properties, strings = _flat_numbers(items)
    keys = tuple(name.encode() for name in properties)
    optional = tuple((name.encode(), *lengths) for name, lengths in strings.items())
    names = tuple(strings)
    low, high = (np.array(bounds, dtype=np.float64) for bounds in _double_bounds(properties))

    def read(body: bytes) -> BodyRows | None:
        out = np.empty((max_items, len(keys)), dtype=np.float64)
        n, values = _rows.parse(body, field, keys, low, high, out, optional)
        if n < max(min_items, 1):
            return None
        return BodyRows(
            out[:n], {} if values is None else {k: v for k, v in zip(names, values, strict=True) if v is not None}
        )

    return read


class TransactionValidator:
    """Validates decoded request bodies against a schema document.

    `is_valid` is the compiled fast path (specialised for the transaction schema's shape, else
    fastjsonschema); for a batch document, `matrix` validates and reads the items' values in one
    pass, and `read_body` does so from the body's bytes when it can (both None for other
    documents); `violations` asks `jsonschema` (the reference) what is
    wrong, and is only called once a body has been rejected."""

    def __init__(self, document: dict[str, Any]) -> None:
        jsonschema.validators.validator_for(document).check_schema(document)
        self.document = document
        self._reference = jsonschema.Draft202012Validator(document)
        self.matrix = compile_batch_of_flat_numbers(document)
        self.read_body = compile_batch_body_reader(document)
        matrix = self.matrix
        specialised = compile_flat_numbers(document) or (
            (lambda instance: matrix(instance) is not None) if matrix is not None else None
        )
        self.is_valid: Callable[[Any], bool] = specialised or self._fastjsonschema(document)

    @staticmethod
    def _fastjsonschema(document: dict[str, Any]) -> Callable[[Any], bool]:
        compiled = fastjsonschema.compile(document)

        def is_valid(instance: Any) -> bool:
            try:
                compiled(instance)
            except fastjsonschema.JsonSchemaException:
                return False
            return True

        return is_valid

    def violations(self, instance: Any) -> list[Violation]:
        found = [v for error in self._reference.iter_errors(instance) for v in _describe(error)]
        return sorted(dict.fromkeys(found), key=self._order)

    @staticmethod
    def _order(v: Violation) -> tuple[int, int, str]:
        """Batch items in order, then fields in the order of the features."""
        position = FEATURES.index(v.field) if v.field in FEATURES else (-1 if v.field is None else len(FEATURES))
        return (-1 if v.index is None else v.index, position, v.field or "")


if __name__ == "__main__":  # the whole transaction schema, as the service builds it
    print(json.dumps(load_schema_document(), indent=2))
