#!/usr/bin/env bash
# A CI/CD pipeline that uses only the `shelf` command line (plus jq and curl):
#   1. save a model from a Python file        6. verify every file's hash there
#   2. label it for production                7. serve it in the background
#   3. find it with `list ... --output json | jq`   8. call it with curl
#   4. export it to an archive                9. benchmark the server against a baseline
#   5. import the archive into another store     (exit 1 past --max-regression)
#
# Settings (environment): WORK (scratch directory, default a new temp dir), PORT (default 3000),
# BENCH_BASELINE (an earlier `shelf bench --output json`; the first run writes one there),
# MAX_REGRESSION (default 25%; shared CI machines are noisy). The build store is
# TORCHSHELF_HOME if set, else $WORK/build-store; the deploy store is $WORK/deploy-store.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${WORK:-$(mktemp -d)}"
PORT="${PORT:-3000}"
BASELINE="${BENCH_BASELINE:-$WORK/bench-baseline.json}"
MAX_REGRESSION="${MAX_REGRESSION:-25%}"
BUILD_STORE="${TORCHSHELF_HOME:-$WORK/build-store}"
DEPLOY_STORE="$WORK/deploy-store"
for tool in shelf jq curl; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 2; }
done

step() { printf '\n== %s\n' "$*" >&2; }

step "1. save from a file"
TAG=$(TORCHSHELF_HOME="$BUILD_STORE" shelf save ci-classifier "$HERE/quickstart_model.py:model" \
        --label stage=candidate --metadata "commit=${GIT_COMMIT:-local}" \
        --signature "__call__:batchable,batch_dim=0,shape=-1x64,dtype=float32")
echo "saved $TAG"

step "2. label"
TORCHSHELF_HOME="$BUILD_STORE" shelf label "$TAG" stage=production

step "3. list --label stage=production --output json | jq"
PROD=$(TORCHSHELF_HOME="$BUILD_STORE" shelf list ci-classifier --label stage=production --output json \
        | jq -r 'map(select(.labels.stage == "production")) | first | .tag')
[ "$PROD" = "$TAG" ] || { echo "error: newest production model is '$PROD', expected $TAG" >&2; exit 1; }
echo "production: $PROD"

step "4. export"
TORCHSHELF_HOME="$BUILD_STORE" shelf export "$TAG" "$WORK/ci-classifier.shelf"

step "5. import into the deploy store"
# --trust: this archive was built by this pipeline two steps ago. The model's class lives in a
# script, so its structure is pickled, and an untrusted import would refuse to unpickle it.
TORCHSHELF_HOME="$DEPLOY_STORE" shelf import "$WORK/ci-classifier.shelf" --trust

step "6. verify"
TORCHSHELF_HOME="$DEPLOY_STORE" shelf verify "$TAG"

step "7. serve in the background"
TORCHSHELF_HOME="$DEPLOY_STORE" shelf serve "$TAG" --port "$PORT" &
SERVER=$!
stop_server() {
    if kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER"
        wait "$SERVER"  # SIGTERM drains in-flight requests, then exits 0
    fi
}
trap stop_server EXIT
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { echo "error: shelf serve exited" >&2; exit 1; }
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null

step "8. call it with curl"
BODY=$(jq -nc '{inputs: [[range(64) | . / 64]]}')
curl -fsS "http://127.0.0.1:$PORT/predict" -H 'Content-Type: application/json' -d "$BODY" \
    | jq -e '.outputs | length == 1 and (.[0] | length) == 10' >/dev/null
echo "POST /predict answered 10 scores"

step "9. bench with --baseline"
BENCH=(shelf bench --url "http://127.0.0.1:$PORT/predict" --concurrency 1,4 --duration 0.5
       --warmup-duration 0.2 --max-windows 3 --output json)
if [ ! -f "$BASELINE" ]; then
    "${BENCH[@]}" > "$BASELINE"
    echo "no baseline yet: wrote $BASELINE (keep it as a CI artifact for the next run)"
fi
"${BENCH[@]}" --baseline "$BASELINE" --max-regression "$MAX_REGRESSION" > "$WORK/bench.json"
jq -c '.results[] | {concurrency, requests_per_s, p50_ms: .latency_ms.p50, errors}' "$WORK/bench.json"
jq -e '.baseline.passed' "$WORK/bench.json" >/dev/null

stop_server
trap - EXIT
echo "pipeline passed: $TAG"
