"""Echo server: the serving ceiling (same JSON in and out, no model).

Why: it measures what HTTP + JSON decode + tensor conversion + JSON encode cost on this machine
with this client, which bounds every real server. It decodes the body into a tensor exactly as a
model server would, then answers a same-sized JSON ({"outputs": the input rows}).
Runs in our main environment: `python benchmarks/peers/echo.py --model big --port 3001`.
"""

from __future__ import annotations

import sys

import torch
from peer_common import INPUT_DIM, parse_args
from starlette.requests import Request
from starlette.responses import Response
from starlette_common import JSON_LIB, app_for, dumps, read_inputs, serve


def main(argv: list[str] | None = None) -> None:
    """Parse flags and serve the echo app."""
    args = parse_args("Echo ceiling server (no model).", argv)
    dim = INPUT_DIM[args.model]

    async def predict(request: Request) -> Response:
        x = await read_inputs(request, dim)
        if not isinstance(x, torch.Tensor):
            return x
        return Response(dumps({"outputs": x.tolist()}), media_type="application/json")

    print(f"echo: model={args.model} dim={dim} json={JSON_LIB} port={args.port}", file=sys.stderr)
    serve(app_for(predict), args.host, args.port)


if __name__ == "__main__":
    main()
