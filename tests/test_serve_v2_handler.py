"""`V2Routes` over real HTTP, behind a small backend made of the real `Batcher`.

The handler runs under uvicorn on a free 127.0.0.1 port in a thread; tritonclient and httpx talk
to it. (`test_serve_v2.py` drives the same routes on `shelf serve` itself.)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
import uvicorn
from tritonclient.utils import InferenceServerException

from torchshelf.serving.batching import Batcher, QueueSpec
from torchshelf.serving.codecs import Param, TensorSpec
from torchshelf.serving.target import Call, Endpoint, make_runner
from torchshelf.serving.v2 import READY, UNAVAILABLE, ModelState, V2Model, V2Routes

TOKEN = "s3cret"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(8, 3).eval()


class Backend:
    """One batch api (`predict`, input spec [-1, 8] float32) and one plain api (`greet`)."""

    def __init__(self) -> None:
        self.model = _model()
        self.predict = Endpoint(
            name="predict",
            path="/predict",
            params=[Param("inputs", "tensor", spec=TensorSpec((-1, 8), "float32"))],
            returns="tensor",
            batch=True,
            max_batch_size=64,
            wrap_outputs=True,
        )
        self.greet = Endpoint(
            name="greet",
            path="/greet",
            params=[Param("name", "str"), Param("times", "int", required=False, default=1)],
            returns="dict",
        )
        self.loaded = True
        self.batch_sizes: list[int] = []
        self._batcher: Batcher | None = None

    def batcher(self) -> Batcher:
        if self._batcher is None:
            run = make_runner(self.predict, lambda inputs: self.model(inputs), "cpu")

            def predict(calls: list[Call]) -> Sequence[Any]:
                self.batch_sizes.append(sum(c.rows for c in calls))
                time.sleep(0.03)  # async_infer sends one request per 10 ms
                return run(calls)

            def greet(calls: list[Call]) -> Sequence[Any]:
                kw = calls[0].kwargs
                return [{"greeting": "hello " + kw["name"], "times": kw["times"]}]

            self._batcher = Batcher(
                [QueueSpec("predict", predict, max_batch_size=64), QueueSpec("greet", greet, False)]
            )
        return self._batcher

    def v2_models(self) -> Sequence[V2Model]:
        return [
            V2Model("linear", "linear", self.predict, "pytorch_safetensors"),
            V2Model("greet", "svc", self.greet, "torchshelf_service"),
        ]

    def server_ready(self) -> bool:
        return self.loaded

    def model_state(self, model: str) -> ModelState:
        if model == "linear" and not self.loaded:
            return ModelState(UNAVAILABLE, None, "unloaded")
        return ModelState(READY, "v7" if model == "linear" else "1")

    async def infer(
        self, model: str, api: str, kwargs: dict[str, Any], rows: int
    ) -> tuple[Any, str | None]:
        if model == "linear" and not self.loaded:
            raise RuntimeError("not loaded")
        result = await self.batcher().submit(api, Call(kwargs, rows), rows)
        return result, "v7" if model == "linear" else "1"

    async def load(self, model: str) -> None:
        self.loaded = True

    async def unload(self, model: str) -> None:
        self.loaded = False


async def _read_body(receive: Any, length: bytes | None) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Backend]]:
    backend = Backend()
    handler = V2Routes(backend, read_body=_read_body, server_version="9.9", api_token=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(handler, host="127.0.0.1", port=port, lifespan="off", log_level="error")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"127.0.0.1:{port}", backend
    srv.should_exit = True
    thread.join(10)


def test_health_and_metadata_with_tritonclient(server: tuple[str, Backend]) -> None:
    url, _ = server
    client = triton.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and client.is_model_ready("linear", "v7")
    assert not client.is_model_ready("linear", "v6")
    meta = client.get_server_metadata()
    assert meta == {
        "name": "torchshelf",
        "version": "9.9",
        "extensions": ["binary_tensor_data", "model_repository"],
    }
    model = client.get_model_metadata("linear")
    assert model["versions"] == ["v7"] and model["platform"] == "pytorch_safetensors"
    assert model["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 8]}]
    greet = client.get_model_metadata("greet", "1")
    assert greet["inputs"][0] == {"name": "name", "datatype": "BYTES", "shape": [1]}


@pytest.mark.parametrize("binary", [True, False])
def test_infer_binary_on_and_off(server: tuple[str, Backend], binary: bool) -> None:
    url, backend = server
    client = triton.InferenceServerClient(url)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    inp = triton.InferInput("inputs", [3, 8], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("outputs", binary_data=binary)
    result = client.infer("linear", [inp], outputs=[out], request_id="abc")
    want = backend.model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(result.as_numpy("outputs"), want, rtol=1e-6)
    response = result.get_response()
    assert response["id"] == "abc" and response["model_version"] == "v7"
    assert ("data" in response["outputs"][0]) is (not binary)


def test_service_api_with_bytes(server: tuple[str, Backend]) -> None:
    url, _ = server
    client = triton.InferenceServerClient(url)
    name = triton.InferInput("name", [1], "BYTES")
    name.set_data_from_numpy(np.array(["ada"], dtype=np.object_))
    times = triton.InferInput("times", [1], "INT64")
    times.set_data_from_numpy(np.array([3], dtype=np.int64))
    result = client.infer("greet", [name, times])
    assert result.as_numpy("greeting").tolist() == [b"hello ada"]
    assert result.as_numpy("times").tolist() == [3]


def test_errors_with_httpx(server: tuple[str, Backend]) -> None:
    url, _ = server
    base = f"http://{url}/v2/models"
    good = {"name": "inputs", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
    cases = [
        ("linear", {"inputs": [{**good, "shape": [1, 7], "data": [0.0] * 7}]}, 400, "'inputs'"),
        ("linear", {"inputs": [{**good, "datatype": "INT32", "data": [0] * 8}]}, 400, "'inputs'"),
        ("linear", {"inputs": [{**good, "datatype": "FP12"}]}, 400, "FP12"),
        ("nope", {"inputs": [good]}, 404, "unknown model 'nope'"),
        ("linear/versions/v1", {"inputs": [good]}, 404, "no version 'v1'"),
    ]
    with httpx.Client() as http:
        for path, body, status, text in cases:
            r = http.post(f"{base}/{path}/infer", json=body)
            assert r.status_code == status, r.text
            assert text in r.json()["error"]
        r = http.post(f"{base}/linear/infer", content=b"{not json")
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
        r = http.get(f"{base}/linear/infer")
        assert r.status_code == 405
        r = http.get(f"http://{url}/v2/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        r = http.post(f"{base}/linear/infer", json={"inputs": [good]})
        assert r.headers["x-model-version"] == "v7"


def test_async_infer_batches_together(server: tuple[str, Backend]) -> None:
    url, backend = server
    client = triton.InferenceServerClient(url, concurrency=16)
    backend.batch_sizes.clear()
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(64)]
    pending = []
    for x in xs:
        inp = triton.InferInput("inputs", [1, 8], "FP32")
        inp.set_data_from_numpy(x)
        pending.append(client.async_infer("linear", [inp]))
    for x, req in zip(xs, pending, strict=True):
        want = backend.model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(req.get_result().as_numpy("outputs"), want, rtol=1e-5, atol=1e-6)
    assert max(backend.batch_sizes) > 1


def test_repository_load_unload(server: tuple[str, Backend]) -> None:
    url, backend = server
    client = triton.InferenceServerClient(url)
    index = client.get_model_repository_index()
    assert {"name": "linear", "version": "v7", "state": "READY", "reason": ""} in index
    client.unload_model("linear")
    assert not client.is_model_ready("linear")
    assert [m["name"] for m in client.get_model_repository_index()] == ["linear", "greet"]
    ready = client.get_model_repository_index(query_params=None)
    assert {m["name"]: m["state"] for m in ready}["linear"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as exc:
        client.infer("linear", [_one()])
    assert "not loaded" in str(exc.value)
    client.load_model("linear")
    assert client.is_model_ready("linear")
    assert client.infer("linear", [_one()]).as_numpy("outputs").shape == (1, 3)


def _one() -> triton.InferInput:
    inp = triton.InferInput("inputs", [1, 8], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 8), dtype=np.float32))
    return inp


def test_v2_model_names_of_several_targets() -> None:
    from torchshelf.serving.options import ServeOptions
    from torchshelf.serving.registry import ModelRegistry
    from torchshelf.serving.target import Served
    from torchshelf.serving.v2 import v2_models_of

    def ep(name: str) -> Endpoint:
        return Endpoint(name=name, path=f"/{name}", params=[Param("x", "tensor")])

    def served(kind: str, name: str, apis: list[str], fmt: str | None = None) -> Served:
        return Served(
            kind=kind,
            title=name,
            device="cpu",
            endpoints=[ep(a) for a in apis],
            loader=lambda device: {},
            details={"format": fmt} if fmt else {},
            name=name,
            version="1",
        )

    registry = ModelRegistry(
        [
            served("model", "m", ["encode", "predict"], "torchscript"),
            served("service", "svc", ["predict", "greet"]),
            served("service", "svc2", ["greet"]),
        ],
        ServeOptions(),
    )
    got = [(m.name, m.model, m.endpoint.name, m.platform, m.series) for m in v2_models_of(registry)]
    assert got == [
        ("m.encode", "m", "encode", "pytorch_torchscript", "m/encode"),
        ("m", "m", "predict", "pytorch_torchscript", "m/predict"),
        ("predict", "svc", "predict", "torchshelf_service", "svc/predict"),
        ("svc.greet", "svc", "greet", "torchshelf_service", "svc/greet"),
        ("svc2.greet", "svc2", "greet", "torchshelf_service", "svc2/greet"),
    ]


def test_v2_readiness_follows_the_app_through_a_drain() -> None:
    from starlette.testclient import TestClient

    from torchshelf.serving.app import build_app
    from torchshelf.serving.options import ServeOptions
    from torchshelf.serving.target import Served

    model = _model()
    served = Served(
        kind="model",
        title="lin:1",
        device="cpu",
        endpoints=[
            Endpoint(
                name="predict",
                path="/predict",
                params=[Param("inputs", "tensor", spec=TensorSpec((-1, 8), "float32"))],
                returns="tensor",
                batch=True,
                wrap_outputs=True,
            )
        ],
        loader=lambda device: {"predict": lambda inputs: model(inputs)},
        name="lin",
        version="1",
    )
    app = build_app(served, ServeOptions())
    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/v2/health/ready").json() == {"ready": True}
        body = {
            "inputs": [{"name": "inputs", "shape": [1, 8], "datatype": "FP32", "data": [1] * 8}]
        }
        r = client.post("/v2/models/lin/infer", json=body)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        app.begin_drain()
        r = client.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        assert client.get("/readyz").status_code == 503
