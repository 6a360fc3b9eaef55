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

# How fast is it here? Latency percentiles and throughput per batch size (inputs from the
# signature's input spec); CI would add --output json and --baseline last.json.
shelf bench "$TAG" --batch-sizes 1,8,32 --duration 0.5
