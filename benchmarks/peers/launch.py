"""Start a peer server on a free loopback port, wait until it answers, and tear it all down.

Why: the comparative benchmark must run BentoML, LitServe, the echo ceiling and the naive
endpoint back to back without leaving processes behind. Both peers spawn children that a plain
SIGTERM to the parent does not reach:
- LitServe 0.2.19's `LitServer.run` installs no SIGTERM handler, so SIGTERM kills the parent
  at once and its API-server, inference-worker and resource-tracker children live on;
- BentoML 1.4 runs its service worker through circus in a *new session* (its own process group),
  so killing the parent's process group alone does not reach it (circus stops it on SIGTERM,
  but not if the arbiter is SIGKILLed).
So each peer starts in its own session; teardown records every descendant first (from /proc),
sends SIGTERM to every process group involved, waits, then SIGKILLs whatever is left.

    from launch import launch
    with launch("litserve", "small") as peer:
        print(peer.url)          # http://127.0.0.1:PORT/predict
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ("bentoml", "litserve", "echo", "naive")
SCRIPTS = {
    "bentoml": "bentoml_peer.py",
    "litserve": "litserve_peer.py",
    "echo": "echo.py",
    "naive": "naive.py",
}
INPUT_DIM = {"small": 64, "big": 1024}  # mirrors peer_common (which imports torch; we don't)


def peers_dir() -> Path:
    """The venv cache directory used by benchmarks/peers/setup."""
    explicit = os.environ.get("TORCHSHELF_PEERS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "torchshelf-peers"


def peer_python(name: str) -> str:
    """The interpreter that runs a peer: its venv for BentoML/LitServe, ours for echo/naive."""
    if name in ("echo", "naive"):
        return sys.executable
    py = peers_dir() / name / "bin" / "python"
    if not py.exists():
        raise FileNotFoundError(f"{py} is missing; run benchmarks/peers/setup first")
    return str(py)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the peer binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    """ppid -> child pids, read from /proc (Linux)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces; fields follow the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> set[int]:
    """Every live descendant of pid (children, grandchildren, ...)."""
    children = _children_map()
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    """Send sig to each pid's process group and to the pid itself (ignoring the gone)."""
    groups: set[int] = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgrp())  # never signal our own group
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_tree(
    proc: subprocess.Popen[bytes], grace_s: float = 10.0, known: set[int] | None = None
) -> list[int]:
    """Stop proc and all its descendants: SIGTERM, wait up to grace_s, then SIGKILL.

    `known` adds pids seen earlier: a child whose parent already died has been re-parented to
    init and no longer shows up as a descendant. Returns the pids that needed SIGKILL.
    """
    pids = {proc.pid} | descendants(proc.pid) | {p for p in (known or set()) if _alive(p)}
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap our direct child so it doesn't linger as a zombie
        pids |= {d for p in list(pids) if _alive(p) for d in descendants(p)}
        if not any(_alive(p) for p in pids):
            return []
        time.sleep(0.05)
    killed = sorted(p for p in pids if _alive(p))
    _signal_all(set(killed), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return killed


@dataclass
class Peer:
    """A running peer server."""

    name: str
    model: str
    port: int
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = 0.0
    pids: set[int] = field(default_factory=set)  # the process tree once it answered
    sigkilled: list[int] = field(default_factory=list)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's combined stdout/stderr, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _answers(url: str, body: bytes) -> bool:
    """True when POST url answers 200 to a valid one-row request."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@contextlib.contextmanager
def launch(
    name: str,
    model: str = "small",
    *,
    max_batch_size: int = 32,
    max_latency_ms: float = 10.0,
    port: int | None = None,
    ready_timeout_s: float = 180.0,
    grace_s: float = 10.0,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> Iterator[Peer]:
    """Run one peer (bentoml|litserve|echo|naive) for the duration of the with-block."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    if model not in INPUT_DIM:
        raise ValueError(f"unknown model {model!r}; choose small or big")
    port = port or free_port()
    cmd = [peer_python(name), str(HERE / SCRIPTS[name]), "--model", model, "--port", str(port),
           "--max-batch-size", str(max_batch_size), "--max-latency-ms", str(max_latency_ms)]  # fmt: skip
    log_dir = log_dir or Path(tempfile.gettempdir())
    log_path = log_dir / f"torchshelf-peer-{name}-{model}-{port}.log"
    full_env = {**os.environ, **(env or {})}
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=full_env, cwd=HERE, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/predict"
    peer = Peer(name, model, port, url, proc, log_path)
    try:
        body = json.dumps({"inputs": [[0.0] * INPUT_DIM[model]]}).encode()
        deadline = t0 + ready_timeout_s
        while not _answers(url, body):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} before answering:\n{peer.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not answer within {ready_timeout_s:.0f} s")
            time.sleep(0.2)
        peer.startup_s = time.monotonic() - t0
        peer.pids = {proc.pid} | descendants(proc.pid)
        yield peer
    finally:
        peer.sigkilled = stop_tree(proc, grace_s, peer.pids)


def main(argv: list[str] | None = None) -> None:
    """Smoke test: start each named peer, send one request, stop it, report leftovers."""
    import argparse

    p = argparse.ArgumentParser(description="Start, probe and stop peers (smoke test).")
    p.add_argument("peers", nargs="*", default=list(PEERS))
    p.add_argument("--model", default="small", choices=sorted(INPUT_DIM))
    p.add_argument("--kill-parent", action="store_true", help="SIGKILL the parent before teardown")
    args = p.parse_args(argv)
    ok = True
    for name in args.peers:
        with launch(name, args.model) as peer:
            pids = set(peer.pids)
            if args.kill_parent:  # simulate a crashed parent: its children are orphaned
                os.kill(peer.process.pid, signal.SIGKILL)
                peer.process.wait()
        left = sorted(pid for pid in pids if _alive(pid))
        ok = ok and not left
        print(json.dumps({"peer": name, "model": args.model, "startup_s": round(peer.startup_s, 2),
                          "processes": len(pids), "sigkilled": peer.sigkilled, "left": left}))  # fmt: skip
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
