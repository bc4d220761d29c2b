"""The OpenAPI 3.1 description, built at start from the same JSON Schema the validator uses."""

from __future__ import annotations

from typing import Any

from service.deadline import SHED_PREFIXES
from service.features import FEATURES
from service.schema import (
    BATCH_FIELD,
    ID_FIELD,
    IDS_FIELD,
    batch_document,
    by_id_batch_document,
    by_id_document,
    embeddable,
    sample_transaction,
)
from service.settings import DEADLINE_MAX_MS, DEADLINE_MIN_MS

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"content": {JSON: content}}


def _error(description: str, example_code: str, example_message: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _TRACE_HEADERS,
        **_json(_ref("Error"), {"error": example_code, "message": example_message}),
    }


_TRACE_HEADERS = {
    "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
    "X-Response-Time-Ms": {"$ref": "#/components/headers/X-Response-Time-Ms"},
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
                        "description": "FRAUD_THRESHOLD, the cost-chosen threshold recorded at training, or 50",
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
    transaction_schema: dict[str, Any], batch_max: int, app_version: str, by_id: bool = False
) -> dict[str, Any]:
    return with_deadlines(_document(transaction_schema, batch_max, app_version, by_id))


_DEADLINE_PARAMETER = {
    "name": "X-Deadline-Ms",
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": DEADLINE_MIN_MS, "maximum": DEADLINE_MAX_MS},
    "description": f"this request's budget in milliseconds, counted from when nginx hands it to a worker "
    f"(after its body is read); clamped to {DEADLINE_MIN_MS}-{DEADLINE_MAX_MS}; default REQUEST_DEADLINE_MS "
    "(150). A request that waited its budget out is refused, unread, with 503 deadline_exceeded",
}
_DEADLINE_EXCEEDED = (
    "deadline_exceeded: the request waited its budget out in the queue and was refused unread; retry after "
    "Retry-After, or fall back to your own rule. nginx's unavailable: no worker could take it (the queue to "
    "the workers is full, or gunicorn is down)"
)


_DEADLINE_EXAMPLE = {
    "error": "deadline_exceeded",
    "message": "the request waited 163 ms in the queue of its 150 ms budget; retry after Retry-After, "
    "or fall back to your own rule",
}


def with_deadlines(document: dict[str, Any]) -> dict[str, Any]:
    """Every operation of the API's versioned routes takes X-Deadline-Ms and may answer 503 deadline_exceeded."""
    document["components"].setdefault("parameters", {})["X-Deadline-Ms"] = _DEADLINE_PARAMETER
    for path, operations in document["paths"].items():
        if not path.startswith(SHED_PREFIXES):
            continue
        for operation in operations.values():
            operation["parameters"] = [
                *operation.get("parameters", []),
                {"$ref": "#/components/parameters/X-Deadline-Ms"},
            ]
            other = operation["responses"].get("503", {})
            content = other.get("content") or _json(_ref("Error"), _DEADLINE_EXAMPLE)["content"]
            if "example" not in content[JSON]:
                content = _json(_ref("Error"), _DEADLINE_EXAMPLE)["content"]
            description = other.get("description")
            operation["responses"]["503"] = {
                "description": _DEADLINE_EXCEEDED + (f". Otherwise: {description}" if description else ""),
                "headers": _RETRY,
                "content": content,
            }
    return document


def _document(transaction_schema: dict[str, Any], batch_max: int, app_version: str, by_id: bool) -> dict[str, Any]:
    sample = sample_transaction()
    batch = batch_document(transaction_schema, batch_max)
    batch["properties"][BATCH_FIELD]["items"] = _ref("Transaction")
    scored = {"fraud-score": 0, "is-fraud": False, "model-version": "rf-20261129-cd0ce935", "ood-warning": False}
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
            "the request body is larger than 8k",
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fraud scoring",
            "version": app_version,
            "description": "Scores card transactions (the 30 features of the ULB credit-card fraud data set) with a "
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
                    "requestBody": {"required": True, **_json(_ref("Transaction"), sample)},
                    "responses": {
                        "200": {
                            "description": "scored",
                            "headers": _TRACE_HEADERS,
                            **_json(_ref("ScoreResult"), scored),
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
                        **_json(_ref("TransactionBatch"), {BATCH_FIELD: [sample, sample]}),
                    },
                    "responses": {
                        "200": {
                            "description": "results in input order",
                            "headers": _TRACE_HEADERS,
                            **_json(
                                _ref("BatchResult"),
                                {"results": [scored, scored], "model-version": scored["model-version"]},
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
                        "409": _error(
                            "the model's manifest records no training bins",
                            "drift_unavailable",
                            "the model's manifest records no training bins: retrain it with make model",
                        ),
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
