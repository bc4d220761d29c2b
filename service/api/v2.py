"""The Open Inference Protocol (KServe V2) over REST, with Triton's binary tensor data extension.

One model, named MODEL_NAME, whose version is the served model's version. Its input is one tensor
`features` of shape [N, 30] (the transaction's features in the model's column order), FP64 or
FP32, as JSON `data` (flat or nested, row-major) or as raw little-endian bytes after the JSON
header (`Inference-Header-Content-Length`, `binary_data_size`). Its outputs, each returnable as
JSON or as binary data: `probability` (FP64 [N], exactly predict_proba's), `fraud_score` (INT32
[N]) and `is_fraud` (BOOL [N], one byte each).

An FP32 tensor is scored as the float32 values it holds (JSON numbers are first rounded to
float32): the probability is predict_proba of exactly those values. Errors are the protocol's
`{"error": "..."}` (service/api/errors.py shapes every error under /v2 so)."""

from __future__ import annotations

import re
from itertools import chain
from typing import Any

import falcon
import numpy as np
import orjson

from service.api.auth import ApiKeys
from service.api.budget import RowBudget
from service.api.errors import JSON, ApiError
from service.api.prediction_log import entry as log_entry
from service.api.resources import ModelUnavailableResource, StaticJson, log_ids, require_key
from service.api.routes import mount
from service.core.features import FEATURES, FLOAT32_MAX, N_FEATURES
from service.engine.scoring import Scoring
from service.telemetry.stages import clock

MODEL_NAME = "fraud"
INPUT = "features"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
# A positive decimal length, leading zeros allowed; ASCII digits only (str.isdigit() also takes "²",
# which int() refuses), and few enough that int() never sees thousands of them.
_HEADER_LENGTH_VALUE = re.compile(r"0*([1-9][0-9]{0,18})")
BINARY = "application/octet-stream"
INPUT_TYPES = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}
# name -> (datatype, little-endian dtype of its binary form, field of Scored)
OUTPUTS: dict[str, tuple[str, np.dtype, str]] = {
    "probability": ("FP64", np.dtype("<f8"), "probability"),
    "fraud_score": ("INT32", np.dtype("<i4"), "score"),
    "is_fraud": ("BOOL", np.dtype(np.bool_), "is_fraud"),
}


def bad_request(message: str) -> ApiError:
    return ApiError(falcon.HTTP_400, "bad_request", message)


def model_metadata(version: str) -> dict[str, Any]:
    return {
        "name": MODEL_NAME,
        "versions": [version],
        "platform": "sklearn_random_forest",
        "inputs": [{"name": INPUT, "datatype": "FP64", "shape": [-1, N_FEATURES]}],
        "outputs": [{"name": name, "datatype": spec[0], "shape": [-1]} for name, spec in OUTPUTS.items()],
    }


class ModelRoute:
    """Resolves `{name}` and `{version}` in a /v2/models/… path to the one model, or 404."""

    def __init__(self, version: str) -> None:
        self.version = version

    def check(self, name: str, version: str | None) -> None:
        if name != MODEL_NAME:
            raise ApiError(falcon.HTTP_404, "not_found", f"unknown model '{name}': this server serves '{MODEL_NAME}'")
        if version is not None and version != self.version:
            raise ApiError(
                falcon.HTTP_404,
                "not_found",
                f"unknown version '{version}' of model '{MODEL_NAME}': the version served is '{self.version}'",
            )


class ModelMetadata(ModelRoute):
    def __init__(self, version: str, keys: ApiKeys) -> None:
        super().__init__(version)
        self._keys = keys
        self._body = orjson.dumps(model_metadata(version))

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None) -> None:
        require_key(self._keys, req)
        self.check(name, version)
        resp.data = self._body
        resp.content_type = JSON


class ModelReady(ModelRoute):
    """200 when the model (and version) is served; the body is empty, as the protocol's."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None) -> None:
        self.check(name, version)
        resp.data = b""


class Ready:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = b""


def _numbers(data: Any, n: int) -> np.ndarray:
    """JSON `data` for an [n, 30] tensor, flat or nested one level per dimension, as float64."""
    if not isinstance(data, list):
        raise bad_request(f"input '{INPUT}': data must be an array of numbers")
    if len(data) == n and all(type(row) is list and len(row) == N_FEATURES for row in data):
        values = list(chain.from_iterable(data))
    elif len(data) == n * N_FEATURES:
        values = data
    else:
        raise bad_request(
            f"input '{INPUT}': data must hold {n} x {N_FEATURES} numbers, flat or as {n} rows of {N_FEATURES}, "
            f"as the shape [{n}, {N_FEATURES}] says"
        )
    if not set(map(type, values)) <= {float, int}:  # bool is not a number here, as in the JSON Schema
        raise bad_request(f"input '{INPUT}': data must hold numbers only (no strings, booleans, nulls or arrays)")
    try:
        return np.array(values, dtype=np.float64).reshape(n, N_FEATURES)
    except OverflowError:
        raise bad_request(f"input '{INPUT}': a value is beyond the float32 range") from None


def _whole(value: Any) -> bool:
    """A JSON integer, as JSON Schema counts them: 697.0 is one (bool is not)."""
    return type(value) is int or (type(value) is float and value.is_integer())


def _parameters(holder: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A request's, tensor's or output's `parameters`: absent, or an object."""
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad_request(f"{where}parameters must be an object")
    return parameters


class Inference(ModelRoute):
    """POST /v2/models/{name}[/versions/{version}]/infer."""

    def __init__(self, version: str, scoring: Scoring, keys: ApiKeys, budget: RowBudget, batch_max: int) -> None:
        super().__init__(version)
        self._scoring = scoring
        self._keys = keys
        self._budget = budget
        self._batch_max = batch_max

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None) -> None:
        key = require_key(self._keys, req)
        self.check(name, version)
        if req.get_header("Content-Encoding") not in (None, "identity"):
            raise ApiError(falcon.HTTP_415, "unsupported_media_type", "compressed request bodies are not supported")
        raw = req.bounded_stream.read()
        try:
            request, binary = self._split(raw, req.get_header(HEADER_LENGTH))
            tensor, n, datatype = self._input(request)
        except ApiError:
            self._budget.spend(key, 1)  # a request whose rows cannot be counted costs one
            raise
        # Charged for the rows it declares, valid or not (as a batch is): checking them is work too.
        self._budget.spend(key, n)
        X = self._matrix(tensor, n, datatype, binary)
        wanted = self._outputs(request)
        stages = req.context.stages
        stages.read = clock()
        logged = None
        if self._scoring.log is not None:
            logged = log_entry(req, self._scoring, key, request["id"] if isinstance(request.get("id"), str) else None)
        scored = self._scoring.rows(X, log_ids(req, self._scoring), logged, stages)
        stages.scored = clock()
        self._respond(resp, request, scored, wanted, n)

    @staticmethod
    def _split(raw: bytes, header_length: str | None) -> tuple[Any, memoryview]:
        """The JSON header and the binary data after it (Triton's binary tensor data extension)."""
        if header_length is None:
            split = len(raw)
        elif (length := _HEADER_LENGTH_VALUE.fullmatch(header_length)) and int(length[1]) <= len(raw):
            split = int(length[1])
        else:
            raise bad_request(
                f"{HEADER_LENGTH} must be the length in bytes of the JSON header (1 to {len(raw)}), "
                f"got {header_length[:32]!r}"
            )
        view = memoryview(raw)
        try:
            request = orjson.loads(view[:split])
        except orjson.JSONDecodeError as e:
            raise bad_request(
                f"the inference request is not valid JSON (NaN and Infinity are not JSON numbers): {e}"
            ) from None
        if not isinstance(request, dict):
            raise bad_request("the inference request must be a JSON object")
        if "id" in request and type(request["id"]) is not str:
            raise bad_request(f"id must be a string, got {type(request['id']).__name__}")
        return request, view[split:]

    def _input(self, request: dict[str, Any]) -> tuple[dict[str, Any], int, str]:
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise bad_request(f"inputs must be an array of one tensor, '{INPUT}'")
        tensor = inputs[0]
        if tensor.get("name") != INPUT:
            raise bad_request(f"unknown input {tensor.get('name')!r}: the model's input is '{INPUT}'")
        datatype = tensor.get("datatype")
        if type(datatype) is not str or datatype not in INPUT_TYPES:  # a list or object is not hashable
            raise bad_request(f"input '{INPUT}': datatype must be FP64 or FP32, got {datatype!r}")
        shape = tensor.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(_whole(d) for d in shape)
            or shape[0] < 1
            or shape[1] != N_FEATURES
        ):
            raise bad_request(f"input '{INPUT}': shape must be [N, {N_FEATURES}] with N >= 1, got {shape!r}")
        n = int(shape[0])
        if n > self._batch_max:
            raise ApiError(
                falcon.HTTP_413,
                "batch_too_large",
                f"input '{INPUT}': at most {self._batch_max} rows per request (BATCH_MAX), got {n}",
            )
        return tensor, n, datatype

    @staticmethod
    def _matrix(tensor: dict[str, Any], n: int, datatype: str, binary: memoryview) -> np.ndarray:
        dtype = INPUT_TYPES[datatype]
        parameters = _parameters(tensor, f"input '{INPUT}': ")
        if "binary_data_size" not in parameters:
            if len(binary):
                raise bad_request(f"{len(binary)} bytes of binary data follow the header, but no input declares them")
            X = _numbers(tensor.get("data"), n)
            if datatype == "FP32":
                with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                    X = X.astype(np.float32).astype(np.float64)
        else:
            expected = n * N_FEATURES * dtype.itemsize
            size = parameters["binary_data_size"]
            if "data" in tensor:
                raise bad_request(f"input '{INPUT}': data and binary_data_size are exclusive")
            if type(size) is not int or size != expected or len(binary) != expected:
                raise bad_request(
                    f"input '{INPUT}': {datatype} [{n}, {N_FEATURES}] is {expected} bytes of binary data; "
                    f"binary_data_size says {size!r} and {len(binary)} bytes follow the header"
                )
            X = np.frombuffer(binary, dtype=dtype).reshape(n, N_FEATURES).astype(np.float64)
        bad = ~(np.abs(X) <= FLOAT32_MAX)  # NaN and ±inf fail the comparison too
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            raise bad_request(
                f"input '{INPUT}': element [{i}, {j}] ({FEATURES[j]}) must be a finite number within the float32 "
                f"range (|x| <= {FLOAT32_MAX!r}), got {float(X[i, j])!r}"
            )
        return X

    @staticmethod
    def _outputs(request: dict[str, Any]) -> list[tuple[str, bool]]:
        """(name, as binary) for each output to return, in the order asked (all, when none are)."""
        parameters = _parameters(request)
        default_binary = parameters.get("binary_data_output", False)
        if type(default_binary) is not bool:
            raise bad_request("parameters.binary_data_output must be a boolean")
        asked = request.get("outputs")
        if asked is None:
            return [(name, default_binary) for name in OUTPUTS]
        if not isinstance(asked, list) or not asked:
            raise bad_request("outputs must be a non-empty array of {name, parameters}")
        wanted: list[tuple[str, bool]] = []
        for output in asked:
            name = output.get("name") if isinstance(output, dict) else None
            if type(name) is not str or name not in OUTPUTS:  # a list or object is not hashable
                raise bad_request(f"unknown output {name!r}: the model's outputs are {', '.join(OUTPUTS)}")
            if any(name == seen for seen, _ in wanted):
                raise bad_request(f"output '{name}' is asked for twice")
            options = _parameters(output, f"output '{name}': ")
            if options.get("classification"):
                raise bad_request(f"output '{name}': the classification extension is not supported")
            binary = options.get("binary_data", default_binary)
            if type(binary) is not bool:
                raise bad_request(f"output '{name}': parameters.binary_data must be a boolean")
            wanted.append((name, binary))
        return wanted

    def _respond(
        self, resp: falcon.Response, request: dict[str, Any], scored: Any, wanted: list[tuple[str, bool]], n: int
    ) -> None:
        outputs = []
        blobs = []
        for name, binary in wanted:
            datatype, dtype, field = OUTPUTS[name]
            values = getattr(scored, field)
            output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [n]}
            if binary:
                blob = values.astype(dtype, copy=False).tobytes()
                output["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                output["data"] = values.tolist()
            outputs.append(output)
        body: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": self.version, "outputs": outputs}
        if "id" in request:
            body["id"] = request["id"]
        header = orjson.dumps(body)
        if blobs:
            resp.data = b"".join([header, *blobs])
            resp.content_type = BINARY
            resp.set_header(HEADER_LENGTH, str(len(header)))
        else:
            resp.data = header
            resp.content_type = JSON


def add_routes(
    app: falcon.App,
    app_version: str,
    keys: ApiKeys,
    batch_max: int,
    scoring: Scoring | None,
    budget: RowBudget,
    unavailable_reason: str = "",
) -> None:
    """The V2 routes; without a model, the model routes answer 503 (as every model-backed route)."""
    mount(app, "/v2", StaticJson({"name": "fraud-scoring", "version": app_version, "extensions": EXTENSIONS}))
    mount(app, "/v2/health/live", Ready())
    models = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    if scoring is None:
        mount(app, "/v2/health/ready", ModelUnavailableResource(unavailable_reason, "get"))
        for path in models:
            mount(app, path, ModelUnavailableResource(unavailable_reason, "get"))
            mount(app, f"{path}/ready", ModelUnavailableResource(unavailable_reason, "get"))
            mount(app, f"{path}/infer", ModelUnavailableResource(unavailable_reason, "post"))
        return
    mount(app, "/v2/health/ready", Ready())
    metadata = ModelMetadata(scoring.version, keys)
    ready = ModelReady(scoring.version)
    infer = Inference(scoring.version, scoring, keys, budget, batch_max)
    for path in models:
        mount(app, path, metadata)
        mount(app, f"{path}/ready", ready)
        mount(app, f"{path}/infer", infer)
