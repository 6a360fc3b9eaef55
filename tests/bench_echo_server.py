"""A tiny echo server for calibrating `shelf bench --url` (run as: python bench_echo_server.py PORT).

POST /predict answers `{"outputs": <the inputs>}`, re-encoding a same-sized JSON answer, and
records the number of items of each request in a `torchshelf_batch_size` histogram on /metrics,
so the load generator's metrics reading can be checked without a model.
"""

from __future__ import annotations

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
    "torchshelf_batch_size", "items per call", ["api"], registry=registry,
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


async def predict(request: Request) -> Response:
    try:
        doc = json.loads(await request.body())
        inputs = doc["inputs"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "body must be {\"inputs\": [...]}"}, status_code=400)
    batch_size.labels(api="predict").observe(len(inputs))
    return JSONResponse({"outputs": inputs})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/metrics", metrics)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")
