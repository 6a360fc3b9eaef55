"""`shelf serve` end to end: a real server process on a free 127.0.0.1 port, real HTTP.

Batching is checked by the server's own counters (`/metrics` batch-size histogram), never by
wall-clock thresholds. Three servers are started per run (a service class, a stored model, a slow
service) and shared by the tests that only read from them.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from servers import Server, free_port, metric

SERVICE_SOURCE = textwrap.dedent(
    '''
    """A service with two models and four apis, used by test_serve_http.py."""
    import time
    from typing import Annotated

    import torch
    from PIL import Image

    import torchshelf
    import torchshelf.serving as ts


    def build() -> tuple[torch.nn.Module, torch.nn.Module]:
        torch.manual_seed(0)
        small = torch.nn.Linear(8, 4)
        other = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )
        return small.eval(), other.eval()


    @ts.service(resources={"cpu": "1", "memory": "1Gi"})
    class TwoModels:
        def __init__(self) -> None:
            self.small, self.other = build()
            self.loaded: dict[str, torch.nn.Module] = {}

        @ts.api
        def predict(self, x: torch.Tensor) -> torch.Tensor:
            return self.small(x)

        @ts.api(batch=True, max_batch_size=64, max_latency_ms=5)
        def classify(self, items: list[torch.Tensor]) -> list[dict]:
            time.sleep(0.02)  # long enough that concurrent callers queue behind a batch
            batch = torch.stack(items)
            if (batch == 666).any():
                raise ValueError("item holds the poison value 666")
            out = self.other(batch)
            return [{"label": int(o.argmax()), "scores": o} for o in out]

        @ts.api(batch=True, max_batch_size=16)
        def embed(
            self, x: Annotated[torch.Tensor, {"shape": [-1, 8], "dtype": "float32"}]
        ) -> torch.Tensor:
            return self.small(x)

        @ts.api
        def greet(self, name: str, times: int = 1) -> dict:
            return {"greeting": "hello " + name, "times": times}

        @ts.api
        async def shout(self, text: str) -> str:
            return text.upper()

        @ts.api
        def image_size(self, image: Image.Image) -> dict:
            return {"size": list(image.size), "mode": image.mode}

        @ts.api
        def predict_with_model(self, model_name: str, input_data: torch.Tensor) -> dict:
            # on-demand loading, as in the seed's DynamicPyTorchService
            if model_name not in self.loaded:
                self.loaded[model_name] = torchshelf.load_model(f"{model_name}:latest")
            return {"model_used": model_name, "prediction": self.loaded[model_name](input_data)}
    '''
)

SLOW_SOURCE = textwrap.dedent(
    """
    import time
    from pathlib import Path

    import torchshelf.serving as ts


    @ts.service
    class Slow:
        @ts.api
        def wait(self, seconds: float, mark: str = "") -> dict:
            if mark:
                Path(mark).touch()  # tells the test the call is running
            time.sleep(seconds)
            return {"slept": seconds}
    """
)

ROOT = Path(__file__).resolve().parents[1]


def _shelf(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "torchshelf", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture(scope="module")
def service_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("svc") / "two_models.py"
    path.write_text(SERVICE_SOURCE)
    return path


@pytest.fixture(scope="module")
def service_server(service_file: Path, store: tuple[str, str, torch.nn.Module]) -> Iterator[Server]:
    server = Server(
        f"{service_file}:TwoModels", "--max-body-mb", "0.05", env={"TORCHSHELF_HOME": store[0]}
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference_models(service_file: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    spec = importlib.util.spec_from_file_location("reference_two_models", service_file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("store")
    old = os.environ.get("TORCHSHELF_HOME")
    os.environ["TORCHSHELF_HOME"] = str(root)
    import torchshelf

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    tag = torchshelf.save_model(
        "mlp",
        model,
        signatures={
            "__call__": {
                "batchable": True,
                "batch_dim": 0,
                "input_spec": {"shape": [-1, 8], "dtype": "float32"},
            }
        },
    )
    yield str(root), str(tag), model.eval()
    if old is None:
        os.environ.pop("TORCHSHELF_HOME", None)
    else:
        os.environ["TORCHSHELF_HOME"] = old


@pytest.fixture(scope="module")
def model_server(store: tuple[str, str, torch.nn.Module]) -> Iterator[Server]:
    root, tag, _ = store
    server = Server(
        tag,
        "--max-body-mb",
        "0.05",
        env={"TORCHSHELF_HOME": root, "TORCHSHELF_API_TOKEN": "s3cret"},
    )
    yield server
    server.stop()


AUTH = {"Authorization": "Bearer s3cret"}


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """One shared context: building one per client costs ~30 ms, times 64 clients."""
    return ssl.create_default_context()


async def _concurrently(
    url: str, bodies: list[Any], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """One client with one connection per body, all sent at once."""

    async def one(body: Any) -> httpx.Response:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=60, verify=_ssl_context()) as c:
            if isinstance(body, bytes):
                return await c.post(url, content=body, headers=headers)
            return await c.post(url, json=body, headers=headers)

    return await asyncio.gather(*(one(b) for b in bodies))


# -- a service class ---------------------------------------------------------------------------


def test_a_service_file_serves_two_apis_backed_by_two_models(
    service_server: Server, reference_models: tuple[torch.nn.Module, torch.nn.Module]
) -> None:
    small, other = reference_models
    x = torch.randn(3, 8)
    r = httpx.post(service_server.url + "/predict", json={"x": x.tolist()})
    assert r.status_code == 200, r.text
    assert torch.allclose(torch.tensor(r.json()), small(x).detach(), atol=1e-5)
    r = httpx.post(service_server.url + "/classify", json={"items": [x[0].tolist()]})
    assert r.status_code == 200, r.text
    [answer] = r.json()
    assert answer["label"] == int(other(x[0:1]).argmax())
    r = httpx.post(service_server.url + "/greet", json={"name": "ada"})
    assert r.json() == {"greeting": "hello ada", "times": 1}


def test_async_image_and_on_demand_loading_apis_work(
    service_server: Server, store: tuple[str, str, torch.nn.Module]
) -> None:
    import io

    from PIL import Image

    url = service_server.url
    assert httpx.post(url + "/shout", json={"text": "hi"}).json() == "HI"
    buf = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buf, format="PNG")
    r = httpx.post(
        url + "/image_size", content=buf.getvalue(), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"size": [7, 5], "mode": "RGB"}
    r = httpx.post(url + "/image_size", content=b"not a png", headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "image" in r.json()["error"]
    x = torch.randn(2, 8)
    r = httpx.post(
        url + "/predict_with_model", json={"model_name": "mlp", "input_data": x.tolist()}
    )
    assert r.status_code == 200, r.text
    assert r.json()["model_used"] == "mlp"
    assert torch.allclose(torch.tensor(r.json()["prediction"]), store[2](x).detach(), atol=1e-5)


def test_64_concurrent_callers_each_get_their_own_rows_and_calls_are_batched(
    service_server: Server, reference_models: tuple[torch.nn.Module, torch.nn.Module]
) -> None:
    _, other = reference_models
    url = service_server.url
    before_count = metric(url, "torchshelf_batch_size_count", api="classify")
    before_items = metric(url, "torchshelf_batch_size_sum", api="classify")
    xs = [torch.randn(1 + i % 3, 8) for i in range(64)]
    responses = asyncio.run(_concurrently(url + "/classify", [{"items": x.tolist()} for x in xs]))
    for x, r in zip(xs, responses, strict=True):
        assert r.status_code == 200, r.text
        got = r.json()
        assert len(got) == len(x)
        expected = other(x).detach()
        for row, item in zip(expected, got, strict=True):
            assert item["label"] == int(row.argmax())
            assert torch.allclose(torch.tensor(item["scores"]), row, atol=1e-5)
    calls = metric(url, "torchshelf_batch_size_count", api="classify") - before_count
    items = metric(url, "torchshelf_batch_size_sum", api="classify") - before_items
    assert items == sum(len(x) for x in xs)
    assert calls < 64, "concurrent callers should share model calls"


def test_a_lone_request_is_run_as_a_batch_of_one(service_server: Server) -> None:
    url = service_server.url
    ones = metric(url, "torchshelf_batch_size_bucket", api="embed", le="1.0")
    count = metric(url, "torchshelf_batch_size_count", api="embed")
    r = httpx.post(url + "/embed", json={"x": [[0.5] * 8]})
    assert r.status_code == 200, r.text
    assert metric(url, "torchshelf_batch_size_bucket", api="embed", le="1.0") == ones + 1
    assert metric(url, "torchshelf_batch_size_count", api="embed") == count + 1


def test_bad_requests_get_their_own_4xx_while_good_ones_in_flight_succeed(
    service_server: Server, reference_models: tuple[torch.nn.Module, torch.nn.Module]
) -> None:
    _, other = reference_models
    url = service_server.url
    good = [torch.randn(1, 8) for _ in range(24)]
    poison = torch.full((1, 8), 666.0)
    bad_bodies: list[tuple[Any, int, str]] = [
        (b'{"items": [[1, 2', 400, "malformed JSON"),
        ({"things": [[0.0] * 8]}, 422, "missing field 'items'"),
        ({"items": [[0.0] * 8, [0.0] * 3]}, 422, "rejected this input"),
        ({"items": "abc"}, 422, "expected a list"),
        ({"items": [["a"] * 8]}, 422, "items[0]"),
        (json.dumps({"items": [[0.0] * 8] * 2000}).encode(), 413, "limit"),
        ({"items": poison.tolist()}, 422, "poison"),
    ]
    bodies = [{"items": g.tolist()} for g in good] + [b for b, _, _ in bad_bodies]
    responses = asyncio.run(_concurrently(url + "/classify", bodies))
    for g, r in zip(good, responses[: len(good)], strict=True):
        assert r.status_code == 200, r.text
        assert r.json()[0]["label"] == int(other(g).argmax())
    for (_, status, words), r in zip(bad_bodies, responses[len(good) :], strict=True):
        assert r.status_code == status, (status, r.text)
        assert words in r.json()["error"]


def test_a_tensor_input_spec_rejects_the_wrong_shape_and_dtype(service_server: Server) -> None:
    url = service_server.url + "/embed"
    r = httpx.post(url, json={"x": [[0.0] * 7]})
    assert r.status_code == 422 and "expected shape [-1, 8]" in r.json()["error"]
    body = st_save({"x": torch.zeros(2, 8, dtype=torch.float64)})
    r = httpx.post(url, content=body, headers={"Content-Type": "application/vnd.safetensors"})
    assert r.status_code == 422 and "expected dtype float32" in r.json()["error"]
    body = st_save({"x": torch.ones(2, 8)})
    r = httpx.post(url, content=body, headers={"Content-Type": "application/vnd.safetensors"})
    assert r.status_code == 200
    assert st_load(r.content)["outputs"].shape == (2, 4)


def test_errors_are_json_for_unknown_routes_and_methods(service_server: Server) -> None:
    r = httpx.get(service_server.url + "/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(service_server.url + "/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_openapi_describes_every_api_with_its_request_schema(service_server: Server) -> None:
    doc = httpx.get(service_server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/predict", "/classify", "/embed", "/greet"} <= set(doc["paths"])
    embed = doc["paths"]["/embed"]["post"]
    schema = embed["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["x"]
    assert schema["properties"]["x"]["items"]["minItems"] == 8
    greet = doc["paths"]["/greet"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert greet["properties"] == {"name": {"type": "string"}, "times": {"type": "integer"}}
    assert greet["required"] == ["name"]
    assert "422" in embed["responses"] and "503" in embed["responses"]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        return
    validate(doc)


def test_the_stored_model_openapi_document_is_valid_and_secured(model_server: Server) -> None:
    doc = httpx.get(model_server.url + "/openapi.json").json()
    op = doc["paths"]["/predict"]["post"]
    assert op["security"] == [{"bearer": []}] and "401" in op["responses"]
    inputs = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert inputs["items"]["minItems"] == inputs["items"]["maxItems"] == 8
    assert "application/vnd.safetensors" in op["requestBody"]["content"]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        return
    validate(doc)


def test_metrics_use_the_contract_names(service_server: Server) -> None:
    text = httpx.get(service_server.url + "/metrics").text
    for name in (
        "torchshelf_requests_total",
        "torchshelf_request_duration_seconds_bucket",
        "torchshelf_batch_size_bucket",
        "torchshelf_queue_depth",
        "torchshelf_queue_wait_seconds_bucket",
        "torchshelf_compute_seconds_bucket",
    ):
        assert name in text, name


def test_the_client_calls_service_apis_sync_and_async(
    service_server: Server, reference_models: tuple[torch.nn.Module, torch.nn.Module]
) -> None:
    from torchshelf.serving import Client

    small, _ = reference_models
    x = torch.randn(2, 8)
    with Client(service_server.url) as client:
        assert {"predict", "classify", "embed", "greet", "shout"} <= set(client.apis)
        assert torch.allclose(client.predict(x), small(x).detach(), atol=1e-5)
        assert torch.allclose(client.embed(x), small(x).detach(), atol=1e-5)
        assert client.greet("bob", times=2) == {"greeting": "hello bob", "times": 2}
        assert len(client.classify([x[0], x[1]])) == 2

    async def main() -> Any:
        async with Client(service_server.url, binary=False) as client:
            return await client.acall("embed", x)

    assert torch.allclose(asyncio.run(main()), small(x).detach(), atol=1e-5)


# -- a stored model ----------------------------------------------------------------------------


def test_a_stored_model_serves_predict_in_json_and_safetensors(
    model_server: Server, store: tuple[str, str, torch.nn.Module]
) -> None:
    model = store[2]
    x = torch.randn(5, 8)
    r = httpx.post(model_server.url + "/predict", json={"inputs": x.tolist()}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert torch.allclose(torch.tensor(r.json()["outputs"]), model(x).detach(), atol=1e-5)
    r = httpx.post(
        model_server.url + "/predict",
        content=st_save({"inputs": x}),
        headers={**AUTH, "Content-Type": "application/vnd.safetensors"},
    )
    assert r.headers["content-type"].startswith("application/vnd.safetensors")
    assert torch.allclose(st_load(r.content)["outputs"], model(x).detach(), atol=1e-5)


def test_a_stored_model_batches_64_concurrent_callers_correctly(
    model_server: Server, store: tuple[str, str, torch.nn.Module]
) -> None:
    model = store[2]
    xs = [torch.randn(1 + i % 4, 8) for i in range(64)]
    responses = asyncio.run(
        _concurrently(model_server.url + "/predict", [{"inputs": x.tolist()} for x in xs], AUTH)
    )
    for x, r in zip(xs, responses, strict=True):
        assert r.status_code == 200, r.text
        assert torch.allclose(torch.tensor(r.json()["outputs"]), model(x).detach(), atol=1e-5)


def test_api_routes_need_the_token_but_health_does_not(model_server: Server) -> None:
    url = model_server.url
    assert httpx.post(url + "/predict", json={"inputs": [[0.0] * 8]}).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert (
        httpx.post(url + "/predict", json={"inputs": [[0.0] * 8]}, headers=bad).status_code == 401
    )
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200


def test_a_stored_model_checks_shape_and_dtype_from_its_input_spec(model_server: Server) -> None:
    url = model_server.url + "/predict"
    r = httpx.post(url, json={"inputs": [[0.0] * 9]}, headers=AUTH)
    assert r.status_code == 422 and "shape" in r.json()["error"]
    r = httpx.post(
        url,
        content=st_save({"inputs": torch.zeros(1, 8, dtype=torch.int64)}),
        headers={**AUTH, "Content-Type": "application/vnd.safetensors"},
    )
    assert r.status_code == 422 and "dtype" in r.json()["error"]
    r = httpx.post(url, json={"input": [[0.0] * 8]}, headers=AUTH)
    assert r.status_code == 422 and "inputs" in r.json()["error"]


def test_the_client_round_trips_tensors_to_a_stored_model(
    model_server: Server, store: tuple[str, str, torch.nn.Module]
) -> None:
    from torchshelf.serving import Client, RequestError

    model = store[2]
    x = torch.randn(3, 8)
    with Client(model_server.url, token="s3cret") as client:
        assert torch.allclose(client.predict(x), model(x).detach(), atol=1e-5)
    with Client(model_server.url, token="s3cret", binary=False) as client:
        assert torch.allclose(client.predict(x), model(x).detach(), atol=1e-5)
    with Client(model_server.url) as client, pytest.raises(RequestError) as info:
        client.predict(x)
    assert info.value.status == 401


def test_a_missing_device_fails_cleanly_before_binding(
    store: tuple[str, str, torch.nn.Module],
) -> None:
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    root, tag, _ = store
    port = free_port()
    proc = _shelf(
        "serve", tag, "--device", "cuda:3", "--port", str(port), env={"TORCHSHELF_HOME": root}
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "cuda:3" in err and "available" in err and "cpu" in err
    assert "Traceback" not in err
    with socket.socket() as s:  # nothing was bound
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_stored_model_serves_on_cuda(store: tuple[str, str, torch.nn.Module]) -> None:
    root, tag, model = store
    server = Server(tag, "--device", "cuda", env={"TORCHSHELF_HOME": root})
    try:
        x = torch.randn(4, 8)
        r = httpx.post(server.url + "/predict", json={"inputs": x.tolist()})
        assert r.status_code == 200, r.text
        assert torch.allclose(torch.tensor(r.json()["outputs"]), model(x).detach(), atol=1e-4)
        assert httpx.get(server.url + "/schema").json()["device"].startswith("cuda")
    finally:
        server.stop()


def test_a_service_that_fails_to_load_exits_1_with_its_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text(
        "import torchshelf.serving as ts\n\n"
        "@ts.service\nclass Broken:\n"
        "    def __init__(self):\n        raise RuntimeError('weights missing')\n\n"
        "    @ts.api\n    def predict(self, x: int) -> int:\n        return x\n"
    )
    proc = _shelf("serve", f"{path}:Broken", "--port", str(free_port()))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "weights missing" in err


def test_a_target_that_is_neither_a_tag_nor_a_class_is_a_clean_error(tmp_path: Path) -> None:
    proc = _shelf("serve", f"{tmp_path}/nothing.py:Svc", env={"TORCHSHELF_HOME": str(tmp_path)})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "no such file" in err and "Traceback" not in err


def test_a_tag_wins_over_a_directory_or_module_of_the_same_name(
    store: tuple[str, str, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchshelf.serving.target import resolve_target

    (tmp_path / "mlp").mkdir()  # an importable namespace package named like the model
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    served = resolve_target(store[1])
    assert served.kind == "model" and served.title == store[1]


# -- overload and shutdown ---------------------------------------------------------------------


@pytest.fixture()
def slow_server(tmp_path: Path) -> Iterator[Server]:
    path = tmp_path / "slow.py"
    path.write_text(SLOW_SOURCE)
    server = Server(f"{path}:Slow", "--max-queue", "2")
    yield server
    server.stop()


def test_overload_answers_503_with_retry_after_and_sigterm_drains(
    slow_server: Server, tmp_path: Path
) -> None:
    url = slow_server.url + "/wait"
    responses = asyncio.run(_concurrently(url, [{"seconds": 0.3}] * 8))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and 503 in codes, codes
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
    assert all(set(r.json()) == {"error"} for r in responses if r.status_code == 503)

    results: list[httpx.Response] = []
    mark = tmp_path / "running"

    def call() -> None:
        results.append(httpx.post(url, json={"seconds": 1.0, "mark": str(mark)}, timeout=30))

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 20
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    slow_server.proc.send_signal(signal.SIGTERM)
    caller.join(30)
    assert slow_server.proc.wait(30) == 0
    assert results and results[0].status_code == 200 and results[0].json() == {"slept": 1.0}
