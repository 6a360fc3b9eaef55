"""LitServe 0.2.x peer: a LitAPI with `max_batch_size` and `batch_timeout`, run by LitServer.

Why this shape: LitServe's documented batching is `LitAPI(max_batch_size=N, batch_timeout=S)`
(the LitServer arguments of the same name are deprecated in 0.2.x) with the default `batch`
(torch.stack of the decoded items) and `unbatch` (list of rows). One inference worker on CPU and
its default of one API server process per worker.

Run it with the LitServe venv made by `benchmarks/peers/setup`:

    ~/.cache/torchshelf-peers/litserve/bin/python benchmarks/peers/litserve_peer.py \
        --model small --port 3004 [--max-batch-size 32 --max-latency-ms 10]

POST /predict takes {"inputs": [[...]]} (exactly one row) and answers {"outputs": [[...]]}.
--max-latency-ms maps to batch_timeout (seconds). Notes (see README.md): LitServe's collation
(`litserve/loops/base.py: collate_requests`) waits until the batch is full or the timeout ends,
so a lone request pays up to the whole timeout; and LitServer starts its workers as child
processes, so stop it by process group (benchmarks/peers/launch.py does).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import litserve as ls  # noqa: E402
import torch  # noqa: E402
from fastapi import HTTPException  # noqa: E402
from peer_common import INPUT_DIM, build_model, parse_args, warm_up  # noqa: E402


class PeerAPI(ls.LitAPI):
    """The benchmark model; LitServe stacks the decoded rows into one batch."""

    def __init__(self, model_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name

    def setup(self, device: str) -> None:
        """Build the model once per inference worker, and warm it."""
        self.model = build_model(self.model_name).to(device)
        warm_up(self.model, self.model_name)
        print(
            f"litserve peer: model={self.model_name} max_batch_size={self.max_batch_size} "
            f"batch_timeout={self.batch_timeout} torch_threads={torch.get_num_threads()} "
            f"litserve={ls.__version__}",
            file=sys.stderr,
            flush=True,
        )

    # decode_request's `request` and encode_response's return stay unannotated on purpose:
    # LitServe turns those annotations into the FastAPI request/response types, and with none it
    # takes the plain JSON body and skips response validation (its documented default path).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        """{"inputs": [[D floats]]} -> a float32 row of shape (D,)."""
        x = torch.tensor(request["inputs"], dtype=torch.float32)
        if x.shape != (1, INPUT_DIM[self.model_name]):
            raise HTTPException(422, f"inputs must be 1 x {INPUT_DIM[self.model_name]}")
        return x[0]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass over the stacked batch."""
        with torch.inference_mode():
            return self.model(x)

    def encode_response(self, output: torch.Tensor):  # type: ignore[no-untyped-def]
        """One output row -> {"outputs": [[...]]}."""
        return {"outputs": [output.tolist()]}


def main(argv: list[str] | None = None) -> None:
    """Parse flags and run LitServer in the foreground."""
    args = parse_args("LitServe 0.2.x peer server.", argv)
    api = PeerAPI(
        args.model,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.max_latency_ms / 1000.0,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(
        host=args.host,
        port=args.port,
        log_level="warning",
        generate_client_file=False,
        access_log=False,
    )


if __name__ == "__main__":
    main()
