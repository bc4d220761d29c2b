"""The OpenAPI 3.1 description, built at start from the same JSON Schema the validator uses."""

from __future__ import annotations

from typing import Any

from service.api.deadline import DEADLINE_HEADER, InvalidDeadline, budget_ms
from service.api.errors import protocol_v2
from service.api.routes import BY_PATH
from service.api.v2 import (
    EXTENSIONS,
    FLOAT32_MAX,
    HEADER_LENGTH,
    INPUT,
    INPUT_TYPES,
    MODEL_NAME,
    OUTPUTS,
    model_metadata,
)
from service.contract.schema import (
    BATCH_FIELD,
    ID_FIELD,
    IDS_FIELD,
    batch_document,
    by_id_batch_document,
    by_id_document,
    embeddable,
    id_document,
    sample_transaction,
)
from service.core import threshold
from service.core.features import FEATURES, N_FEATURES
from service.core.settings import DEADLINE_MAX_MS, DEADLINE_MIN_MS

JSON = "application/json"
EXAMPLE_VERSION = "rf-20261129-cd0ce935"  # what `make model` names a model


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"content": {JSON: content}}


def _error(
    description: str, example_code: str, example_message: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers or _TRACE_HEADERS,
        **_json(_ref("Error"), {"error": example_code, "message": example_message}),
    }


_TRACE_HEADERS = {
    "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
    "X-Response-Time-Ms": {"$ref": "#/components/headers/X-Response-Time-Ms"},
    "traceresponse": {"$ref": "#/components/headers/traceresponse"},
}
_RETRY = {**_TRACE_HEADERS, "Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}

_SCHEMAS: dict[str, Any] = {
    "ScoreResult": {
        "type": "object",
        "required": ["fraud-score", "is-fraud", "model-version", "ood-warning"],
        "properties": {
            "fraud-score": {"type": "integer", "minimum": 0, "maximum": 100, "description": "round(100 × P(fraud))"},
            "is-fraud": {"type": "boolean", "description": "fraud-score >= the threshold (GET /v1/model-info)"},
            "model-version": {"type": "string"},
            "ood-warning": {
                "type": "boolean",
                "description": "some feature is more than OOD_Z training standard deviations from its training mean",
            },
            "ood-features": {
                "type": "array",
                "items": {"enum": list(FEATURES)},
                "description": "present when ood-warning is true",
            },
            "reasons": {"type": "array", "items": _ref("Reason"), "description": "with ?explain=true"},
            ID_FIELD: {
                **id_document(),
                "description": "the transaction's id, when the request named one (its transaction_id, or the by-id id)",
            },
        },
    },
    "Reason": {
        "type": "object",
        "required": ["feature", "value", "contribution"],
        "properties": {
            "feature": {"enum": list(FEATURES)},
            "value": {"type": "number", "description": "the input value"},
            "contribution": {
                "type": "number",
                "description": "change in P(fraud) credited to this feature along the trees' paths, averaged over trees",
            },
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["results", "model-version"],
        "properties": {"results": {"type": "array", "items": _ref("ScoreResult")}, "model-version": {"type": "string"}},
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "a stable machine-readable code"},
            "message": {"type": "string", "description": "what is wrong, naming the field"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {"type": ["string", "null"]},
                        "message": {"type": "string"},
                        "index": {"type": "integer", "description": "the batch item"},
                    },
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "model_loaded"],
        "properties": {
            "status": {"enum": ["healthy", "unhealthy"]},
            "model_loaded": {"type": "boolean"},
            "reason": {"type": "string", "description": "why no model is loaded"},
        },
    },
    "Drift": {
        "type": "object",
        "required": ["rows", "score", "features"],
        "properties": {
            "rows": {"type": "integer", "description": "rows scored since start, the last reset or rollout"},
            "score": {"type": ["number", "null"], "description": "PSI of the fraud-score (null without rows)"},
            "features": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
            "thresholds": {"type": "object", "description": "PSI above watch: look; above act: act"},
        },
    },
    "ModelInfo": {
        "type": "object",
        "description": "what the loaded model is, how it was trained and how it scores",
        "properties": {
            "model-version": {"type": "string"},
            "estimator": {"type": "string"},
            "n_trees": {"type": "integer"},
            "threshold": {
                "type": "object",
                "description": "the decision threshold in force and where it comes from",
                "required": ["value", "source"],
                "properties": {
                    "value": {"type": "integer", "description": "is-fraud when fraud-score >= value"},
                    "source": {
                        "enum": ["environment", "manifest", "default"],
                        "description": "FRAUD_THRESHOLD, the cost-chosen threshold recorded at training, or "
                        f"{threshold.DEFAULT}",
                    },
                },
            },
            "sha256": {"type": ["string", "null"]},
            "champion": {"type": "object", "description": "the model answering: version, digests, threshold"},
            "challenger": {
                "type": ["object", "null"],
                "description": "the model scored beside it (CHALLENGER_MODEL_PATH), or why it was refused",
            },
        },
    },
}


_V2_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
_V2_SCHEMAS: dict[str, Any] = {
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what is wrong"}},
        "description": "the Open Inference Protocol's error object",
    },
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _V2_TENSOR},
            "outputs": {"type": "array", "items": _V2_TENSOR},
        },
    },
    "V2InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"const": MODEL_NAME},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    **_V2_TENSOR,
                    "properties": {
                        **_V2_TENSOR["properties"],
                        "data": {"type": "array"},
                        "parameters": {
                            "type": "object",
                            "properties": {"binary_data_size": {"type": "integer"}},
                        },
                    },
                },
            },
        },
    },
}


def _v2_inference_request(batch_max: int) -> dict[str, Any]:
    """What Inference accepts, as far as JSON Schema can say it. It cannot say that `data` holds
    exactly shape[0] x N_FEATURES numbers, nor that binary_data_size bytes follow the JSON header
    (Inference-Header-Content-Length long): those are in the descriptions, and a request that breaks
    them is answered 400."""
    value = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    parameters = {"type": "object", "description": "absent, or an object"}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "description": "echoed in the response"},
            "parameters": {
                **parameters,
                "properties": {
                    "binary_data_output": {
                        "type": "boolean",
                        "description": "every output as binary data after the JSON header (default false)",
                    }
                },
            },
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"const": INPUT},
                        "datatype": {"enum": list(INPUT_TYPES)},
                        "shape": {
                            "type": "array",
                            "prefixItems": [
                                {"type": "integer", "minimum": 1, "maximum": batch_max},
                                {"const": N_FEATURES},
                            ],
                            "minItems": 2,
                            "maxItems": 2,
                            "description": f"[N, {N_FEATURES}]: N <= BATCH_MAX ({batch_max}) rows of the features "
                            "in the model's order",
                        },
                        "data": {
                            "anyOf": [
                                {"type": "array", "minItems": N_FEATURES, "items": value},
                                {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "array",
                                        "minItems": N_FEATURES,
                                        "maxItems": N_FEATURES,
                                        "items": value,
                                    },
                                },
                            ],
                            "description": f"row-major numbers within float32's range, flat (N x {N_FEATURES}) or "
                            f"nested (N rows of {N_FEATURES}), N as the shape says",
                        },
                        "parameters": {
                            **parameters,
                            "properties": {
                                "binary_data_size": {
                                    "type": "integer",
                                    "description": "the tensor as binary data instead of `data`: this many bytes of "
                                    "little-endian values follow the JSON header, "
                                    + ", ".join(
                                        f"N x {N_FEATURES} x {dtype.itemsize} for {name}"
                                        for name, dtype in INPUT_TYPES.items()
                                    ),
                                }
                            },
                        },
                    },
                    # The tensor's values come one way: as JSON data or as binary data.
                    "oneOf": [
                        {"required": ["data"]},
                        {"required": ["parameters"], "properties": {"parameters": {"required": ["binary_data_size"]}}},
                    ],
                },
            },
            "outputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"enum": list(OUTPUTS)},
                        "parameters": {
                            **parameters,
                            "properties": {
                                "binary_data": {"type": "boolean"},
                                "classification": {
                                    "description": 'not supported: any value but 0, false, null or "" is refused'
                                },
                            },
                        },
                    },
                },
                "description": "which outputs, each at most once, in which order, each as JSON or binary "
                "(default: all three)",
            },
        },
    }


def _v2_error(description: str, example: str, headers: dict[str, Any] = _TRACE_HEADERS) -> dict[str, Any]:
    return {"description": description, "headers": headers, **_json(_ref("V2Error"), {"error": example})}


def _v2_paths(batch_max: int, app_version: str) -> dict[str, Any]:
    """The Open Inference Protocol (KServe V2) routes, documented in docs/api.md."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": MODEL_NAME}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    unknown = _v2_error("unknown model or version", f"unknown model 'x': this server serves '{MODEL_NAME}'")
    unavailable = _v2_error("no model is loaded", "no model is loaded: …", _RETRY)
    forbidden = _v2_error("X-API-Key missing, empty or wrong", "a valid X-API-Key header is required")
    empty = {"description": "yes (empty body)", "headers": _TRACE_HEADERS}
    sample = [list(sample_transaction().values())]
    infer = {
        "summary": f"Score N <= {batch_max} rows (KServe V2 / Open Inference Protocol, Triton binary tensor data)",
        "parameters": [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
                "description": "with binary tensor data: the length of the JSON header; the raw little-endian "
                "tensor bytes follow it",
            }
        ],
        "requestBody": {
            "required": True,
            **_json(
                _ref("V2InferenceRequest"),
                {"inputs": [{"name": INPUT, "shape": [1, N_FEATURES], "datatype": "FP64", "data": sample}]},
            ),
        },
        "responses": {
            "200": {
                "description": "outputs "
                + ", ".join(f"{name} ({datatype})" for name, (datatype, *_) in OUTPUTS.items())
                + f" (the probability exactly predict_proba's); application/octet-stream with {HEADER_LENGTH} "
                "when an output is binary",
                "headers": _TRACE_HEADERS,
                **_json(_ref("V2InferenceResponse")),
            },
            "400": _v2_error(
                "not valid JSON; wrong input name, shape or datatype; a value not a finite number within float32's "
                "range; binary data of the wrong size; an unknown output",
                f"input '{INPUT}': shape must be [N, {N_FEATURES}] with N >= 1, got [1, {N_FEATURES - 1}]",
            ),
            "403": forbidden,
            "404": unknown,
            "413": _v2_error(
                f"more than BATCH_MAX ({batch_max}) rows, or a body over nginx's limit",
                f"input '{INPUT}': at most {batch_max} rows per request (BATCH_MAX), got {batch_max + 1}",
            ),
            "415": _v2_error("a compressed body", "compressed request bodies are not supported"),
            "429": _v2_error("rate limit exceeded", "too many requests …", _RETRY),
            "503": unavailable,
        },
    }
    metadata = {
        "summary": "Model metadata: input and output names, datatypes, shapes",
        "responses": {
            "200": {
                "description": "the model",
                "headers": _TRACE_HEADERS,
                **_json(_ref("V2ModelMetadata"), model_metadata(EXAMPLE_VERSION)),
            },
            "403": forbidden,
            "404": unknown,
            "503": unavailable,
        },
    }
    ready = {
        "summary": "Is the model (version) ready? (no key)",
        "security": [],
        "responses": {"200": empty, "404": unknown, "503": unavailable},
    }
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "Server metadata (no key)",
                "operationId": "v2ServerMetadata",
                "security": [],
                "responses": {
                    "200": {
                        "description": "name, version, extensions",
                        **_json(
                            _ref("V2ServerMetadata"),
                            {"name": "fraud-scoring", "version": app_version, "extensions": EXTENSIONS},
                        ),
                    }
                },
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Liveness (no key)",
                "operationId": "v2Live",
                "security": [],
                "responses": {"200": empty},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness: a model is loaded (no key)",
                "operationId": "v2Ready",
                "security": [],
                "responses": {"200": empty, "503": unavailable},
            }
        },
    }
    for prefix, params, suffix in (
        ("/v2/models/{name}", [name], ""),
        ("/v2/models/{name}/versions/{version}", [name, version], "Version"),
    ):
        paths[prefix] = {"get": {**metadata, "operationId": f"v2ModelMetadata{suffix}", "parameters": params}}
        paths[f"{prefix}/ready"] = {"get": {**ready, "operationId": f"v2ModelReady{suffix}", "parameters": params}}
        paths[f"{prefix}/infer"] = {
            "post": {**infer, "operationId": f"v2Infer{suffix}", "parameters": params + infer["parameters"]}
        }
    return paths


def by_id_paths(batch_max: int, explain: dict[str, Any], errors: dict[str, Any], scored: dict[str, Any]) -> dict:
    """The by-id routes, described only when a feature store is configured (else they do not exist)."""
    store_errors = {
        **errors,
        "404": _error(
            "no features are stored for an id", "unknown_transaction", "no features stored for transaction 'tx-1'"
        ),
        "422": _error(
            "the body is not as described, or a stored record is in an unknown format or holds a value the contract refuses",
            "invalid_record",
            "transaction 'tx-1': V3 is not a finite number (nan)",
        ),
        "503": {
            "description": "the feature store did not answer within FEATURE_STORE_TIMEOUT_MS, or no model is loaded",
            "headers": _RETRY,
            **_json(
                _ref("Error"),
                {"error": "feature_store_unavailable", "message": "the feature store did not answer: TimeoutError"},
            ),
        },
    }
    one = {**scored, ID_FIELD: "tx-1"}
    return {
        "/v1/fraud-score/by-id": {
            "post": {
                "summary": "Score a transaction whose features the pipeline stored in the feature store",
                "operationId": "scoreById",
                "parameters": [explain],
                "requestBody": {"required": True, **_json(_ref("TransactionId"), {ID_FIELD: "tx-1"})},
                "responses": {
                    "200": {
                        "description": "scored, with the id",
                        "headers": _TRACE_HEADERS,
                        **_json(_ref("ScoreResult"), one),
                    },
                    **store_errors,
                },
            }
        },
        "/v1/fraud-score/by-id/batch": {
            "post": {
                "summary": f"Score up to {batch_max} stored transactions in one call (one round trip to the store)",
                "operationId": "scoreByIdBatch",
                "parameters": [explain],
                "requestBody": {"required": True, **_json(_ref("TransactionIdBatch"), {IDS_FIELD: ["tx-1", "tx-2"]})},
                "responses": {
                    "200": {
                        "description": "results in input order, each with its id",
                        "headers": _TRACE_HEADERS,
                        **_json(_ref("BatchResult"), {"results": [one], "model-version": scored["model-version"]}),
                    },
                    **store_errors,
                },
            }
        },
        "/health/feature-store": {
            "get": {
                "summary": "Whether the feature store answers (apart from /health, which does not depend on it)",
                "operationId": "featureStoreHealth",
                "security": [],
                "responses": {
                    "200": {"description": "the store answers a PING within the timeout", **_json({"type": "object"})},
                    "503": {"description": "the store does not answer", **_json({"type": "object"})},
                },
            }
        },
    }


def build_openapi(
    transaction_schema: dict[str, Any], batch_max: int, app_version: str, *, deadline_ms: int, by_id: bool = False
) -> dict[str, Any]:
    """`batch_max` and `deadline_ms` are the settings in force (BATCH_MAX, REQUEST_DEADLINE_MS)."""
    return by_route(_document(transaction_schema, batch_max, app_version, by_id), deadline_ms)


def _deadline_parameter(deadline_ms: int) -> dict[str, Any]:
    return {
        "name": DEADLINE_HEADER,
        "in": "header",
        "required": False,
        # Any whole number is taken and clamped, so the schema bounds nothing.
        "schema": {"type": "integer"},
        "example": deadline_ms,
        "description": f"this request's budget in milliseconds, counted from when nginx hands it to a worker "
        f"(after its body is read); clamped to {DEADLINE_MIN_MS}-{DEADLINE_MAX_MS}; default REQUEST_DEADLINE_MS "
        f"({deadline_ms}). A request that waited its budget out is refused, unread, with 503 deadline_exceeded; "
        "one that is not a whole number, with 400 invalid_deadline",
    }


_DEADLINE_EXCEEDED = (
    "deadline_exceeded: the request waited its budget out in the queue and was refused unread; retry after "
    "Retry-After, or fall back to your own rule. nginx's unavailable: no worker could take it (the queue to "
    "the workers is full, or gunicorn is down)"
)
_BUSY = "nginx's unavailable: no worker could take it (the queue to the workers is full, or gunicorn is down)"
_RATE_LIMITED = "over the key's or the address's request rate (nginx)"


def _invalid_deadline_message(header: str) -> str:
    try:
        budget_ms(header, DEADLINE_MIN_MS)
    except InvalidDeadline as e:
        return str(e)
    raise ValueError(f"{header!r} is a valid {DEADLINE_HEADER}")


def _deadline_example(deadline_ms: int) -> dict[str, str]:
    return {
        "error": "deadline_exceeded",
        "message": f"the request waited {deadline_ms + 13} ms in the queue of its {deadline_ms} ms budget; "
        "retry after Retry-After, or fall back to your own rule",
    }


def _shaped(v2: bool, description: str, code: str, message: str, headers: dict[str, Any] = _TRACE_HEADERS) -> dict:
    """An error answer in the route's shape: the Open Inference Protocol's under /v2, else the service's."""
    return _v2_error(description, message, headers) if v2 else _error(description, code, message, headers)


def _also(response: dict[str, Any] | None, description: str, fallback: dict[str, Any]) -> dict[str, Any]:
    """A status the operation may already answer for other reasons, now for one more."""
    if response is None:
        return fallback
    return {**response, "description": f"{response['description']}; {description}"}


def by_route(document: dict[str, Any], deadline_ms: int) -> dict[str, Any]:
    """What each operation's route (service/api/routes.py) adds to it, in the route's error shape:
    on the routes the deadline guard sheds, X-Deadline-Ms, its 400 and its 503 deadline_exceeded;
    on every route nginx limits (all but the probes), its 429 and 503, and 413 for a body too large.
    Operations may share their dicts: each gets new ones."""
    document["components"].setdefault("parameters", {})[DEADLINE_HEADER] = _deadline_parameter(deadline_ms)
    for path, operations in document["paths"].items():
        route = BY_PATH[path]
        v2 = protocol_v2(path)
        for method, operation in operations.items():
            parameters = list(operation.get("parameters", []))
            responses = dict(operation["responses"])
            if route.deadline:
                parameters.append({"$ref": f"#/components/parameters/{DEADLINE_HEADER}"})
                invalid = f"{DEADLINE_HEADER} is not a whole number (invalid_deadline)"
                example = _invalid_deadline_message("soon")
                responses["400"] = _also(
                    responses.get("400"), invalid, _shaped(v2, invalid, "invalid_deadline", example)
                )
                late = _deadline_example(deadline_ms)
                other = responses.get("503")
                content = (other or {}).get("content", {}).get(JSON, {})
                if "example" not in content:
                    content = _shaped(v2, "", late["error"], late["message"])["content"][JSON]
                description = other["description"] if other else None
                responses["503"] = {
                    "description": _DEADLINE_EXCEEDED + (f". Otherwise: {description}" if description else ""),
                    "headers": _RETRY,
                    "content": {JSON: content},
                }
            if not route.probe:
                responses.setdefault(
                    "429",
                    _shaped(
                        v2,
                        _RATE_LIMITED,
                        "rate_limited",
                        "too many requests for this API key or address; retry after 1 s",
                        _RETRY,
                    ),
                )
                responses.setdefault(
                    "503", _shaped(v2, _BUSY, "unavailable", "the scoring workers are busy; retry shortly", _RETRY)
                )
                if method == "post":
                    responses.setdefault(
                        "413",
                        _shaped(v2, "a body over nginx's limit", "payload_too_large", "the request body is too large"),
                    )
            operations[method] = {**operation, "responses": responses} | (
                {"parameters": parameters} if parameters else {}
            )
    return document


def _document(transaction_schema: dict[str, Any], batch_max: int, app_version: str, by_id: bool) -> dict[str, Any]:
    sample = sample_transaction()
    batch = batch_document(transaction_schema, batch_max)
    batch["properties"][BATCH_FIELD]["items"] = _ref("Transaction")
    scored = {"fraud-score": 0, "is-fraud": False, "model-version": EXAMPLE_VERSION, "ood-warning": False}
    explain = {
        "name": "explain",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "add `reasons`: the features that pushed P(fraud) up the most (exact path decomposition)",
    }
    client_errors = {
        "400": _error(
            "malformed JSON, an empty body, bytes that are not UTF-8, a bad query parameter",
            "malformed_json",
            "the request body is not valid JSON: …",
        ),
        "403": _error("X-API-Key missing, empty or wrong", "forbidden", "a valid X-API-Key header is required"),
        "413": _error(
            "body over nginx's limit, or more than BATCH_MAX transactions",
            "payload_too_large",
            "the request body is too large: at most … for one transaction, … for a batch",
        ),
        "415": _error(
            "Content-Type is not JSON",
            "unsupported_media_type",
            "Content-Type must be application/json, got 'text/plain'",
        ),
        "422": _error(
            "a field missing or not a finite number (NaN, Infinity, 1e999 included), or a body that is not an object",
            "invalid_transaction",
            "V7 must be a number, got string",
        ),
        "429": {
            "description": "over the key's or the address's request rate (nginx), or over the key's budget of "
            "transactions per second, a batch counting its size (the app)",
            "headers": _RETRY,
            **_json(_ref("Error")),
        },
        "503": {
            "description": "no model is loaded, or no worker is available",
            "headers": _RETRY,
            **_json(_ref("Error")),
        },
    }
    drift_unavailable = _error(
        "the model's manifest records no training bins",
        "drift_unavailable",
        "the model's manifest records no training bins: retrain it with make model",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fraud scoring",
            "version": app_version,
            "description": f"Scores card transactions (the {N_FEATURES} features of the ULB credit-card fraud data set) with a "
            "random forest. Scores are exactly sklearn's predict_proba, as an integer percentage.",
        },
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}],
        "paths": {
            "/v1/fraud-score": {
                "post": {
                    "summary": "Score one transaction",
                    "operationId": "scoreTransaction",
                    "parameters": [explain],
                    "requestBody": {"required": True, **_json(_ref("Transaction"), {**sample, ID_FIELD: "tx-1"})},
                    "responses": {
                        "200": {
                            "description": "scored (with the transaction's id, when it has one)",
                            "headers": _TRACE_HEADERS,
                            **_json(_ref("ScoreResult"), {**scored, ID_FIELD: "tx-1"}),
                        },
                        **client_errors,
                    },
                }
            },
            "/v1/fraud-score/batch": {
                "post": {
                    "summary": f"Score up to {batch_max} transactions in one call",
                    "operationId": "scoreBatch",
                    "parameters": [explain],
                    "requestBody": {
                        "required": True,
                        **_json(_ref("TransactionBatch"), {BATCH_FIELD: [{**sample, ID_FIELD: "tx-1"}, sample]}),
                    },
                    "responses": {
                        "200": {
                            "description": "results in input order, each with its transaction's id when it has one",
                            "headers": _TRACE_HEADERS,
                            **_json(
                                _ref("BatchResult"),
                                {
                                    "results": [{**scored, ID_FIELD: "tx-1"}, scored],
                                    "model-version": scored["model-version"],
                                },
                            ),
                        },
                        **client_errors,
                    },
                }
            },
            "/v1/model-info": {
                "get": {
                    "summary": "The loaded model: version, training, structure, importances, metrics, threshold, digest",
                    "operationId": "modelInfo",
                    "responses": {
                        "200": {
                            "description": "model information",
                            "headers": _TRACE_HEADERS,
                            **_json(_ref("ModelInfo")),
                        },
                        "403": client_errors["403"],
                        "503": client_errors["503"],
                    },
                }
            },
            "/v1/drift": {
                "get": {
                    "summary": "Population stability index of live traffic against training, per feature and score",
                    "operationId": "drift",
                    "responses": {
                        "200": {
                            "description": "rows counted since start, the last reset or rollout, and their PSI",
                            "headers": _TRACE_HEADERS,
                            **_json(_ref("Drift")),
                        },
                        "403": client_errors["403"],
                        "409": drift_unavailable,
                        "503": client_errors["503"],
                    },
                }
            },
            "/v1/drift/reset": {
                "post": {
                    "summary": "Count drift from now on (Prometheus counters keep counting)",
                    "operationId": "resetDrift",
                    "responses": {
                        "200": {"description": "reset", "headers": _TRACE_HEADERS, **_json(_ref("Drift"))},
                        "403": client_errors["403"],
                        "409": drift_unavailable,
                        "503": client_errors["503"],
                    },
                }
            },
            **(by_id_paths(batch_max, explain, client_errors, scored) if by_id else {}),
            "/health": {
                "get": {
                    "summary": "Health for load balancer target checks (no key)",
                    "operationId": "health",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "a model is loaded",
                            **_json(_ref("Health"), {"status": "healthy", "model_loaded": True}),
                        },
                        "503": {
                            "description": "no model is loaded: take this target out of rotation",
                            **_json(_ref("Health"), {"status": "unhealthy", "model_loaded": False, "reason": "…"}),
                        },
                    },
                }
            },
            **_v2_paths(batch_max, app_version),
        },
        "components": {
            "schemas": {
                "Transaction": embeddable(transaction_schema),
                "TransactionBatch": embeddable(batch),
                **(
                    {
                        "TransactionId": embeddable(by_id_document()),
                        "TransactionIdBatch": embeddable(by_id_batch_document(batch_max)),
                    }
                    if by_id
                    else {}
                ),
                **_SCHEMAS,
                **_V2_SCHEMAS,
                "V2InferenceRequest": _v2_inference_request(batch_max),
            },
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "headers": {
                "X-Request-ID": {
                    "schema": {"type": "string"},
                    "description": "the client's id, or one nginx generated; also in the logs",
                },
                "X-Response-Time-Ms": {
                    "schema": {"type": "string"},
                    "description": "time spent in the service, milliseconds",
                },
                "traceresponse": {
                    "schema": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-00$"},
                    "description": (
                        "W3C Trace Context: the service's span in the request's trace (the caller's traceparent's "
                        "trace id, else a fresh one); not on errors nginx answers itself"
                    ),
                },
            },
        },
    }


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Fraud scoring API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
  </script>
</body>
</html>
"""
