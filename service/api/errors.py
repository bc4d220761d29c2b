"""Every error leaves as a JSON object that says what is wrong and, where it can, which field."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import falcon
import orjson

from service.contract.schema import Violation

log = logging.getLogger(__name__)
JSON = "application/json"


class ApiError(falcon.HTTPError):
    """An HTTP error with a machine-readable code and the fields at fault."""

    def __init__(
        self,
        status: str,
        code: str,
        message: str,
        violations: Iterable[Violation] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, title=code, description=message, headers=headers)
        self.code = code
        self.violations = list(violations)

    def to_dict(self, obj_type: type = dict) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.description}
        if self.violations:
            body["errors"] = [v.as_dict() for v in self.violations]
        return body


def invalid_body(violations: list[Violation]) -> ApiError:
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return ApiError(falcon.HTTP_422, "invalid_transaction", violations[0].describe() + more, violations)


def _code(error: falcon.HTTPError) -> str:
    """Falcon's title without its status number ("404 Not Found" -> "not_found"): the code nginx
    gives the same refusal when it answers itself."""
    title = (error.title or "error").split(" ", 1)
    words = title[1] if len(title) == 2 and title[0].isdigit() else " ".join(title)  # "Bad request" too
    return getattr(error, "code", None) or words.lower().replace(" ", "_")


def protocol_v2(path: str) -> bool:
    """Whether a path is the Open Inference Protocol's: its errors are {"error": message}."""
    return path == "/v2" or path.startswith("/v2/")


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Falcon's own errors (404, 405, …) get the same shape as ours, always JSON. Under /v2 every
    error has the Open Inference Protocol's shape instead: {"error": message}."""
    if protocol_v2(req.path):
        body: dict[str, Any] = {"error": error.description or error.title}
    elif isinstance(error, ApiError):
        body = error.to_dict()
    else:
        body = {"error": _code(error), "message": error.description or error.title}
    resp.data = orjson.dumps(body)
    resp.content_type = JSON


def handle_unexpected(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict[str, Any]) -> None:
    """A bug must not leak a traceback to the client; it goes to the log with the request and trace ids."""
    log.error(
        "unhandled error",
        exc_info=error,
        extra={"request_id": req.get_header("X-Request-ID"), "trace_id": getattr(req.context, "trace_id", None)},
    )
    raise ApiError(falcon.HTTP_500, "internal_error", "the request could not be processed")
