"""Serving pieces in-process: runners that merge and split batches, codecs, the app's auth."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch

from torchshelf.serving.app import ServeOptions, build_app
from torchshelf.serving.codecs import InputError, Param, TensorSpec, decode_param, encode_json
from torchshelf.serving.target import Call, Endpoint, make_runner, resolve_target

with warnings.catch_warnings():  # starlette nudges towards httpx2, which is not installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def _batch_endpoint(**kw: object) -> Endpoint:
    return Endpoint("f", "/f", [Param("x", "tensor")], batch=True, **kw)  # type: ignore[arg-type]


def test_a_batch_runner_splits_tuple_and_dict_outputs_back_per_caller() -> None:
    calls = [Call({"x": torch.full((k, 2), float(k))}, k) for k in (1, 3, 2)]

    tuple_out = make_runner(_batch_endpoint(), lambda x: (x * 2, x.sum(1)), "cpu")(calls)
    assert [t[0].shape[0] for t in tuple_out] == [1, 3, 2]
    assert torch.equal(tuple_out[1][0], torch.full((3, 2), 6.0))
    assert torch.equal(tuple_out[2][1], torch.full((2,), 4.0))

    dict_out = make_runner(_batch_endpoint(), lambda x: {"y": x + 1}, "cpu")(calls)
    assert torch.equal(dict_out[0]["y"], torch.full((1, 2), 2.0))


def test_a_batch_runner_merges_along_batch_dim() -> None:
    ep = _batch_endpoint(batch_dim=1)
    calls = [Call({"x": torch.zeros(2, 1)}, 1), Call({"x": torch.ones(2, 3)}, 3)]
    seen: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x * 10

    out = make_runner(ep, fn, "cpu")(calls)
    assert seen == [(2, 4)]
    assert out[0].shape == (2, 1) and torch.equal(out[1], torch.full((2, 3), 10.0))


def test_a_batch_function_returning_the_wrong_length_is_an_error() -> None:
    ep = Endpoint("f", "/f", [Param("items", "list", "float")], batch=True)
    run = make_runner(ep, lambda items: items[:-1], "cpu")
    with pytest.raises(ValueError, match="returned 2 results for 3 items"):
        run([Call({"items": [1.0]}, 1), Call({"items": [2.0, 3.0]}, 2)])


def test_json_tensors_are_decoded_against_the_spec() -> None:
    spec = TensorSpec((-1, 2), "int64")
    p = Param("x", "tensor", spec=spec)
    assert decode_param(p, {"x": [[1, 2]]}).dtype == torch.int64
    with pytest.raises(InputError, match="integers"):
        decode_param(p, {"x": [[1.5, 2]]})
    f = Param("x", "tensor", spec=TensorSpec((-1, 2), "float32"))
    with pytest.raises(InputError, match="null"):
        decode_param(f, {"x": [[None, 1.0]]})
    with pytest.raises(InputError, match="rectangular"):
        decode_param(f, {"x": [[1.0], [1.0, 2.0]]})
    assert encode_json({"y": torch.arange(3)}) == b'{"y":[0,1,2]}'


SERVICE = """
import torch
import torchshelf.serving as ts

@ts.service
class Echo:
    @ts.api
    def echo(self, x: torch.Tensor) -> torch.Tensor:
        return x
"""


def _ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)


def test_metrics_auth_guards_metrics_but_never_health(tmp_path: Path) -> None:
    path = tmp_path / "echo_svc.py"
    path.write_text(SERVICE)
    options = ServeOptions(api_token="tok", metrics_auth=True)
    with TestClient(build_app(resolve_target(f"{path}:Echo"), options)) as client:
        _ready(client)
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 401
        ok = {"Authorization": "Bearer tok"}
        assert client.get("/metrics", headers=ok).status_code == 200
        assert client.post("/echo", json={"x": [1.0]}).status_code == 401
        r = client.post("/echo", json={"x": [1.0, 2.0]}, headers=ok)
        assert r.status_code == 200 and r.json() == [1.0, 2.0]
        assert 'status="401"' in client.get("/metrics", headers=ok).text
