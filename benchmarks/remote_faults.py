"""Kill the S3 server mid-transfer: push and pull of a 256 MiB version (two files), N trials each.

moto runs in its own process on 127.0.0.1 (tests/s3_processes.py). Each trial starts a push (or
a pull), SIGKILLs the moto process at a random point of a transfer's measured duration, and
records: the error (it must be a `RemoteError`), the time from the kill to the error, and
whether anything partial is visible (pull: a local version or staging leftovers; push: a
remote version or manifest, checked on the restarted server). The server is then restarted
(empty: moto keeps data in memory; the pull's source version is pushed again) and the same
command is run again: it must complete.

`--cut-trials K` adds K trials that kill the proxy in front of moto instead (the network path
dies, the stored objects survive), to measure what a retried push reuses.

    python benchmarks/remote_faults.py --size-mib 256 --trials 10 --cut-trials 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import s3_processes as sp  # noqa: E402

MIB = 1 << 20


def make_store_version(root: Path, size: int) -> Any:
    from torchshelf.manifest import Manifest, hash_file
    from torchshelf.store import Store, now_iso

    store = Store(root)
    staging = store.stage()
    # two files (3/4 and 1/4 of the size), so that a retried push can reuse the one that made it
    files = {}
    for rel, part in (("weights.safetensors", size * 3 // 4), ("structure.pkl", size // 4)):
        with open(staging / rel, "wb") as fh:
            for _ in range(part // MIB):
                fh.write(os.urandom(MIB))
        files[rel] = hash_file(staging / rel)
    manifest = Manifest(
        name="big",
        version="v1",
        creation_time=now_iso(),
        format="safetensors",
        torch_version="0",
        module_class=None,
        files=files,
        labels={},
    )
    store.commit(staging, manifest, auto_version=False)
    return store


def attempt(fn: Any, kill: Any, delay: float) -> tuple[str, float | None, str]:
    """Run fn(); kill after `delay` s. Returns (outcome, seconds from kill to error, message);
    for a run that completed before the kill, the seconds it took instead."""
    killed_at: list[float] = []
    began = time.monotonic()

    def killer() -> None:
        time.sleep(delay)
        killed_at.append(time.monotonic())
        kill()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - classified below
        ended = time.monotonic()
        thread.join()
        after = ended - killed_at[0] if killed_at else None
        return type(exc).__name__, after, str(exc)[:160]
    took = time.monotonic() - began
    thread.join()  # finished before the kill: let the kill happen before the next step
    return "completed", took, ""


def push_trial(src: Any, endpoint: str, server: sp.Process, bucket: str, delay: float) -> dict:
    from torchshelf.remote import Remote

    remote = Remote(f"s3://{bucket}/t", endpoint_url=endpoint)
    outcome, after, msg = attempt(lambda: remote.push(src, "big:v1"), server.kill, delay)
    server.kill()
    server.start()
    sp.create_bucket(endpoint, bucket)
    visible = [str(m.tag) for m in Remote(f"s3://{bucket}/t", endpoint_url=endpoint).list()]
    started = time.monotonic()
    retry = Remote(f"s3://{bucket}/t", endpoint_url=endpoint).push(src, "big:v1").status
    return {
        "kill_at_s": round(delay, 2),
        "outcome": outcome,
        "fail_after_kill_s": None if outcome == "completed" else round(after or 0, 2),
        "completed_in_s": round(after or 0, 2) if outcome == "completed" else None,
        "message": msg,
        "visible_after": visible,
        "retry": retry,
        "retry_s": round(time.monotonic() - started, 1),
    }


def pull_trial(src: Any, endpoint: str, server: sp.Process, bucket: str, delay: float) -> dict:
    from torchshelf.remote import Remote
    from torchshelf.store import Store

    target = Store(Path(tempfile.mkdtemp(prefix="pull-trial-")) / "store")
    remote = Remote(f"s3://{bucket}/t", endpoint_url=endpoint)
    outcome, after, msg = attempt(lambda: remote.pull(target, "big:v1"), server.kill, delay)
    visible = [str(m.tag) for m in target.list()]
    staging = sorted(os.listdir(target.tmp_dir)) if target.tmp_dir.exists() else []
    server.kill()
    server.start()
    sp.create_bucket(endpoint, bucket)
    Remote(f"s3://{bucket}/t", endpoint_url=endpoint).push(src, "big:v1")
    started = time.monotonic()
    retry = Remote(f"s3://{bucket}/t", endpoint_url=endpoint).pull(target, "big:v1").status
    ok = all(err is None for _, err in target.verify())
    return {
        "kill_at_s": round(delay, 2),
        "outcome": outcome,
        "fail_after_kill_s": None if outcome == "completed" else round(after or 0, 2),
        "completed_in_s": round(after or 0, 2) if outcome == "completed" else None,
        "message": msg,
        "visible_after": visible,
        "staging_left": staging,
        "retry": retry if ok else f"{retry} but verify failed",
        "retry_s": round(time.monotonic() - started, 1),
    }


def cut_trial(src: Any, moto: sp.Process, link: sp.Process, delay: float) -> dict:
    """Kill the proxy (the data survives in moto); then retry and see what was reused."""
    import boto3

    from torchshelf.remote import Remote

    bucket = f"cut-{secrets.token_hex(5)}"
    direct = f"http://127.0.0.1:{moto.port}"
    sp.create_bucket(direct, bucket)
    remote = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{link.port}")
    outcome, after, msg = attempt(lambda: remote.push(src, "big:v1"), link.kill, delay)
    s3 = boto3.client("s3", endpoint_url=direct)
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    keys = [o["Key"] for o in listed]
    reused = sum(o["Size"] for o in listed if not o["Key"].endswith("manifest.json"))
    link.kill()
    link.start()
    started = time.monotonic()
    retry = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{link.port}").push(
        src, "big:v1"
    )
    return {
        "kill_at_s": round(delay, 2),
        "outcome": outcome,
        "fail_after_kill_s": None if outcome == "completed" else round(after or 0, 2),
        "completed_in_s": round(after or 0, 2) if outcome == "completed" else None,
        "objects_before_retry": keys,
        "manifest_visible_before_retry": any(k.endswith("manifest.json") for k in keys),
        "bytes_complete_before_retry": reused,
        "retry": retry.status,
        "retry_s": round(time.monotonic() - started, 1),
    }


def baseline_seconds(fn: Any) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def summarize(name: str, trials: list[dict]) -> dict:
    failed = [t for t in trials if t["outcome"] not in ("RemoteError", "completed")]
    partial = [
        t
        for t in trials
        if t["outcome"] != "completed" and (t.get("visible_after") or t.get("staging_left"))
    ]
    retries = [t for t in trials if t["retry"] not in ("pushed", "pulled", "unchanged")]
    times = [t["fail_after_kill_s"] for t in trials if t["outcome"] == "RemoteError"]
    return {
        "what": name,
        "trials": len(trials),
        "remote_errors": sum(t["outcome"] == "RemoteError" for t in trials),
        "completed_before_kill": sum(t["outcome"] == "completed" for t in trials),
        "other_errors": len(failed),
        "partial_visible": len(partial),
        "retry_failed": len(retries),
        "fail_after_kill_s": {
            "median": round(statistics.median(times), 2) if times else None,
            "max": max(times) if times else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--cut-trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--only", default="push,pull,cut", help="which trial kinds to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.update(sp.AWS_ENV)
    rng = random.Random(args.seed)
    from torchshelf.remote import Remote
    from torchshelf.store import Store

    scratch = Path(tempfile.mkdtemp(prefix="remote-faults-"))
    src = make_store_version(scratch / "src", args.size_mib * MIB)
    server = sp.moto().start()
    endpoint = f"http://127.0.0.1:{server.port}"
    bucket = "faults-bench"
    sp.create_bucket(endpoint, bucket)
    push_s = baseline_seconds(
        lambda: Remote(f"s3://{bucket}/t", endpoint_url=endpoint).push(src, "big:v1")
    )
    pull_s = baseline_seconds(
        lambda: Remote(f"s3://{bucket}/t", endpoint_url=endpoint).pull(
            Store(scratch / "b"), "big:v1"
        )
    )
    print(f"baseline: push {push_s:.1f} s, pull {pull_s:.1f} s", flush=True)
    results: dict[str, Any] = {"size_mib": args.size_mib, "push_s": push_s, "pull_s": pull_s}
    pushes: list[dict] = []
    pulls: list[dict] = []
    cuts: list[dict] = []
    est = push_s  # kill points are drawn over the latest measured duration of a whole transfer
    for i in range(args.trials if "push" in args.only else 0):
        server.kill()
        server.start()
        sp.create_bucket(endpoint, bucket)
        pushes.append(push_trial(src, endpoint, server, bucket, rng.uniform(0.05, 0.95) * est))
        est = pushes[-1]["retry_s"]
        print("push", i, pushes[-1], flush=True)
    est = pull_s
    for i in range(args.trials if "pull" in args.only else 0):
        pulls.append(pull_trial(src, endpoint, server, bucket, rng.uniform(0.05, 0.95) * est))
        done = pulls[-1]
        est = done["completed_in_s"] if done["outcome"] == "completed" else done["retry_s"]
        print("pull", i, pulls[-1], flush=True)
    link = sp.proxy(server.port).start()
    for i in range(args.cut_trials if "cut" in args.only else 0):
        cuts.append(cut_trial(src, server, link, rng.uniform(0.05, 0.95) * push_s))
        print("cut", i, cuts[-1], flush=True)
    link.kill()
    server.kill()
    results.update(
        summary=[summarize("push, moto killed", pushes), summarize("pull, moto killed", pulls)],
        pushes=pushes,
        pulls=pulls,
        cuts=cuts,
        load_average=os.getloadavg(),
    )
    print(json.dumps(results["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
