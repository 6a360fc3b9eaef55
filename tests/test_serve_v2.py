"""The Open Inference Protocol on `shelf serve` itself: real server processes, the real
`tritonclient[http]` client, and plain httpx for the errors.

Two servers per run: two stored models (FP32 and FP16) in one process, and a service whose batch
api reports which requests shared each batch, so V2 and native requests are seen batched together.
"""

from __future__ import annotations

import os
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from servers import Server, metric
from tritonclient.utils import InferenceServerException

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

SERVICE_SOURCE = textwrap.dedent(
    '''
    """A service for test_serve_v2.py: a batch api that says who shared each batch."""
    import time

    import torch

    import torchshelf.serving as ts


    @ts.service
    class Mixer:
        @ts.api(batch=True, max_batch_size=64, max_latency_ms=20)
        def mix(self, x: torch.Tensor) -> dict:
            time.sleep(0.03)  # long enough that concurrent callers queue behind a batch
            # column 0 of each row marks its sender: 1 = V2, 2 = native
            senders = sorted({int(v) for v in x[:, 0].tolist()})
            return {"doubled": x * 2, "senders": torch.tensor([senders] * len(x)).sum(1)}

        @ts.api
        def greet(self, name: str, times: int = 1) -> dict:
            return {"greeting": ("hello " + name) * times, "length": len(name)}
    '''
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("store")
    old = os.environ.get("TORCHSHELF_HOME")
    os.environ["TORCHSHELF_HOME"] = str(root)
    import torchshelf

    torch.manual_seed(3)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    half = torch.nn.Linear(8, 3).half()
    brain = torch.nn.Linear(8, 2).to(torch.bfloat16)
    spec = {"batchable": True, "batch_dim": 0}
    mlp_tag = torchshelf.save_model(
        "mlp",
        mlp,
        signatures={"__call__": {**spec, "input_spec": {"shape": [-1, 8], "dtype": "float32"}}},
    )
    half_tag = torchshelf.save_model(
        "half",
        half,
        signatures={"__call__": {**spec, "input_spec": {"shape": [-1, 8], "dtype": "float16"}}},
    )
    brain_tag = torchshelf.save_model(
        "brain",
        brain,
        signatures={"__call__": {**spec, "input_spec": {"shape": [-1, 8], "dtype": "bfloat16"}}},
    )
    yield {
        "root": str(root),
        "brain": (str(brain_tag), brain.eval()),
        "mlp": (str(mlp_tag), mlp.eval()),
        "half": (str(half_tag), half.eval()),
    }
    if old is None:
        os.environ.pop("TORCHSHELF_HOME", None)
    else:
        os.environ["TORCHSHELF_HOME"] = old


@pytest.fixture(scope="module")
def models(store: dict[str, Any]) -> Iterator[Server]:
    tags = [store[name][0] for name in ("mlp", "half", "brain")]
    server = Server(*tags, env={"TORCHSHELF_HOME": store["root"]})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(store: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("svc") / "mixer.py"
    path.write_text(SERVICE_SOURCE)
    server = Server(
        f"{path}:Mixer", env={"TORCHSHELF_HOME": store["root"], "TORCHSHELF_API_TOKEN": TOKEN}
    )
    yield server
    server.stop()


def _version(tag: str) -> str:
    return tag.partition(":")[2]


# -- health and metadata ------------------------------------------------------------------------


def test_liveness_readiness_and_metadata(models: Server, store: dict[str, Any]) -> None:
    client = triton.InferenceServerClient(models.host)
    assert client.is_server_live() and client.is_server_ready()
    version = _version(store["mlp"][0])
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", version)
    assert not client.is_model_ready("mlp", "no-such-version")
    server = client.get_server_metadata()
    assert server["name"] == "torchshelf"
    assert {"binary_tensor_data", "model_repository"} <= set(server["extensions"])
    meta = client.get_model_metadata("half")
    assert meta["name"] == "half" and meta["versions"] == [_version(store["half"][0])]
    assert meta["inputs"] == [{"name": "inputs", "datatype": "FP16", "shape": [-1, 8]}]
    # a stored model's outputs are probed once (zeros shaped by its input spec): exact
    assert meta["outputs"] == [{"name": "outputs", "datatype": "FP16", "shape": [-1, 3]}]
    assert client.get_model_metadata("mlp", version)["inputs"][0]["datatype"] == "FP32"


# -- infer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", ["mlp", "half"])
def test_infer_fp32_and_fp16(
    models: Server, store: dict[str, Any], name: str, binary: bool
) -> None:
    tag, model = store[name]
    dtype = np.float16 if name == "half" else np.float32
    client = triton.InferenceServerClient(models.host)
    x = np.random.default_rng(4).standard_normal((5, 8)).astype(dtype)
    inp = triton.InferInput("inputs", [5, 8], "FP16" if name == "half" else "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("outputs", binary_data=binary)
    result = client.infer(name, [inp], outputs=[out], request_id=f"req-{name}")
    got = result.as_numpy("outputs")
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(
        got.astype(np.float64), want.astype(np.float64), rtol=1e-3, atol=1e-3
    )
    response = result.get_response()
    assert response["id"] == f"req-{name}" and response["model_version"] == _version(tag)
    assert ("data" in response["outputs"][0]) is not binary


def test_infer_bf16_takes_the_binary_extension(models: Server, store: dict[str, Any]) -> None:
    import ml_dtypes

    _, model = store["brain"]
    client = triton.InferenceServerClient(models.host)
    x = np.random.default_rng(6).standard_normal((3, 8)).astype(ml_dtypes.bfloat16)
    inp = triton.InferInput("inputs", [3, 8], "BF16")
    inp.set_data_from_numpy(x, binary_data=True)
    got = client.infer("brain", [inp]).as_numpy("outputs")
    with torch.inference_mode():
        want = model(torch.from_numpy(x.view(np.int16)).view(torch.bfloat16))
    assert got.dtype == ml_dtypes.bfloat16
    assert np.array_equal(got.view(np.int16), want.view(torch.int16).numpy())  # bit-exact


def test_async_infer_64_in_flight_matches_the_model(models: Server, store: dict[str, Any]) -> None:
    _, model = store["mlp"]
    client = triton.InferenceServerClient(models.host, concurrency=16)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 8)).astype(np.float32) for _ in range(64)]
    pending = []
    for i, x in enumerate(xs):
        inp = triton.InferInput("inputs", [2, 8], "FP32")
        inp.set_data_from_numpy(x, binary_data=i % 2 == 0)
        pending.append(client.async_infer("mlp", [inp], request_id=str(i)))
    for i, (x, req) in enumerate(zip(xs, pending, strict=True)):
        result = req.get_result()
        assert result.get_response()["id"] == str(i)
        with torch.inference_mode():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(result.as_numpy("outputs"), want, rtol=1e-5, atol=1e-6)


def test_v2_and_native_requests_share_one_batch_queue(service: Server) -> None:
    """Concurrent V2 and native callers; the api reports who shared each batch."""
    before = metric(service.url, "torchshelf_batch_size_count", api="mix")
    items_before = metric(service.url, "torchshelf_batch_size_sum", api="mix")
    mixed: list[bool] = []
    errors: list[BaseException] = []

    def v2(i: int) -> None:
        body = {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, i, 0, 0]}]
        }
        r = httpx.post(f"{service.url}/v2/models/mix/infer", json=body, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        outs = {o["name"]: o for o in r.json()["outputs"]}
        assert outs["doubled"]["data"] == [2, 2 * i, 0, 0]
        mixed.append(outs["senders"]["data"] == [3])  # 1 + 2: both kinds in its batch

    def native(i: int) -> None:
        r = httpx.post(f"{service.url}/mix", json={"x": [[2, i, 0, 0]]}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["doubled"] == [[4, 2 * i, 0, 0]]

    def guarded(fn: Any, i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # reported below, with the thread's assertion
            errors.append(exc)

    threads = [
        threading.Thread(target=guarded, args=(v2 if i % 2 else native, i)) for i in range(48)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert any(mixed), "no batch held both a V2 and a native request"
    batches = metric(service.url, "torchshelf_batch_size_count", api="mix") - before
    items = metric(service.url, "torchshelf_batch_size_sum", api="mix") - items_before
    assert items == 48 and batches < 48  # batch-size metrics: mean > 1


def test_bytes_for_str_parameters(service: Server) -> None:
    client = triton.InferenceServerClient(service.host)
    name = triton.InferInput("name", [1], "BYTES")
    name.set_data_from_numpy(np.array(["ada"], dtype=np.object_), binary_data=False)
    times = triton.InferInput("times", [1], "INT64")
    times.set_data_from_numpy(np.array([2], dtype=np.int64))
    result = client.infer("greet", [name, times], headers=AUTH)
    assert result.as_numpy("greeting").tolist() == [b"hello adahello ada"]
    assert result.as_numpy("length").tolist() == [3]


# -- repository extension -----------------------------------------------------------------------


def test_repository_index_load_and_unload(models: Server, store: dict[str, Any]) -> None:
    client = triton.InferenceServerClient(models.host)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["mlp"]["state"] == "READY" and index["mlp"]["version"] == _version(store["mlp"][0])
    assert set(index) == {"mlp", "half", "brain"}
    client.unload_model("half")
    assert not client.is_model_ready("half")
    states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert states == {"mlp": "READY", "half": "UNAVAILABLE", "brain": "READY"}
    ready = _post(models, "/v2/repository/index", {"ready": True})
    assert [m["name"] for m in ready] == ["mlp", "brain"]
    client.load_model("half")
    assert client.is_model_ready("half")
    inp = triton.InferInput("inputs", [1, 8], "FP16")
    inp.set_data_from_numpy(np.zeros((1, 8), dtype=np.float16))
    assert client.infer("half", [inp]).as_numpy("outputs").shape == (1, 3)


def test_repository_and_infer_need_the_token(service: Server) -> None:
    client = triton.InferenceServerClient(service.host)
    for call in (
        lambda **kw: client.get_model_repository_index(**kw),
        lambda **kw: client.unload_model("greet", **kw),
    ):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert exc.value.status() == "401"
    assert client.get_model_repository_index(headers=AUTH)
    assert client.is_server_ready() and client.get_model_metadata("mix")["name"] == "mix"
    body = {"inputs": [{"name": "name", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    r = httpx.post(f"{service.url}/v2/models/greet/infer", json=body)
    assert r.status_code == 401 and "token" in r.json()["error"]


# -- errors -------------------------------------------------------------------------------------


def _post(server: Server, path: str, body: Any) -> Any:
    r = httpx.post(server.url + path, json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_errors_name_the_problem(models: Server) -> None:
    good = {"name": "inputs", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    cases = [
        ("mlp", {"inputs": [{**good, "datatype": "FP42"}]}, 400, "unknown datatype 'FP42'"),
        ("mlp", {"inputs": [{**good, "datatype": "FP64"}]}, 400, "input 'inputs'"),
        ("mlp", {"inputs": [{**good, "shape": [1, 7], "data": [0.5] * 7}]}, 400, "input 'inputs'"),
        ("mlp", {"inputs": [{**good, "shape": [2, 8]}]}, 400, "needs 16"),
        ("mlp", {"inputs": [{**good, "name": "x"}]}, 400, "unknown input 'x'"),
        ("mlp", {"inputs": [good], "outputs": [{"name": "y"}]}, 400, "unknown output 'y'"),
        ("nope", {"inputs": [good]}, 404, "unknown model 'nope'"),
        ("mlp/versions/0", {"inputs": [good]}, 404, "no version '0'"),
    ]
    for path, body, status, text in cases:
        r = httpx.post(f"{models.url}/v2/models/{path}/infer", json=body)
        assert r.status_code == status, (path, body, r.text)
        assert text in r.json()["error"], r.text
    r = httpx.post(f"{models.url}/v2/models/mlp/infer", content=b'{"inputs": [')
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = httpx.get(f"{models.url}/v2/models/nope")
    assert r.status_code == 404 and "mlp" in r.json()["error"]
    r = httpx.post(f"{models.url}/v2/models/mlp/infer", json={"inputs": [good]})
    assert r.status_code == 200 and r.headers["x-model-version"] == r.json()["model_version"]


def test_openapi_lists_the_v2_routes(models: Server) -> None:
    doc = httpx.get(models.url + "/openapi.json").json()
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/mlp",
        "/v2/models/mlp/ready",
        "/v2/models/half/infer",
        "/v2/models/mlp/versions/{model_version}/infer",
        "/v2/repository/index",
        "/v2/repository/models/half/unload",
    ):
        assert path in doc["paths"], path
    from openapi_spec_validator import validate

    validate(doc)
    example = doc["paths"]["/v2/models/mlp/infer"]["post"]["requestBody"]["content"][
        "application/json"
    ]["example"]
    assert _post(models, "/v2/models/mlp/infer", example)["outputs"][0]["shape"] == [1, 4]
