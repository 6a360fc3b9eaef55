#!/usr/bin/env bash
# The main job end to end on the default local store (~/.torchshelf unless TORCHSHELF_HOME is set):
# save a model, list it, inspect it, load it back, check its output, and benchmark it.
set -euo pipefail
cd "$(dirname "$0")"

TAG=$(shelf save quickstart quickstart_model.py:model \
        --label stage=dev --metadata accuracy=0.93 \
        --signature "__call__:batchable,batch_dim=0,shape=-1x64,dtype=float32")
echo "saved $TAG"
shelf label "$TAG" stage=production
shelf list quickstart --label stage=production
shelf get "$TAG"
shelf verify "$TAG"

python - "$TAG" <<'PY'
import sys

import torch

import torchshelf
from quickstart_model import model as original

loaded = torchshelf.load_model(sys.argv[1])
x = torch.randn(4, 64)
assert torch.equal(loaded(x), original(x)), "loaded model differs from the saved one"
print(f"loaded {sys.argv[1]}: outputs match the original bit for bit")
PY

# Serve it (adaptive batching, 127.0.0.1 only) and answer one request over HTTP.
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
shelf serve "$TAG" --port "$PORT" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
python - "$PORT" <<'PY'
import sys
import time

import httpx

base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        if httpx.get(f"{base}/readyz").status_code == 200:
            break
    except httpx.TransportError:
        pass
    time.sleep(0.1)
else:
    raise SystemExit("the server did not become ready")
reply = httpx.post(f"{base}/predict", json={"inputs": [[0.5] * 64]})
reply.raise_for_status()
print(f"POST /predict -> {reply.status_code}, {len(reply.json()['outputs'][0])} class scores")
PY
kill -TERM "$SERVER" && wait "$SERVER"
trap - EXIT

# How fast is it here? Latency percentiles and throughput per batch size (inputs from the
# signature's input spec); CI would add --output json and --baseline last.json.
shelf bench "$TAG" --batch-sizes 1,8,32 --duration 0.5
