"""Measure torchshelf against the tools users would pick instead, in one run (issue 5).

    python benchmarks/run.py [--quick] [--only store|cli|serve]

Groups:
- store: save and load of a float32 MLP (1 GiB; 128 MiB with --quick) with torchshelf, raw
  safetensors, torch.save/torch.load and BentoML (compare_store.py does the timing);
- cli: `shelf list` / `--latest` / `shelf get` at 1,000 and 10,000 versions beside `python -c pass`
  and `bentoml models list` / `get` (1,000 versions), taking turns in one run;
- serve: the small and big MLP behind echo (ceiling), naive starlette, `shelf serve` (native JSON
  and safetensors bodies, V2 JSON and V2 binary on `/v2/models/<name>/infer`), BentoML
  (max_latency_ms 10 and 1000) and LitServe, at 1, 8 and 64 closed-loop clients, all driven by
  the same load generator, `shelf bench --url`. echo, naive and shelf serve's four transports run
  side by side and take turns per level; issue 11's targets are checked, with py-spy profiles of
  the servers each target compares.

Why one script: absolute times on this shared 2-core machine drift by tens of percent between
runs, so every figure a target is stated in is a ratio of two measurements taken in this run.
Raw figures go to benchmarks/results.json; `--only` reruns one group and keeps the others' last
figures. RESULTS.md and serving.png are regenerated from results.json every time; the
hand-written analysis in benchmarks/ANALYSIS.md (where the time goes, fixes) is appended as is,
and so is benchmarks/FAULTS.md (faults and long runs, written from their own scripts).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]

import compare_store  # noqa: E402
from launch import descendants, free_port, launch, peers_dir, stop_tree  # noqa: E402

RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
CHART = HERE / "serving.png"
ANALYSIS = HERE / "ANALYSIS.md"
FAULTS = HERE / "FAULTS.md"  # faults and long runs (issue 15): their own scripts, appended
PROFILES = HERE / "profiles"

MODELS: dict[str, tuple[int, int, int]] = {"small": (64, 256, 10), "big": (1024, 4096, 1024)}
MAX_BATCH = 32
MAX_LATENCY_MS = 10.0
BENTO_BUDGET_MS = 1000.0  # the smallest budget BentoML met at 64 clients (peers/README.md)
LEVELS = (1, 8, 64)
SERVERS = ("echo", "naive", "torchshelf", "torchshelf-st", "torchshelf-v2", "torchshelf-v2bin",
           "litserve", "bentoml@10", "bentoml@1000")  # fmt: skip


def say(text: str) -> None:
    """Progress goes to stderr so stdout stays clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- machine ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The facts RESULTS.md must state about where it ran."""
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    import torch

    versions: dict[str, str] = {"torch": torch.__version__, "python": platform.python_version()}
    for peer, module in (("bentoml", "bentoml"), ("litserve", "litserve")):
        py = peers_dir() / peer / "bin" / "python"
        if py.exists():
            out = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version('{module}'))"],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            versions[peer] = out.stdout.strip() or "?"
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)  # fmt: skip
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "cpu": cpu,
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
    }


# -- profiling -------------------------------------------------------------------------------------


def pyspy() -> str | None:
    """py-spy next to this interpreter or on PATH (None: profiles are skipped and say so)."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def summarise_collapsed(path: Path, top: int = 12, focus: tuple[str, ...] = ()) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's `--format raw` output.

    Why both: self time says which leaf burns the CPU; inclusive time groups it by the layer
    (HTTP parsing, JSON, the model) that a fix would target. `focus` keeps only stacks through a
    frame containing one of these texts (e.g. the timed call, not the imports and model build around it).
    """
    selfs: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    forward = {"worker thread": 0, "event loop": 0}  # where a server ran its model's forward
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames or (focus and not any(k in f for f in frames for k in focus)):
            continue
        if any(f.startswith("Linear.forward (") for f in frames):
            forward["worker thread" if "_WorkItem.run (" in stack else "event loop"] += n
        # Cut the entry frames (CLI, event-loop and thread plumbing) so the inclusive column
        # shows the layers: everything above the last dispatch point is the same on every stack.
        cut = max((i for i, f in enumerate(frames) if f.startswith(_DISPATCH)), default=-1)
        frames = frames[cut + 1 :] or frames[-1:]
        total += n
        selfs[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "self": [(f, pct(n)) for f, n in selfs.most_common(top)],
        "inclusive": [(f, pct(n)) for f, n in incl.most_common(top)],
        "forward": forward,
    }


# Frames after which a stack's work begins: an event-loop callback, a thread-pool work item, or
# (uvloop runs callbacks from C, so no Handle._run frame) the loop's own entry.
_DISPATCH = ("Handle._run (", "_WorkItem.run (", "Thread.run (", "Runner.run (")


def _frame_name(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'func (module.py)': short and stable across runs."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})" if file else name


def profile_pid(pid: int, seconds: float, out: Path) -> dict[str, Any] | None:
    """Start sampling a running process's busy threads for `seconds` (py-spy drops idle ones)."""
    exe = pyspy()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "250",
           "--format", "raw", "--nonblocking", "--subprocesses", "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return {"proc": proc, "out": out}


def finish_profile(handle: dict[str, Any] | None) -> dict[str, Any] | None:
    """Wait for a profile started by profile_pid and summarise it."""
    if handle is None:
        return None
    try:
        handle["proc"].wait(timeout=60)
    except subprocess.TimeoutExpired:
        handle["proc"].kill()
    out: Path = handle["out"]
    if not out.exists() or out.stat().st_size == 0:
        err = (
            handle["proc"].stderr.read().decode(errors="replace")[-500:]
            if handle["proc"].stderr
            else ""
        )
        return {"error": f"py-spy wrote nothing: {err}"}
    summary = summarise_collapsed(out)
    summary["file"] = (
        str(out.relative_to(HERE.parent)) if out.is_relative_to(HERE.parent) else str(out)
    )
    return summary


def profile_cmd(
    cmd: list[str], out: Path, focus: tuple[str, ...] = (), rate: int = 1000
) -> dict[str, Any] | None:
    """Run a command under py-spy at 1 kHz, idle (I/O-blocked) samples included.

    Why --idle: a save spends much of its time blocked in write/fsync, which py-spy would
    otherwise drop; those are exactly the samples that say where a store operation's time goes.
    """
    exe = pyspy()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "record", "--rate", str(rate), "--idle", "--nonblocking", "--format", "raw", "-o", str(out), "--", *cmd],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # fmt: skip
    if not out.exists():
        return {"error": "py-spy wrote nothing"}
    summary = summarise_collapsed(out, focus=focus)
    summary["focus"] = " or ".join(focus)
    summary["file"] = (
        str(out.relative_to(HERE.parent)) if out.is_relative_to(HERE.parent) else str(out)
    )
    return summary


# -- store and cli groups --------------------------------------------------------------------------


def run_store(quick: bool) -> dict[str, Any]:
    """Save/load of one MLP with each method (compare_store.bench_io), plus profiles of ours."""
    size, repeats = (128, 2) if quick else (1024, 3)
    work = Path(tempfile.mkdtemp(prefix="torchshelf-run-store-"))
    try:
        say(f"store: {size} MiB MLP, {repeats} repeats")
        # saves vary most (the virtual disk is shared): more rounds for them than for loads
        io = compare_store.bench_io(size, repeats, work, save_rounds=repeats + 2)
        profiles: dict[str, Any] = {}
        ts, st = io["torchshelf"], io["safetensors"]
        worker = [sys.executable, str(compare_store.WORKER), "torchshelf"]
        if ts["save"] > 1.25 * st["save"]:
            profiles["save"] = profile_cmd([*worker, "save", str(work / "prof"), "--size-mib", str(size), "--repeats", "2"],
                                           PROFILES / "store-save.txt", ("TorchShelf.save", "_hash_loop"))  # fmt: skip
        if ts["load_warm"] > 1.15 * st["load_warm"] or ts["load_first"] > 1.15 * st["load_first"]:
            if not (work / "prof").exists():
                compare_store.worker(sys.executable, "torchshelf", "save", work / "prof", size, 1)
            # first touch: one load in a fresh process, where the larger gap is; sampled at 5 kHz
            # because the whole load takes tens of milliseconds
            profiles["load (first touch)"] = profile_cmd([*worker, "first", str(work / "prof"), "--size-mib", str(size)],
                                                         PROFILES / "store-load-first.txt", ("TorchShelf.load",), 5000)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"size_mib": size, "repeats": repeats, "io": io, "profiles": profiles}


def run_cli(quick: bool) -> dict[str, Any]:
    """Whole-process `shelf list/get` vs `bentoml models list/get` (compare_store.bench_cli)."""
    sizes, repeats = ([100, 1000], 5) if quick else ([1000, 10000], 11)
    work = Path(tempfile.mkdtemp(prefix="torchshelf-run-cli-"))
    try:
        say(f"cli: {sizes} versions, {repeats} repeats")
        cli = compare_store.bench_cli(sizes, repeats, work)
        if cli[f"shelf_list@{sizes[-1]}"] > 0.15:
            # bench_cli filled this store; profile one more `shelf list` of the largest
            env_home = work / f"ts-cli-{sizes[-1]}"
            os.environ["TORCHSHELF_HOME"] = str(env_home)
            cli["profile_list"] = profile_cmd(
                [sys.executable, "-m", "torchshelf", "list"], PROFILES / "cli-list.txt"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cli


# -- serve group -----------------------------------------------------------------------------------


@dataclass
class Server:
    """A running server: where to send requests and which process to profile."""

    url: str
    pid: int


@contextlib.contextmanager
def shelf_serve(model: str, store: Path, tag: str) -> Iterator[Server]:
    """`shelf serve TAG` with the shared batching settings on a free port, torn down after."""
    port = free_port()
    cmd = [sys.executable, "-m", "torchshelf", "serve", tag, "--port", str(port),
           "--max-batch-size", str(MAX_BATCH), "--max-latency-ms", str(MAX_LATENCY_MS)]  # fmt: skip
    log = open(Path(tempfile.gettempdir()) / f"torchshelf-run-serve-{model}-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env={**os.environ, "TORCHSHELF_HOME": str(store)}, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(base + "/readyz", timeout=2) as r,
            ):
                if r.status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shelf serve did not become ready (see {log.name})")
            time.sleep(0.2)
        yield Server(base + "/predict", proc.pid)
    finally:
        stop_tree(proc, 15.0)
        log.close()


@contextlib.contextmanager
def peer(name: str, model: str, latency_ms: float = MAX_LATENCY_MS) -> Iterator[Server]:
    """A peer from benchmarks/peers (bentoml, litserve, echo, naive) with the shared settings."""
    with launch(name, model, max_batch_size=MAX_BATCH, max_latency_ms=latency_ms) as p:
        yield Server(p.url, p.process.pid)


def bench(
    url: str, levels: list[int], body: Path, opts: argparse.Namespace, headers: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """`shelf bench --url` at the given concurrency levels; its JSON results, one per level."""
    cmd = [sys.executable, "-m", "torchshelf", "bench", "--url", url, "--concurrency", ",".join(map(str, levels)),
           "--duration", str(opts.duration), "--max-windows", str(opts.max_windows),
           "--warmup-duration", str(opts.warmup), "--body", str(body), "--output", "json"]  # fmt: skip
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"shelf bench failed ({out.returncode}): {out.stderr[-2000:]}")
    doc = json.loads(out.stdout)
    keep = (
        "concurrency",
        "requests",
        "requests_per_s",
        "latency_ms",
        "errors",
        "batch_size_mean",
        "client_bound",
        "stable",
        "windows",
    )
    return [{k: r[k] for k in keep if k in r} for r in doc["results"]]


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of pid and its live descendants (from /proc)."""
    total = 0.0
    for p in {pid} | descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(
    server: Server,
    levels: list[int],
    body: Path,
    opts: argparse.Namespace,
    headers: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """`bench` one level at a time, adding the server's CPU ms per answered request.

    Why: on a shared machine req/s moves with the neighbours' load; the CPU a server spends per
    request moves much less, and says which server does more work for the same answer.
    """
    rows = []
    for level in levels:
        cpu0 = tree_cpu_s(server.pid)
        row = bench(server.url, [level], body, opts, headers)[0]
        cpu = tree_cpu_s(server.pid) - cpu0
        # the warm-up's requests are served too; count them at the measured rate
        served = row.get("requests", 0) + row["requests_per_s"] * opts.warmup
        row["server_cpu_ms"] = cpu / served * 1e3 if served else None
        rows.append(row)
    return rows


def raw_forward(model: str, seconds: float) -> dict[str, float]:
    """In-process forward rows/s at batch 32, with torch's default threads and with serve's."""
    import serve_bench

    return serve_bench.raw_forward(model, seconds)


def save_serving_model(model: str, store: Path) -> str:
    """Save the peers' model into a temp store with a batchable signature; returns the tag."""
    import serve_bench

    import torchshelf

    os.environ["TORCHSHELF_HOME"] = str(store)
    spec = {"shape": [-1, MODELS[model][0]], "dtype": "float32"}
    sig = {"__call__": {"batchable": True, "batch_dim": 0, "input_spec": spec}}
    return str(torchshelf.save_model(f"compare-{model}", serve_bench.build(model), signatures=sig))


@dataclass
class Bodies:
    """The same random row in every transport: native JSON/safetensors and V2 JSON/binary."""

    json: Path
    safetensors: Path
    v2_json: Path
    v2_binary: Path
    v2_header_length: int  # Inference-Header-Content-Length of v2_binary


def write_bodies(model: str, work: Path) -> Bodies:
    """One random row in each transport: every server gets the same numbers."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    x = torch.randn(1, MODELS[model][0])
    b = Bodies(work / f"{model}.json", work / f"{model}.safetensors", work / f"{model}-v2.json",
               work / f"{model}-v2.bin", 0)  # fmt: skip
    b.json.write_text(json.dumps({"inputs": x.tolist()}))
    save_file({"inputs": x}, str(b.safetensors))
    tensor = {"name": "inputs", "shape": list(x.shape), "datatype": "FP32"}
    b.v2_json.write_text(json.dumps({"inputs": [{**tensor, "data": x.flatten().tolist()}]}))
    raw = x.numpy().tobytes()
    # the binary tensor data extension: a JSON header, then the raw tensor bytes, and the
    # answer's tensor asked for as binary too
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "outputs", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    b.v2_binary.write_bytes(head + raw)
    b.v2_header_length = len(head)
    return b


def run_serve(opts: argparse.Namespace) -> dict[str, Any]:
    """Every server x model x concurrency level, the ceilings, and a profile of shelf serve."""
    work = Path(tempfile.mkdtemp(prefix="torchshelf-run-serve-"))
    results: dict[str, Any] = {}
    try:
        for model in opts.models:
            say(f"serve {model}: raw forward")
            res: dict[str, Any] = {
                "raw": raw_forward(model, 2.0 if opts.quick else 3.0),
                "servers": {},
            }
            bodies = write_bodies(model, work)
            jbody = bodies.json
            tag = save_serving_model(model, work / "store")
            servers: dict[str, list[dict[str, Any]]] = res["servers"]
            profiles: dict[str, Any] = {}
            res["profiles"] = profiles
            with (
                peer("echo", model) as e,
                peer("naive", model) as n,
                shelf_serve(model, work / "store", tag) as s,
            ):
                measure_interleaved(e, n, s, model, bodies, opts, servers)
                if not opts.no_profile:
                    profiles["echo@64"] = profile_at(e, 64, jbody, opts, f"echo-{model}-64")
                    if model == "small":  # the @1 target compares with it
                        profiles["naive@1"] = profile_at(n, 1, jbody, opts, f"naive-{model}-1")
                    profile_shelf(s, model, bodies, opts, profiles)
            with peer("litserve", model) as s:
                servers["litserve"] = measure(s, list(LEVELS), jbody, opts)
            say(f"serve {model} litserve: {_fmt_levels(servers['litserve'])}")
            for budget in (MAX_LATENCY_MS, BENTO_BUDGET_MS):
                key = f"bentoml@{budget:g}"
                servers[key] = []
                # A fresh server per level: its latency model has hysteresis (peers/README.md).
                # --quick takes one server for all levels to save start-ups.
                for lv in [list(LEVELS)] if opts.quick else [[c] for c in LEVELS]:
                    with peer("bentoml", model, budget) as s:
                        servers[key] += measure(s, lv, jbody, opts)
                say(f"serve {model} {key}: {_fmt_levels(servers[key])}")
            # raw again after the servers: the better of the two is the stricter ceiling, and a
            # neighbour's burst during one 3-s measurement must not lower the limit
            res["raw_after"] = raw_forward(model, 2.0 if opts.quick else 3.0)
            results[model] = res
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def transports(
    server: Server, model: str, b: Bodies
) -> dict[str, tuple[str, Path, tuple[str, ...]]]:
    """shelf serve's four transports of one row: name -> (url, body, headers)."""
    v2 = server.url.rsplit("/", 1)[0] + f"/v2/models/compare-{model}/infer"
    return {
        "torchshelf": (server.url, b.json, ()),
        "torchshelf-st": (server.url, b.safetensors, ("Accept: application/vnd.safetensors",)),
        "torchshelf-v2": (v2, b.v2_json, ()),
        "torchshelf-v2bin": (v2, b.v2_binary, ("Content-Type: application/octet-stream",
                                               f"Inference-Header-Content-Length: {b.v2_header_length}")),
    }  # fmt: skip


def measure_interleaved(
    echo: Server,
    naive: Server,
    shelf: Server,
    model: str,
    b: Bodies,
    opts: argparse.Namespace,
    out: dict[str, Any],
) -> None:
    """echo, naive and shelf serve's four transports, all up at once, taking turns per level.

    Why: the targets are ratios of these rows; on a shared machine whose load drifts over
    minutes, rows measured seconds apart compare far better than rows measured minutes apart.
    The idle servers cost nothing while another is measured; the order rotates per level.
    """
    targets = {"echo": (echo.url, b.json, ()), "naive": (naive.url, b.json, ()),
               **transports(shelf, model, b)}  # fmt: skip
    pids = {"echo": echo.pid, "naive": naive.pid}
    names = list(targets)
    for turn, level in enumerate(LEVELS):
        for name in names[turn:] + names[:turn]:
            url, body, headers = targets[name]
            server = Server(url, pids.get(name, shelf.pid))
            out.setdefault(name, []).extend(measure(server, [level], body, opts, headers))
    for name in names:
        out[name].sort(key=lambda r: r["concurrency"])
        say(f"serve {model} {name}: {_fmt_levels(out[name])}")


def profile_shelf(
    server: Server, model: str, b: Bodies, opts: argparse.Namespace, out: dict[str, Any]
) -> None:
    """py-spy on shelf serve where a target compares it: JSON @64 (echo, limit), V2 binary @64
    (vs V2 JSON), @1 (small vs naive) and, on the big model, safetensors @64 (binary vs JSON)."""
    routes = transports(server, model, b)
    wanted = [("torchshelf", 64), ("torchshelf-v2bin", 64)]
    wanted += [("torchshelf", 1)] if model == "small" else [("torchshelf-st", 64)]
    for name, level in wanted:
        url, body, headers = routes[name]
        out[f"{name}@{level}"] = profile_at(Server(url, server.pid), level, body, opts,
                                            f"serve-{model}-{name.removeprefix('torchshelf')[1:] or 'json'}-{level}",
                                            headers)  # fmt: skip


def profile_at(
    server: Server,
    level: int,
    body: Path,
    opts: argparse.Namespace,
    name: str,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """py-spy on the server during an extra pass at `level` clients (never a measured level)."""
    handle = profile_pid(server.pid, opts.profile_s, PROFILES / f"{name}.txt")
    prof_opts = argparse.Namespace(
        **{**vars(opts), "duration": opts.profile_s / 3, "max_windows": 3, "warmup": 0}
    )
    out: dict[str, Any] = {"bench": bench(server.url, [level], body, prof_opts, headers)[0]}
    out["summary"] = finish_profile(handle)
    return out


def _fmt_levels(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['concurrency']}: {r['requests_per_s']:.0f}/s" for r in rows)


# -- targets ---------------------------------------------------------------------------------------


def at(rows: list[dict[str, Any]], level: int) -> dict[str, Any]:
    """The result for one concurrency level."""
    return next(r for r in rows if r["concurrency"] == level)


def limit_of(res: dict[str, Any]) -> float:
    """The additive limit 1/(1/echo + 1/raw) at 64 clients; raw is the better thread setting."""
    echo = at(res["servers"]["echo"], 64)["requests_per_s"]
    return 1.0 / (1.0 / echo + 1.0 / best_raw(res))


def best_raw(res: dict[str, Any]) -> float:
    """The best raw rows/s seen: both thread settings, before and after the servers ran."""
    runs = [res["raw"], res.get("raw_after", res["raw"])]
    return max(max(r["rows_per_s"], r["rows_per_s_serve_threads"]) for r in runs)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 5 as (what, value, goal, pass) from this run's ratios."""
    out: list[dict[str, Any]] = []

    def add(group: str, what: str, value: float, goal: str, ok: bool, unit: str = "x") -> None:
        out.append(
            {"group": group, "what": what, "value": value, "goal": goal, "pass": ok, "unit": unit}
        )

    io = results.get("store", {}).get("io")
    if io:
        ts, st = io["torchshelf"], io["safetensors"]
        for kind, label in (("load_warm", "warm"), ("load_first", "first touch")):
            r = ts[kind] / st[kind]
            add("store", f"torchshelf load / safetensors load ({label})", r, "<= 1.15x", r <= 1.15)
        r = ts["save"] / st["save"]
        add("store", "torchshelf save / safetensors save (both durable)", r, "<= 1.25x", r <= 1.25)
        if "bentoml" in io:
            b = io["bentoml"]
            for kind, label in (("load_warm", "warm"), ("load_first", "first touch")):
                r = b[kind] / ts[kind]
                add("store", f"BentoML load / torchshelf load ({label})", r, ">= 3x", r >= 3)
            r = b["save"] / ts["save"]
            add("store", "BentoML save / torchshelf save", r, ">= 1.5x", r >= 1.5)
    cli = results.get("cli")
    if cli:
        for n in cli.get("sizes", [cli["versions"]]):
            key, goal = f"shelf_list@{n}", 0.100 if n <= 1000 else 0.150
            value = cli.get(key, cli["shelf_list"])
            add("cli", f"`shelf list` median, {n} versions (ms)", value * 1e3, f"<= {goal * 1e3:.0f} ms",
                value <= goal, "ms")  # fmt: skip
        if "bentoml_list" in cli:
            r = cli["bentoml_list"] / cli["shelf_list"]
            add(
                "cli",
                f"`bentoml models list` / `shelf list` ({cli['versions']} versions)",
                r,
                ">= 15x",
                r >= 15,
            )
    for model, res in results.get("serve", {}).items():
        if not model.startswith("_"):
            out += serve_targets(model, res)
    return out


def serve_targets(model: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's "Done when" serving targets for one model, from this run's rows."""
    sv = res["servers"]
    out: list[dict[str, Any]] = []

    def add(what: str, value: float, goal: float, kind: str = ">=") -> None:
        out.append({"group": "serve", "what": f"{model} {what}", "value": value,
                    "goal": f"{kind} {goal:g}x", "pass": value >= goal, "unit": "x"})  # fmt: skip

    def rps(name: str, level: int) -> float:
        return float(at(sv[name], level)["requests_per_s"]) if sv.get(name) else 0.0

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("inf") if a else 0.0

    if model == "small":
        for level, goal in ((1, 0.95), (8, 1.0), (64, 1.0)):
            add(
                f"@{level}: shelf serve / naive",
                ratio(rps("torchshelf", level), rps("naive", level)),
                goal,
            )
        add("@64: shelf serve / echo", ratio(rps("torchshelf", 64), rps("echo", 64)), 0.95)
    else:
        add("@64: shelf serve / additive limit", ratio(rps("torchshelf", 64), limit_of(res)), 0.95)
    add(
        "@64: binary (safetensors) / JSON",
        ratio(rps("torchshelf-st", 64), rps("torchshelf", 64)),
        1.0,
    )
    add(
        "@64: V2 binary / V2 JSON",
        ratio(rps("torchshelf-v2bin", 64), rps("torchshelf-v2", 64)),
        1.0,
    )
    for name, label in (("torchshelf-v2", "V2 JSON"), ("torchshelf-v2bin", "V2 binary")):
        rows = sv.get(name) or []
        ok = len(rows) == len(LEVELS) and all(
            r["requests_per_s"] > 0 and not r.get("errors") for r in rows
        )
        out.append({"group": "serve", "what": f"{model}: {label} rows at 1/8/64, no errors (/ native JSON @64)",
                    "value": ratio(rps(name, 64), rps("torchshelf", 64)), "goal": "present", "pass": ok, "unit": "x"})  # fmt: skip
    for level in LEVELS:
        add(
            f"@{level}: shelf serve / LitServe",
            ratio(rps("torchshelf", level), rps("litserve", level)),
            1.7,
        )
    bento = f"bentoml@{BENTO_BUDGET_MS:g}"
    if sv.get(bento):
        add(f"@64: shelf serve / BentoML (max_latency_ms={BENTO_BUDGET_MS:g}; issue 5)",
            ratio(rps("torchshelf", 64), rps(bento, 64)), 1.5)  # fmt: skip
    return out


# -- rendering -------------------------------------------------------------------------------------


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def _errors(e: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(e.items())) or "0"


def render_serve(model: str, res: dict[str, Any]) -> list[str]:
    """One table per model: every server at every level, then the ceilings and ratios."""
    raw = res["raw"]
    lim = limit_of(res)
    i, h, o = MODELS[model]
    lines = [f"### {model}: Linear({i},{h})-ReLU-Linear({h},{h})-ReLU-Linear({h},{o})", "",
             f"- raw forward at batch {MAX_BATCH}, in process: **{raw['rows_per_s']:,.0f} rows/s** with "
             f"{raw['threads']:.0f} torch threads, {raw['rows_per_s_serve_threads']:,.0f} rows/s with `shelf serve`'s "
             f"thread count; one batch-1 forward {raw['batch1_ms']:.2f} ms",
             *([f"- raw forward again after the servers: {ra['rows_per_s']:,.0f} rows/s ({ra['threads']:.0f} threads), "
                f"{ra['rows_per_s_serve_threads']:,.0f} rows/s (serve's)"] if (ra := res.get("raw_after")) else []),
             f"- additive limit at 64 clients = 1/(1/echo + 1/raw) = **{lim:,.0f} req/s**, raw = the best of these "
             f"({best_raw(res):,.0f} rows/s), echo = the echo row at 64 clients",
             "", "| server | clients | req/s | p50 ms | p99 ms | errors | mean batch | server CPU ms/req | / echo | / limit |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    echo = {r["concurrency"]: r["requests_per_s"] for r in res["servers"]["echo"]}
    for name in SERVERS:
        for r in res["servers"].get(name, []):
            c, rps = r["concurrency"], r["requests_per_s"]
            lat = r["latency_ms"]
            mb = r.get("batch_size_mean")
            flags = "" if r.get("stable", True) else " ~"
            lines.append(f"| {_label(name)} | {c} | {_num(rps)}{flags} | {lat['p50']:.1f} | {lat['p99']:.1f} | "
                         f"{_errors(r.get('errors', {}))} | {f'{mb:.1f}' if mb else ''} | "
                         f"{f'{cpu:.3f}' if (cpu := r.get('server_cpu_ms')) else ''} | "
                         f"{rps / echo[c]:.2f} | {rps / lim:.2f} |")  # fmt: skip
    return lines


def render_ratios(res: dict[str, Any]) -> list[str]:
    """shelf serve (JSON unless named) against each baseline, per level, from the rows above."""
    sv = res["servers"]
    pairs = [("torchshelf", "naive"), ("torchshelf", "echo"), ("torchshelf", "litserve"),
             ("torchshelf-st", "torchshelf"), ("torchshelf-v2", "torchshelf"), ("torchshelf-v2bin", "torchshelf"),
             ("torchshelf-v2bin", "torchshelf-v2")]  # fmt: skip
    pairs = [(a, b) for a, b in pairs if sv.get(a) and sv.get(b)]
    lines = ["| ratio (req/s; in brackets: the other's server CPU per request / this one's, > 1 = "
             "less work here) | " + " | ".join(f"{c} clients" for c in LEVELS) + " |",
             "|---|" + "---|" * len(LEVELS)]  # fmt: skip
    for a, b in pairs:
        cells = []
        for c in LEVELS:
            ra, rb = at(sv[a], c), at(sv[b], c)
            num, den = ra["requests_per_s"], rb["requests_per_s"]
            ca, cb = ra.get("server_cpu_ms"), rb.get("server_cpu_ms")
            cpu = f" ({cb / ca:.2f})" if ca and cb else ""
            cells.append((f"{num / den:.2f}x" if den else "inf") + cpu)
        lines.append(
            f"| {_label(a).replace('**', '')} / {_label(b).replace('**', '')} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _label(name: str) -> str:
    return {
        "echo": "echo (no model)",
        "naive": "naive starlette",
        "torchshelf": "**shelf serve** (JSON)",
        "torchshelf-st": "shelf serve (safetensors)",
        "torchshelf-v2": "shelf serve V2 JSON",
        "torchshelf-v2bin": "shelf serve V2 binary",
        "litserve": "LitServe",
        "bentoml@10": "BentoML max_latency 10 ms",
        "bentoml@1000": "BentoML max_latency 1000 ms",
    }.get(name, name)


def render_profile(title: str, prof: dict[str, Any] | None) -> list[str]:
    """A py-spy summary as two short tables."""
    if not prof:
        return [f"*{title}: no profile (py-spy not installed)*", ""]
    if "error" in prof:
        return [f"*{title}: {prof['error']}*", ""]
    raw = HERE.parent / prof.get("file", "")
    if prof.get("file") and raw.is_file():  # summarised again: the summary may have changed since
        prof = {
            **prof,
            **summarise_collapsed(
                raw, focus=tuple(filter(None, prof.get("focus", "").split(" or ")))
            ),
        }
    where = (
        f", stacks through `{prof['focus']}` only (other threads left out), I/O waits included"
        if prof.get("focus")
        else ""
    )
    lines = [f"**{title}** — {prof['samples']:,} samples{where}, `{prof.get('file', '')}` (py-spy raw/collapsed; "
             f"`flamegraph.pl` or speedscope render it)", "",
             "| self (leaf) | % | inclusive | % |", "|---|---|---|---|"]  # fmt: skip
    for (sf, sp), (inf, ip) in zip(prof["self"], prof["inclusive"], strict=False):
        lines.append(f"| `{sf}` | {sp} | `{inf}` | {ip} |")
    fwd = prof.get("forward") or {}
    if any(fwd.values()):
        lines += ["", "Samples in the model's `Linear.forward`, by thread: "
                  + ", ".join(f"{where} {n}" for where, n in fwd.items()) + "."]  # fmt: skip
    return [*lines, ""]


def _provenance(results: dict[str, Any]) -> str:
    """Which command produced which group: one line when a single run made them all."""
    groups = [g for g in ("store", "cli", "serve") if g in results]
    cmds = {results[g].get("_command", results.get("command", "?")).strip() for g in groups}
    tail = "Every target is a ratio of two measurements taken in the same run of the same group."
    if len(cmds) == 1:
        return f"Generated by `{cmds.pop()}`, started {results['date']} UTC. {tail}"
    each = "; ".join(
        f"{g}: `{results[g].get('_command', '?')}` ({results[g]['_date']})" for g in groups
    )
    return f"Groups from separate runs ({each}). {tail}"


def render_cli_table(c: dict[str, Any]) -> str:
    """The cli group's table; a group from before the several-sizes format gets its one column."""
    if "sizes" in c:
        return compare_store.render(None, c)
    rows = [("python -c pass", "python"), ("shelf list", "shelf_list"), ("shelf get", "shelf_get"),
            ("bentoml models list", "bentoml_list"), ("bentoml models get TAG", "bentoml_get")]  # fmt: skip
    lines = [f"| command ({c['versions']} versions, whole process) | median ms |", "|---|---|"]
    lines += [f"| {label} | {c[key] * 1e3:.0f} |" for label, key in rows if key in c]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """RESULTS.md from results.json (and ANALYSIS.md appended)."""
    m = results["machine"]
    v = m["versions"]
    lines = [
        "# torchshelf against the tools users would pick instead",
        "",
        _provenance(results),
        "",
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB memory, shared with other sessions.",
        f"- Software: Python {v['python']}, torch {v['torch']} (CPU), BentoML {v.get('bentoml', 'n/a')}, "
        f"LitServe {v.get('litserve', 'n/a')} (peers in their own venvs from `benchmarks/peers/setup`).",
        "- To reproduce: `benchmarks/peers/setup`, `pip install py-spy` (profiles; optional), then "
        "`python benchmarks/run.py` (about 15 minutes here; `--quick` about 6; `--only store|cli|serve` "
        "reruns one group). Raw figures: `benchmarks/results.json`.",
        "- Load average (1/5/15 min) at the start and end of each group: "
        + "; ".join(
            f"{g} {results[g]['_load'][0]} → {results[g]['_load'][1]}"
            for g in ("store", "cli", "serve")
            if g in results
        ),
        "",
        "## Targets",
        "",
        "| group | ratio | this run | target | |",
        "|---|---|---|---|---|",
    ]
    for t in targets(results):
        val = f"{t['value']:.0f} ms" if t["unit"] == "ms" else f"{t['value']:.2f}x"
        lines.append(
            f"| {t['group']} | {t['what']} | {val} | {t['goal']} | {'pass' if t['pass'] else '**miss**'} |"
        )
    if "store" in results:
        s = results["store"]
        lines += ["", f"## Store: save and load of a {s['size_mib']} MiB float32 MLP", "",
                  f"Run {s['_date']}, {s.get('_seconds', '?')} s. Medians of {s['repeats']}; each operation in its own process "
                  "(`compare_store.py` → `store_worker.py`). Every load is followed by one read of every weight "
                  "(a load that only mmaps is not a load). Saves are durable (fsync) for torchshelf and safetensors. "
                  "*First touch* = one load in a fresh process (page cache warm, process cold); *cold* needs "
                  "root to drop the page cache.", "",
                  compare_store.render(s["io"], None), "",
                  "Every save in seconds, by round (each round starts one method later than the last): "
                  + "; ".join(f"{m} " + ", ".join(f"{t:.2f}" for t in r.get("save_times", []))
                              for m, r in s["io"].items()), ""]  # fmt: skip
        for k, prof in s.get("profiles", {}).items():
            lines += render_profile(f"Profile of torchshelf {k} (a target was missed)", prof)
    if "cli" in results:
        c = results["cli"]
        lines += ["", f"## CLI: whole processes, {c.get('sizes', [c['versions']])} versions", "",
                  f"Run {c['_date']}, {c.get('_seconds', '?')} s. Medians; `bentoml` runs from its venv with `BENTOML_DO_NOT_TRACK=true`.", "",
                  render_cli_table(c), ""]  # fmt: skip
        lines += (
            render_profile("Profile of `shelf list` (a target was missed)", c.get("profile_list"))
            if "profile_list" in c
            else []
        )
    if "serve" in results:
        sv = results["serve"]
        o = sv["_opts"]
        lines += ["", "## Serving", "",
                  f"Run {sv['_date']}, {sv.get('_seconds', '?')} s. ![req/s and p99 vs clients](serving.png)", "",
                  "- **Load generator: `shelf bench --url` for every server** (raw-asyncio HTTP/1.1 keep-alive client, "
                  "one connection per closed-loop client, 1 process; it reports its own CPU and flags a client-bound "
                  f"level). Per level: {o['warmup']} s warm-up, then {o['duration']} s windows repeated until the last "
                  f"3 agree within 10 % or {o['max_windows']} windows (`~` marks a level that never agreed).",
                  "- Same body for every server: one random float32 row, `{\"inputs\": [[...]]}` (a safetensors row "
                  "for the binary transport, answered as safetensors; for V2 on `/v2/models/<name>/infer` the row as a "
                  "flat FP32 `data` list, or, for V2 binary, the binary tensor data extension: JSON header + raw bytes "
                  "with `Inference-Header-Content-Length` and `Content-Type: application/octet-stream`, output asked "
                  "for as `binary_data`). echo, naive and one `shelf serve` (its four transports) are up at once and take turns at each level, in an order rotated per level, so the rows a target compares are seconds apart. Same batching: max batch 32, max latency 10 ms; BentoML also at "
                  f"`max_latency_ms={BENTO_BUDGET_MS:g}`, a budget it meets. Access logs off everywhere.",
                  "- BentoML gets a fresh server per concurrency level (its latency model has hysteresis, "
                  "`peers/README.md`). `shelf serve` runs torch on all cores but one (1 thread here); the peers "
                  "use torch's default (2).",
                  "- p99 and p50 are over successful requests; req/s counts 200s only. `mean batch` is read from "
                  "`shelf serve`'s `/metrics`. `server CPU ms/req` is the server's process tree's user+system CPU "
                  "over the level (warm-up included) per answered request: it drifts less than req/s on a shared "
                  "machine. The limit's raw term is the better of the two thread settings.", ""]  # fmt: skip
        for model, res in sv.items():
            if model.startswith("_"):
                continue
            lines += render_serve(model, res) + [""] + render_ratios(res) + [""]
            for key, p in res.get("profiles", {}).items():
                name, _, level = key.partition("@")
                b = p["bench"]
                lines += render_profile(f"Profile of {_label(name).replace('**', '')} ({model}) at {level} "
                                        f"client(s) ({b['requests_per_s']:,.0f} req/s while sampled)", p.get("summary"))  # fmt: skip
    lines += ["", "## Findings about the peers", "",
              "- **BentoML 1.4 cannot load its own PyTorch models under torch ≥ 2.6 by default.** "
              "`bentoml.pytorch.load_model(tag)` raises `UnpicklingError: Weights only load failed`: torch.load "
              "defaults to `weights_only=True` since 2.6 and BentoML pickles the whole module. The peer passes "
              "`weights_only=False`, i.e. the user must opt into unpickling arbitrary code. torchshelf stores "
              "weights as safetensors and never unpickles them.",
              "- **BentoML `max_latency_ms=10` answers 503 to most requests from 8 clients up** (see the `errors` "
              "column). `max_latency_ms` is a per-request deadline enforced by cancelling queued requests "
              "(`CorkDispatcher`), not a batching window; its latency model is fit on the batch callback's wall "
              "time, which on a busy event loop is mostly loop congestion (16–18 ms learned overhead vs < 1 ms "
              "of forward), so once the fit exceeds the budget it sheds almost everything, and each 503 logs a "
              "traceback, which keeps the loop busy. It also has hysteresis. Details and source lines: "
              "`benchmarks/peers/README.md`, Finding 1. At a budget it can meet (1000 ms) it serves with no 503s.",
              "- **LitServe waits the whole `batch_timeout` for a lone request** (`collate_requests` never "
              "dispatches early), so 1 client gets ~1/timeout req/s; and its children survive SIGTERM "
              "(no handler installed). `benchmarks/peers/README.md`, Finding 2.", ""]  # fmt: skip
    if ANALYSIS.exists():
        lines += ["", ANALYSIS.read_text().strip(), ""]
    if FAULTS.exists():
        lines += ["", FAULTS.read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def plot(serve: dict[str, Any], path: Path) -> None:
    """req/s and p99 vs clients, one line per server, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in serve if not m.startswith("_")]
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        res = serve[model]
        for name in SERVERS:
            rows = res["servers"].get(name)
            if not rows:
                continue
            xs = [r["concurrency"] for r in rows]
            style = (
                {"linewidth": 2.5}
                if name == "torchshelf"
                else {"linestyle": "--"}
                if name == "echo"
                else {}
            )
            axes[row][0].plot(
                xs,
                [r["requests_per_s"] for r in rows],
                marker="o",
                label=_label(name).replace("**", ""),
                **style,
            )
            axes[row][1].plot(
                xs,
                [r["latency_ms"]["p99"] for r in rows],
                marker="o",
                label=_label(name).replace("**", ""),
                **style,
            )
        axes[row][0].axhline(limit_of(res), color="grey", linestyle=":", label="additive limit @64")
        axes[row][0].set_title(f"{model}: requests/s (200s only)")
        axes[row][1].set_title(f"{model}: p99 latency (ms)")
        axes[row][1].set_yscale("log")
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(LEVELS), [str(c) for c in LEVELS])
            ax.set_xlabel("closed-loop clients")
            ax.grid(True, alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.suptitle(
        f"Serving on {os.cpu_count()} shared cores, client: shelf bench --url ({serve['_date']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the chosen groups, merge into results.json, regenerate RESULTS.md and the chart."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="small model, fewer versions, short windows"
    )
    p.add_argument("--only", choices=["store", "cli", "serve"])
    p.add_argument("--models", default="small,big", help="serve: which models")
    p.add_argument(
        "--duration", type=float, help="serve: seconds per window (default 2; 1 with --quick)"
    )
    p.add_argument(
        "--max-windows",
        type=int,
        help="serve: windows per level at most (default 4; 3 with --quick)",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="serve: warm-up seconds per level")
    p.add_argument(
        "--profile-s",
        type=float,
        default=5.0,
        help="serve: seconds of py-spy on shelf serve at 64 clients",
    )
    p.add_argument("--no-profile", action="store_true")
    p.add_argument(
        "--render-only", action="store_true", help="only regenerate RESULTS.md and the chart"
    )
    opts = p.parse_args(argv)
    opts.duration = opts.duration or (1.0 if opts.quick else 2.0)
    opts.max_windows = opts.max_windows or (3 if opts.quick else 4)
    opts.models = [m for m in opts.models.split(",") if m]
    results: dict[str, Any] = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    if not opts.render_only:
        groups = [opts.only] if opts.only else ["store", "cli", "serve"]
        if not opts.only:
            results = {}
        results["command"] = (
            "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        ).strip()
        results["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        results["machine"] = machine()
        runners = {
            "store": lambda: run_store(opts.quick),
            "cli": lambda: run_cli(opts.quick),
            "serve": lambda: run_serve(opts),
        }
        for g in groups:
            # profiles left by an earlier run of this group would be read as this run's
            for stale in PROFILES.glob("*.txt"):
                if stale.name.startswith(
                    {"store": ("store-",), "cli": ("cli-",), "serve": ("serve-", "echo-")}[g]
                ):
                    stale.unlink()
            load0 = " / ".join(f"{x:.1f}" for x in os.getloadavg())
            t0 = time.monotonic()
            results[g] = runners[g]()
            results[g]["_load"] = [load0, " / ".join(f"{x:.1f}" for x in os.getloadavg())]
            results[g]["_date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M") + (
                " (--quick)" if opts.quick else ""
            )
            results[g]["_seconds"] = round(time.monotonic() - t0)
            results[g]["_command"] = results["command"]
            if g == "serve":
                results[g]["_opts"] = {
                    k: getattr(opts, k) for k in ("duration", "max_windows", "warmup")
                }
            RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str))
            say(f"{g} done in {results[g]['_seconds']} s")
    RESULTS_MD.write_text(render(results))
    if "serve" in results:
        plot(results["serve"], CHART)
    for t in targets(results):
        say(f"{'pass' if t['pass'] else 'MISS'}  {t['what']}: {t['value']:.2f} ({t['goal']})")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the launch() teardowns
    main()
