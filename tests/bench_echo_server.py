"""A tiny echo server for calibrating `shelf bench --url` (run as: python bench_echo_server.py PORT).

POST /predict answers `{"outputs": <the inputs>}`, re-encoding a same-sized JSON answer, and
records the number of items of each request in a `torchshelf_batch_size` histogram on /metrics,
so the load generator's metrics reading can be checked without a model. POST /raw takes only an octet-stream body with an
Inference-Header-Content-Length header (415 otherwise). POST /flaky answers 503
to every third request, POST /hang after a second. GET /schema describes /predict the way `shelf serve` does.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

registry = CollectorRegistry()
batch_size = Histogram(
    "torchshelf_batch_size",
    "items per call",
    ["api"],
    registry=registry,
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


async def predict(request: Request) -> Response:
    try:
        doc = json.loads(await request.body())
        inputs = doc["inputs"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'body must be {"inputs": [...]}'}, status_code=400)
    batch_size.labels(api="predict").observe(len(inputs))
    return JSONResponse({"outputs": inputs})


async def raw(request: Request) -> Response:
    """Like a V2 binary infer: one octet-stream Content-Type and a header-length header."""
    types = request.headers.getlist("content-type")
    length = request.headers.get("inference-header-content-length")
    body = await request.body()
    if types != ["application/octet-stream"] or length is None or int(length) > len(body):
        return JSONResponse({"error": f"content-type {types}, header length {length}"}, 415)
    return Response(body[: int(length)], media_type="application/json")


_calls = [0]


async def flaky(request: Request) -> Response:
    await request.body()
    _calls[0] += 1
    if _calls[0] % 3 == 0:
        return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"outputs": [0]})


async def hang(request: Request) -> Response:
    await request.body()
    await asyncio.sleep(1.0)
    return JSONResponse({"outputs": [0]})


async def schema(request: Request) -> Response:
    api = {
        "name": "predict",
        "path": "/predict",
        "batch": True,
        "batch_dim": 0,
        "input_spec": {"shape": [-1, 2, 3], "dtype": "float32"},
        "params": [{"name": "inputs", "kind": "tensor", "shape": [-1, 2, 3], "dtype": "float32"}],
    }
    return JSONResponse({"kind": "model", "apis": [api]})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


app = Starlette(
    routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/raw", raw, methods=["POST"]),
        Route("/flaky", flaky, methods=["POST"]),
        Route("/hang", hang, methods=["POST"]),
        Route("/schema", schema),
        Route("/metrics", metrics),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")
