"""The transaction JSON Schema: one document, a compiled validator for the hot path and
`jsonschema` as the reference that explains what is wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import fastjsonschema
import jsonschema

SCHEMA_FILE = "transaction.schema.json"


def load_schema_document() -> dict[str, Any]:
    return json.loads(resources.files("service.schemas").joinpath(SCHEMA_FILE).read_text())


@dataclass(frozen=True)
class Violation:
    """What is wrong with one field of a request (field is None when the whole body is wrong)."""

    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message}


def _describe(error: jsonschema.ValidationError) -> Violation:
    field = ".".join(str(p) for p in error.absolute_path) or None
    instance = error.instance
    if error.validator == "type":
        got = "null" if instance is None else type(instance).__name__
        got = {"bool": "boolean", "str": "string", "dict": "object", "list": "array"}.get(got, got)
        article = "an" if str(error.validator_value)[0] in "aeiou" else "a"
        return Violation(field, f"must be {article} {error.validator_value}, got {got}")
    if error.validator in ("minimum", "maximum"):
        return Violation(field, "must be a finite number within the float32 range (|x| <= 3.4028234663852886e38)")
    return Violation(field, error.message)


class TransactionValidator:
    """Validates decoded request bodies against the schema document.

    `is_valid` is the compiled fast path; `violations` asks `jsonschema` (the reference) what is
    wrong, and is only called once a body has been rejected."""

    def __init__(self, document: dict[str, Any]) -> None:
        jsonschema.validators.validator_for(document).check_schema(document)
        self.document = document
        self._reference = jsonschema.Draft202012Validator(document)
        self._positions = {name: i for i, name in enumerate(document.get("required", ()))}
        self._compiled: Callable[[Any], Any] = fastjsonschema.compile(document)

    def is_valid(self, instance: Any) -> bool:
        try:
            self._compiled(instance)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def violations(self, instance: Any) -> list[Violation]:
        found: list[Violation] = []
        for error in self._reference.iter_errors(instance):
            if error.validator == "required":
                # jsonschema reports each missing property in its own error; name them once each.
                found.extend(Violation(p, "is required") for p in error.validator_value if p not in error.instance)
            else:
                found.append(_describe(error))
        return sorted(dict.fromkeys(found), key=self._field_order)

    def _field_order(self, violation: Violation) -> tuple[int, str]:
        if violation.field is None:
            return (-1, "")
        return (self._positions.get(violation.field, len(self._positions)), violation.field)
