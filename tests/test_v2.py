"""The Open Inference Protocol (KServe V2) over real nginx and gunicorn, spoken by a client nobody
here wrote: tritonclient's InferenceServerClient (binary tensor data and JSON), plus raw HTTP for
the error cases."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model import synthetic
from service.core.features import FEATURE_BOUND, FEATURES, FLOAT32_MAX
from tests.helpers import TEST_KEY, Client, call_upstream, samples, start_stack, value

BATCH_MAX = 1000
KEY = {"X-API-Key": TEST_KEY}  # tritonclient adds to the dict it is given: pass a copy each call
THRESHOLD = 50


@pytest.fixture(scope="module")
def stack(small_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("v2-logs")
    # Thousands of rows a second from one key: the row budget is lifted here (tests/test_rate_budget.py
    # proves V2 spends it).
    running = start_stack(
        small_model[0], logs, BATCH_MAX=str(BATCH_MAX), RATE_LIMIT_PER_KEY="1000000", RATE_LIMIT_BURST="100000"
    )
    running.logs = logs
    yield running
    running.stop()


@pytest.fixture(scope="module")
def triton_client(stack):
    client = triton.InferenceServerClient(url=f"127.0.0.1:{stack.settings.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def rows():
    """3,000 rows: synthetic transactions, every fraud among them first, so that scores vary."""
    X, y = synthetic.generate(20000, seed=31)
    return np.vstack([X[y == 1], X[y == 0]])[:3000]


def expected(estimator, X: np.ndarray) -> dict[str, np.ndarray]:
    p = estimator.predict_proba(X)[:, 1]
    score = np.array([round(100.0 * v) for v in p.tolist()], dtype=np.int32)
    return {"probability": p, "fraud_score": score, "is_fraud": score >= THRESHOLD}


def infer(client, X: np.ndarray, datatype: str, binary_in: bool, binary_out: bool | None, names=None):
    tensor = triton.InferInput("features", list(X.shape), datatype)
    tensor.set_data_from_numpy(X.astype(np.float64 if datatype == "FP64" else np.float32), binary_data=binary_in)
    outputs = None
    if binary_out is not None:
        outputs = [triton.InferRequestedOutput(n, binary_data=binary_out) for n in names or expected_names()]
    return client.infer("fraud", [tensor], outputs=outputs, headers=dict(KEY))


def expected_names() -> list[str]:
    return ["probability", "fraud_score", "is_fraud"]


def assert_bit_equal(result, want: dict[str, np.ndarray], names=None) -> None:
    for name in names or expected_names():
        got = result.as_numpy(name)
        assert got is not None, name
        assert got.dtype == want[name].dtype or name != "probability"
        if name == "probability":
            assert got.dtype == np.float64
            assert np.array_equal(got.view(np.int64), want[name].view(np.int64)), "not bit-equal to predict_proba"
        else:
            assert np.array_equal(got, want[name]), name


@pytest.mark.parametrize(
    "part, datatype, binary_in, binary_out",
    [
        (0, "FP64", True, None),  # tritonclient's default: binary in, every output binary
        (1, "FP64", False, False),  # JSON in, JSON out
        (2, "FP64", True, False),
        (0, "FP32", True, True),
        (1, "FP32", False, False),
        (2, "FP32", False, True),
    ],
)
def test_infer_through_tritonclient_is_bit_equal_to_sklearn(
    triton_client, small_model, rows, part, datatype, binary_in, binary_out
):
    X = rows[part * BATCH_MAX : (part + 1) * BATCH_MAX]
    result = infer(triton_client, X, datatype, binary_in, binary_out)
    # FP32: the probability of exactly the float32 values sent (what sklearn scores anyway).
    scored = X if datatype == "FP64" else X.astype(np.float32).astype(np.float64)
    assert_bit_equal(result, expected(small_model[1], scored))
    response = result.get_response()
    assert response["model_name"] == "fraud" and response["model_version"] == "test-3"
    for output in response["outputs"]:
        assert output["shape"] == [BATCH_MAX]
        assert ("parameters" in output) == (binary_out is not False)


def test_only_the_outputs_asked_for_in_the_order_asked(triton_client, small_model, rows):
    X = rows[:7]
    tensor = triton.InferInput("features", [7, 30], "FP64")
    tensor.set_data_from_numpy(X)
    outputs = [
        triton.InferRequestedOutput("is_fraud", binary_data=True),
        triton.InferRequestedOutput("probability", binary_data=False),
    ]
    result = triton_client.infer("fraud", [tensor], outputs=outputs, headers=dict(KEY), request_id="req-7")
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["is_fraud", "probability"]
    assert response["id"] == "req-7"
    assert result.as_numpy("fraud_score") is None
    assert_bit_equal(result, expected(small_model[1], X), ["is_fraud", "probability"])


def test_metadata_and_health_through_tritonclient(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("fraud")
    assert triton_client.is_model_ready("fraud", model_version="test-3")
    assert not triton_client.is_model_ready("fraud", model_version="other")
    assert not triton_client.is_model_ready("credit")
    server = triton_client.get_server_metadata()
    assert server["name"] == "fraud-scoring" and "binary_tensor_data" in server["extensions"]
    model = triton_client.get_model_metadata("fraud", headers=dict(KEY))
    assert model["name"] == "fraud" and model["versions"] == ["test-3"]
    assert model["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 30]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
        ("probability", "FP64", [-1]),
        ("fraud_score", "INT32", [-1]),
        ("is_fraud", "BOOL", [-1]),
    ]
    assert triton_client.get_model_metadata("fraud", model_version="test-3", headers=dict(KEY)) == model


def test_client_errors_reach_tritonclient_as_the_servers_message(triton_client, rows):
    with pytest.raises(InferenceServerException, match="a valid X-API-Key header is required"):
        triton_client.get_model_metadata("fraud")
    with pytest.raises(InferenceServerException, match="unknown model 'credit'"):
        triton_client.get_model_metadata("credit", headers=dict(KEY))
    with pytest.raises(InferenceServerException, match=r"at most 1000 rows per request \(BATCH_MAX\), got 1001"):
        infer(triton_client, np.vstack([rows[:1001]]), "FP64", True, None)
    with pytest.raises(InferenceServerException, match=r"element \[2, 5\] \(V5\) must be a finite number"):
        X = rows[:4].copy()
        X[2, 5] = np.nan
        infer(triton_client, X, "FP64", True, None)


def test_a_headers_dict_reused_after_a_binary_request_is_refused_and_a_fresh_one_is_not(triton_client, rows):
    """docs/api.md's warning: tritonclient writes Inference-Header-Content-Length into the headers
    dict it is given; the same dict on a JSON request then declares a JSON header of the binary
    request's length, and the request is refused (400) as the header says. A fresh dict scores."""

    def json_features() -> triton.InferInput:
        tensor = triton.InferInput("features", [3, 30], "FP64")
        tensor.set_data_from_numpy(rows[:3], binary_data=False)
        return tensor

    reused = dict(KEY)
    binary = triton.InferInput("features", [1, 30], "FP64")
    binary.set_data_from_numpy(rows[:1])  # binary by default
    triton_client.infer("fraud", [binary], headers=reused)
    assert "Inference-Header-Content-Length" in reused
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer("fraud", [json_features()], headers=reused)
    assert refused.value.status() == "400", refused.value
    fresh = triton_client.infer("fraud", [json_features()], headers=dict(KEY))
    assert fresh.as_numpy("probability").shape == (3,)


def header_and_binary(request: dict, binary: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(request).encode()
    return header + binary, {"Inference-Header-Content-Length": str(len(header))}


def tensor(data, shape=(1, 30), datatype="FP64", **extra) -> dict:
    return {"inputs": [{"name": "features", "shape": list(shape), "datatype": datatype, "data": data, **extra}]}


def post(client: Client, body, headers=None, path="/v2/models/fraud/infer"):
    if isinstance(body, dict):
        body = json.dumps(body)
    return client.request("POST", path, body, headers=headers)


def assert_v2_error(reply, status: int, fragment: str) -> str:
    assert reply.status == status, (reply.status, reply.raw)
    body = reply.json
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert fragment in body["error"], body
    return body["error"]


def test_json_data_nested_or_flat_ints_or_floats_score_alike(client, rows):
    X = rows[:3]
    flat = post(client, tensor(X.ravel().tolist(), shape=(3, 30)))
    nested = post(client, tensor(X.tolist(), shape=(3, 30)))
    assert flat.status == 200 and nested.status == 200, (flat.raw, nested.raw)
    assert flat.json == nested.json
    assert flat.headers["Content-Type"].startswith("application/json")
    assert "Inference-Header-Content-Length" not in flat.headers
    ints = post(client, tensor([1] * 30))
    floats = post(client, tensor([1.0] * 30))
    assert ints.status == 200 and ints.json == floats.json
    # 1.0 is a JSON integer (JSON Schema's reading, which the OpenAPI document's shape uses).
    whole = post(client, tensor([1.0] * 30, shape=(1.0, 30.0)))
    assert whole.status == 200 and whole.json == floats.json, whole.raw


BAD_REQUESTS = [
    (tensor([0.5] * 29), 400, "must hold 1 x 30 numbers"),
    (tensor([0.5] * 30, shape=(1, 29)), 400, "shape must be [N, 30]"),
    (tensor([0.5] * 30, shape=(0, 30)), 400, "shape must be [N, 30]"),
    (tensor([0.5] * 30, shape=(1, 30, 1)), 400, "shape must be [N, 30]"),
    (tensor([0.5] * 30, shape=("1", 30)), 400, "shape must be [N, 30]"),
    (tensor([0.5] * 30, shape=(1.5, 30)), 400, "shape must be [N, 30]"),
    (tensor([0.5] * 30, shape=(True, 30)), 400, "shape must be [N, 30]"),
    (tensor([0.5] * 30, datatype="INT32"), 400, "datatype must be FP64 or FP32"),
    (tensor([0.5] * 30, datatype=["FP64"]), 400, "datatype must be FP64 or FP32"),  # unhashable
    (tensor([0.5] * 30, datatype={"FP64": 1}), 400, "datatype must be FP64 or FP32"),
    (tensor([0.5] * 29 + [True]), 400, "numbers only"),
    (tensor([0.5] * 29 + ["1"]), 400, "numbers only"),
    (tensor([0.5] * 29 + [None]), 400, "numbers only"),
    (
        tensor([[0.5] * 30]) | {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": []}]},
        400,
        "unknown input 'x'",
    ),
    (tensor([0.5] * 29 + [1e39]), 400, "element [0, 29] (Amount) must be a finite number within the float32 range"),
    (tensor([0.5] * 29 + [3.5e38], datatype="FP32"), 400, "element [0, 29] (Amount)"),
    (tensor([0.5] * 30, shape=(1001, 30)), 413, "at most 1000 rows"),
    ({"inputs": []}, 400, "inputs must be an array of one tensor"),
    ({}, 400, "inputs must be an array of one tensor"),
    ("[1, 2]", 400, "must be a JSON object"),
    (tensor([0.5] * 30) | {"outputs": [{"name": "reasons"}]}, 400, "unknown output 'reasons'"),
    (tensor([0.5] * 30) | {"outputs": [{"name": ["probability"]}]}, 400, "unknown output ['probability']"),
    (tensor([0.5] * 30) | {"outputs": [{"name": {"probability": 1}}]}, 400, "unknown output {'probability': 1}"),
    (
        tensor([0.5] * 30) | {"outputs": [{"name": "is_fraud", "parameters": {"classification": 2}}]},
        400,
        "classification",
    ),
    (tensor([0.5] * 30) | {"parameters": {"binary_data_output": "yes"}}, 400, "binary_data_output must be a boolean"),
    # What the OpenAPI document refuses, the service refuses: an id is a string, parameters an object.
    (tensor([0.5] * 30) | {"id": 7}, 400, "id must be a string, got int"),
    (tensor([0.5] * 30) | {"parameters": None}, 400, "parameters must be an object"),
    (tensor([0.5] * 30) | {"outputs": [{"name": "is_fraud", "parameters": False}]}, 400, "parameters must be"),
    (
        {"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP64", "data": [0.5] * 30, "parameters": []}]},
        400,
        "input 'features': parameters must be an object",
    ),
    (
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 30],
                    "datatype": "FP64",
                    "data": [0.5] * 30,
                    "parameters": {"binary_data_size": None},
                }
            ]
        },
        400,
        "data and binary_data_size are exclusive",
    ),
    ('{"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP64", "data": [NaN]}]}', 400, "not valid JSON"),
    ("{", 400, "not valid JSON"),
    ("", 400, "not valid JSON"),
]


@pytest.mark.parametrize("integer", [int(FLOAT32_MAX) + 1, FEATURE_BOUND, -FEATURE_BOUND, FEATURE_BOUND + 1])
def test_an_fp64_integer_at_the_bound_is_decided_as_in_a_transaction(client, integer):
    """JSON carries the integer whole; V2 and v1 read it as its nearest double alike (the schema's
    exact bound, FEATURE_BOUND, says which: tests/test_schema.py)."""
    values = [0.5] * 29 + [integer]
    v2 = post(client, tensor(values))
    v1 = client.request("POST", "/v1/fraud-score", json.dumps(dict(zip(FEATURES, values, strict=True))))
    assert (v2.status, v1.status) == ((200, 200) if abs(integer) <= FEATURE_BOUND else (400, 422)), (v2.raw, v1.raw)


@pytest.mark.parametrize("body, status, fragment", BAD_REQUESTS)
def test_bad_requests_get_the_protocols_error_shape(client, body, status, fragment):
    assert_v2_error(post(client, body), status, fragment)


def test_binary_tensor_data_errors(client, rows):
    row = rows[0]
    good = {
        "inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP64", "parameters": {"binary_data_size": 240}}]
    }
    body, headers = header_and_binary(good, row.astype("<f8").tobytes())
    assert post(client, body, headers).status == 200
    body, headers = header_and_binary(good, row.astype("<f8").tobytes()[:-8])
    assert_v2_error(post(client, body, headers), 400, "binary_data_size says 240 and 232 bytes follow")
    inf = row.copy()
    inf[0] = np.inf
    body, headers = header_and_binary(good, inf.astype("<f8").tobytes())
    assert_v2_error(post(client, body, headers), 400, "element [0, 0] (Time) must be a finite number")
    assert post(client, body, headers).json["error"].endswith("got inf")  # the value, not numpy's repr
    body, _ = header_and_binary(good, row.astype("<f8").tobytes())
    header_length = str(len(body) - 240)
    assert post(client, body, {"Inference-Header-Content-Length": "0" * 5000 + header_length}).status == 200
    # "²" and "1²" pass str.isdigit() but not int(): latin-1 header bytes, not digits
    # "9" * 5000: beyond the 4,300 digits int() reads
    for length in ("0", "-1", "abc", str(len(body) + 1), "+1", "\xb2", "1\xb2", "\xb9" * 3, "9" * 5000, "0" * 5000):
        reply = post(client, body, {"Inference-Header-Content-Length": length})
        assert len(assert_v2_error(reply, 400, "Inference-Header-Content-Length must be")) < 200  # the value cut
    json_input, headers = header_and_binary(tensor([0.5] * 30), b"\0" * 8)
    assert_v2_error(post(client, json_input, headers), 400, "no input declares them")
    compressed = post(client, tensor([0.5] * 30), {"Content-Encoding": "gzip"})
    assert_v2_error(compressed, 415, "compressed")


def test_deadline_refusals_have_the_protocols_shape(client, stack):
    """The deadline is checked before Falcon (service/api/deadline.py); its refusals under /v2 are
    {"error": message} too, as a V2 client reads them."""
    request = tensor([0.5] * 30)
    assert_v2_error(post(client, request, {"X-Deadline-Ms": "soon"}), 400, "X-Deadline-Ms must be a whole number")
    late = time.time() - 10  # nginx's stamp of a request that waited 10 s in the queue
    status, _, answer = call_upstream(
        stack.socket, "POST", "/v2/models/fraud/infer", late, json.dumps(request).encode()
    )
    assert status == 503 and list(json.loads(answer)) == ["error"], answer
    assert "waited" in json.loads(answer)["error"]


def test_binary_outputs_follow_the_json_header(client, small_model, rows):
    X = rows[:5]
    request = tensor(X.tolist(), shape=(5, 30)) | {"parameters": {"binary_data_output": True}}
    reply = post(client, request)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/octet-stream"
    split = int(reply.headers["Inference-Header-Content-Length"])
    header = json.loads(reply.raw[:split])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [5 * 8, 5 * 4, 5 * 1]  # FP64, INT32, BOOL one byte each
    blob = reply.raw[split:]
    assert len(blob) == sum(sizes)
    want = expected(small_model[1], X)
    assert np.frombuffer(blob[:40], "<f8").tolist() == want["probability"].tolist()
    assert np.frombuffer(blob[40:60], "<i4").tolist() == want["fraud_score"].tolist()
    assert list(blob[60:]) == [int(v) for v in want["is_fraud"]]


@pytest.mark.parametrize(
    "method, path, status, fragment",
    [
        ("GET", "/v2/models/credit", 404, "unknown model 'credit'"),
        ("GET", "/v2/models/fraud/versions/9", 404, "unknown version '9'"),
        ("GET", "/v2/models/fraud/versions/9/ready", 404, "unknown version '9'"),
        ("POST", "/v2/models/fraud/versions/9/infer", 404, "unknown version '9'"),
        ("POST", "/v2/models/credit/infer", 404, "unknown model 'credit'"),
        ("GET", "/v2/models/fraud/infer", 405, ""),
        ("GET", "/v2/nothing", 404, ""),
    ],
)
def test_unknown_models_versions_and_paths(client, method, path, status, fragment):
    body = tensor([0.5] * 30) if method == "POST" else None
    assert_v2_error(client.request(method, path, body), status, fragment)


def test_the_api_key_is_required_for_model_metadata_and_inference(client):
    assert_v2_error(client.request("GET", "/v2/models/fraud", key=None), 403, "X-API-Key")
    assert_v2_error(
        client.request("POST", "/v2/models/fraud/infer", tensor([0.5] * 30), key="wrong-key-0123456789"),
        403,
        "X-API-Key",
    )
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/fraud/ready"):
        assert client.request("GET", path, key=None).status == 200, path


def test_nginx_keeps_the_body_in_memory_up_to_the_limit_and_refuses_more(client, stack, rows):
    X = np.resize(rows, (BATCH_MAX, 30))
    as_json = tensor(X.tolist(), shape=X.shape)
    assert len(json.dumps(as_json)) > 64 * 1024  # more than nginx's default in-memory buffer
    assert post(client, as_json).status == 200
    padded = json.dumps(as_json | {"padding": "x" * (BATCH_MAX * 1300)})
    assert_v2_error(post(client, padded), 413, "too large")
    assert "buffered to a temporary file" not in (stack.logs / "stack.log").read_text()


def test_rows_scored_through_v2_are_counted_in_the_metrics(client, rows):
    before = samples(client)
    X = rows[:40]
    assert post(client, tensor(X.tolist(), shape=(40, 30))).status == 200
    after = samples(client)
    scored = sum(
        value(after, "fraud_scored_total", is_fraud=f) - value(before, "fraud_scored_total", is_fraud=f)
        for f in ("true", "false")
    )
    assert scored == 40
    route = {"route": "/v2/models/{name}/infer", "method": "POST", "status": "200"}
    assert value(after, "fraud_http_requests_total", **route) - value(before, "fraud_http_requests_total", **route) == 1
