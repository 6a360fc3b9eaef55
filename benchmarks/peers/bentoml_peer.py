"""BentoML 1.4 peer: a `@bentoml.service` with a batchable api, served by `bentoml serve`.

Why this shape: it is BentoML's documented way to batch (the 1.4 "services" SDK,
`@bentoml.api(batchable=True, batch_dim=0, max_batch_size=..., max_latency_ms=...)`), and the
model goes through the model store (`bentoml.pytorch.save_model` / `load_model`) as a BentoML
user's would.

Run it with the BentoML venv made by `benchmarks/peers/setup`:

    ~/.cache/torchshelf-peers/bentoml/bin/python benchmarks/peers/bentoml_peer.py \
        --model small --port 3003 [--max-batch-size 32 --max-latency-ms 10]

As a script it saves the model into a private BENTOML_HOME (once per model; the weights are
deterministic), puts the settings in the environment and `exec`s `bentoml serve` on this same
file, so the service class below reads them at import. POST /predict takes {"inputs": [[...]]}
and answers the output rows as a JSON nested list (BentoML encodes an ndarray return as a list).

Notes (also in README.md):
- `bentoml.pytorch.load_model` calls `torch.load(file, map_location=...)` on a pickled whole
  module; under torch >= 2.6 that raises unless `weights_only=False` is passed (done below).
- Access logs are switched off through the service config (`logging.access.enabled`).
- BentoML sheds load with 503 when its latency estimate exceeds `max_latency_ms`; see README.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `bentoml serve` imports this file with HERE as working dir
    sys.path.insert(0, str(HERE))


def bentoml_home() -> Path:
    """A private model store next to the peer venvs, so ~/bentoml is never touched."""
    root = os.environ.get("TORCHSHELF_PEERS_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchshelf-peers"
    )
    return Path(root).expanduser() / "bentoml-home"


# BentoML reads BENTOML_HOME when it is imported, so set it first.
os.environ.setdefault("BENTOML_HOME", str(bentoml_home()))

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from peer_common import build_model, parse_args, warm_up  # noqa: E402

MODEL = os.environ.get("TORCHSHELF_PEER_MODEL", "small")
MAX_BATCH_SIZE = int(os.environ.get("TORCHSHELF_PEER_MAX_BATCH_SIZE", "32"))
MAX_LATENCY_MS = int(float(os.environ.get("TORCHSHELF_PEER_MAX_LATENCY_MS", "10")))
MODEL_NAME = f"torchshelf-peer-{MODEL}"

TRACE = os.environ.get("TORCHSHELF_PEER_TRACE") == "1"
if TRACE:  # diagnostics only; see bentoml_trace.py
    import bentoml_trace

    bentoml_trace.install()


@bentoml.service(
    name="torchshelf_peer",
    workers=1,
    logging={"access": {"enabled": False}},
)
class PeerService:
    """The benchmark model behind one batchable api."""

    def __init__(self) -> None:
        # weights_only=False: the BentoML pytorch format is a pickled whole nn.Module, which
        # torch >= 2.6 refuses to load by default.
        self.model = bentoml.pytorch.load_model(f"{MODEL_NAME}:latest", weights_only=False)
        self.model.eval()
        warm_up(self.model, MODEL)
        print(
            f"bentoml peer: model={MODEL} max_batch_size={MAX_BATCH_SIZE} "
            f"max_latency_ms={MAX_LATENCY_MS} torch_threads={torch.get_num_threads()} "
            f"bentoml={bentoml.__version__}",
            file=sys.stderr,
            flush=True,
        )

    @bentoml.api(
        route="/predict",
        batchable=True,
        batch_dim=0,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch (BentoML concatenates the callers' rows along dim 0)."""
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = self.model(x).numpy()
        if TRACE:
            bentoml_trace.record("compute_ms", 1000 * (time.perf_counter() - t0))
        return y


def ensure_saved(model_name: str) -> None:
    """Save the deterministic model into the BentoML store unless a version is there already."""
    try:
        bentoml.models.get(f"{model_name}:latest")
    except bentoml.exceptions.NotFound:
        bentoml.pytorch.save_model(model_name, build_model(model_name.rsplit("-", 1)[1]))


def main(argv: list[str] | None = None) -> None:
    """Prepare the model store and settings, then exec `bentoml serve` on this file."""
    args = parse_args("BentoML 1.4 peer server.", argv)
    ensure_saved(f"torchshelf-peer-{args.model}")
    os.environ.update(
        TORCHSHELF_PEER_MODEL=args.model,
        TORCHSHELF_PEER_MAX_BATCH_SIZE=str(args.max_batch_size),
        TORCHSHELF_PEER_MAX_LATENCY_MS=str(int(args.max_latency_ms)),
    )
    bentoml_bin = str(Path(sys.executable).parent / "bentoml")
    cmd = [bentoml_bin, "serve", "bentoml_peer:PeerService", "--working-dir", str(HERE),
           "--host", args.host, "--port", str(args.port)]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(bentoml_bin, cmd)


if __name__ == "__main__":
    main()
