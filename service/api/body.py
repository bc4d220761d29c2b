"""Decoding request bodies: orjson on the hot path; on failure, a slower look that says why."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

import falcon
import orjson

from service.api.errors import ApiError
from service.contract.schema import Violation

NON_FINITE = (
    "must be a finite number: NaN, Infinity and numbers beyond a double's range "
    "(such as 1e999) are not valid JSON numbers"
)


class _NonFinite:
    """Stands in for a non-finite token while the slow path looks for the field holding it."""


def _undecodable(raw: bytes, error: orjson.JSONDecodeError) -> ApiError:
    if not raw.strip():
        return ApiError(falcon.HTTP_400, "malformed_json", "the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return ApiError(falcon.HTTP_400, "malformed_json", f"the request body is not valid UTF-8 (byte {e.start})")

    marker = _NonFinite()
    fields: list[str] = []

    def number(token: str) -> Any:
        value = float(token)
        return marker if math.isinf(value) else value

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        fields.extend(k for k, v in items if v is marker)
        return dict(items)

    with contextlib.suppress(ValueError, RecursionError):
        json.loads(
            text,
            parse_constant=lambda token: marker,
            parse_float=number,
            parse_int=lambda token: marker if math.isinf(float(token)) else int(token),
            object_pairs_hook=pairs,
        )
    if fields:
        violations = [Violation(f, NON_FINITE) for f in dict.fromkeys(fields)]
        return ApiError(falcon.HTTP_422, "invalid_transaction", f"{fields[0]} {NON_FINITE}", violations)
    return ApiError(falcon.HTTP_400, "malformed_json", f"the request body is not valid JSON: {error}")


def decode(raw: bytes, charge: Callable[[], object] | None = None) -> Any:
    """The body's JSON value, or the 4xx saying why there is none. `charge` is called first when
    there is none: a batch route charges the key for the body there, so that a key over its budget
    is refused (429) before the slow look at why."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if charge is not None:
            charge()
        raise _undecodable(raw, e) from None
