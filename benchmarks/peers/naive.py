"""Naive unbatched server: one forward pass per request, straight in the event loop.

Why: it is what a user writes in ten lines without any serving tool, so a batching server that
loses to it is not earning its complexity. The forward runs inline in the async handler (no
threadpool, no batching), so requests are served one at a time.
Runs in our main environment: `python benchmarks/peers/naive.py --model small --port 3002`.
"""

from __future__ import annotations

import sys

import torch
from peer_common import INPUT_DIM, build_model, parse_args, warm_up
from starlette.requests import Request
from starlette.responses import Response
from starlette_common import JSON_LIB, app_for, dumps, read_inputs, serve


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the model and serve it unbatched."""
    args = parse_args("Naive unbatched starlette server.", argv)
    dim = INPUT_DIM[args.model]
    model = build_model(args.model)
    warm_up(model, args.model)

    async def predict(request: Request) -> Response:
        x = await read_inputs(request, dim)
        if not isinstance(x, torch.Tensor):
            return x
        with torch.inference_mode():
            y = model(x)
        return Response(dumps({"outputs": y.tolist()}), media_type="application/json")

    print(
        f"naive: model={args.model} json={JSON_LIB} threads={torch.get_num_threads()} port={args.port}",
        file=sys.stderr,
    )
    serve(app_for(predict), args.host, args.port)


if __name__ == "__main__":
    main()
