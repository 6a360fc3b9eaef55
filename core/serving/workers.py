"""`shelf serve --workers N`: N server processes on one listening socket, under a supervisor.

- The supervisor (the `shelf serve` process itself) binds the socket once and hands it to each
  worker (fd inheritance, as uvicorn's and gunicorn's workers do). Every worker accepts from the
  same queue, so a worker that dies loses only the connections it had accepted; new ones go to
  the others at once.
- Each worker is a fresh interpreter (`python -m torchshelf.serving.workers SPEC INDEX FD`): it
  resolves the same target, loads every replica of `--device`, and serves. On CPU the torch
  threads are split between the workers (one core each is left for its event loop).
- The workers share a private temporary directory, which is also `PROMETHEUS_MULTIPROC_DIR`:
  `ready-<i>` (worker i's pid, written once it is ready) and prometheus_client multiprocess
  files holding each worker's metrics. `/readyz` answers 200 only when every worker's file is
  there and its process alive; `/metrics` is the sum over workers (`MultiProcessCollector`).
- Metrics stay the lock-free in-process counters of `metrics.py` on the hot path; each worker
  publishes a snapshot of its registry into its files every `PUBLISH_S` (and right before
  answering a scrape itself, and at exit). A scrape therefore sums the other workers' counters
  as of at most `PUBLISH_S` ago; a SIGKILLed worker's last `PUBLISH_S` are lost. Counters of
  dead workers stay in the sum (totals never go down); their gauges are dropped.
- A worker that dies is replaced (after a back-off if it keeps dying young). One that exits 1
  before it was ever ready failed to load the model: the supervisor stops them all and exits 1.
- SIGTERM/SIGINT: the supervisor closes its copy of the socket and sends SIGTERM to every
  worker; each drains (finishes in-flight requests) and exits; the supervisor exits 0 when all
  exited cleanly. A second signal is forwarded and the supervisor exits 128 + signal at once.
  Workers also get SIGTERM if the supervisor itself dies (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["PUBLISH_S", "SharedState", "WorkerApp", "run_workers", "worker_threads"]

PUBLISH_S = 0.25
SUPERVISOR_ENV = "TORCHSHELF_SUPERVISOR_PID"  # a worker's check that its supervisor is alive
_TICK_S = 0.05
_YOUNG_S = 10.0  # a worker that dies younger than this is restarted after a growing back-off


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker on CPU: the cores split evenly, one per worker left for its
    event loop (never below one)."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 2
    return max(1, cores // workers - 1)


class SharedState:
    """The supervisor's and workers' shared directory: readiness files and metrics files."""

    def __init__(self, path: Path, workers: int) -> None:
        self.path = path
        self.workers = workers

    def _ready_file(self, index: int) -> Path:
        return self.path / f"ready-{index}"

    def mark_ready(self, index: int, pid: int | None = None) -> None:
        tmp = self.path / f".ready-{index}.{os.getpid()}"
        tmp.write_text(str(os.getpid() if pid is None else pid))
        os.replace(tmp, self._ready_file(index))

    def clear(self, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._ready_file(index).unlink()

    def ready_pid(self, index: int) -> int | None:
        """The pid of worker `index` if it said it is ready and is still alive."""
        try:
            pid = int(self._ready_file(index).read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return None if _is_zombie(pid) else pid

    def ready_count(self) -> int:
        return sum(self.ready_pid(i) is not None for i in range(self.workers))


def _is_zombie(pid: int) -> bool:
    """A worker that died but is not reaped yet (the supervisor polls every 50 ms)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # not Linux, or gone
    return stat.rpartition(")")[2].split()[0] == "Z"


# -- the worker side: metrics publishing, /readyz and /metrics over all workers ---------------


class MetricsPublisher:
    """Writes a snapshot of one worker's registry into prometheus_client multiprocess files."""

    def __init__(self, registry: Any, path: Path, pid: int | None = None) -> None:
        self.registry = registry
        self.path = path
        self.pid = os.getpid() if pid is None else pid
        self._files: dict[str, Any] = {}

    def _file(self, kind: str) -> Any:
        from prometheus_client.mmap_dict import MmapedDict

        if kind not in self._files:
            self._files[kind] = MmapedDict(str(self.path / f"{kind}_{self.pid}.db"))
        return self._files[kind]

    def publish(self) -> None:
        from prometheus_client.mmap_dict import mmap_key

        for family in self.registry.collect():
            kind, keep = _mmap_kind(family)
            if kind is None:
                continue
            out = self._file(kind)
            previous: dict[tuple[tuple[str, str], ...], float] = {}
            for sample in family.samples:
                if not keep(sample.name):
                    continue
                value = float(sample.value)
                labels = dict(sample.labels)
                if sample.name.endswith("_bucket"):  # stored per bucket, not cumulative
                    group = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                    value, previous[group] = value - previous.get(group, 0.0), value
                key = mmap_key(
                    family.name, sample.name, list(labels), list(labels.values()),
                    family.documentation,
                )  # fmt: skip
                out.write_value(key, value, 0.0)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _mmap_kind(family: Any) -> tuple[str | None, Callable[[str], bool]]:
    """Which multiprocess file a family goes to, and which of its samples are kept."""
    if family.type == "counter":
        return "counter", lambda name: name.endswith("_total")
    if family.type == "histogram":
        return "histogram", lambda name: name.endswith(("_bucket", "_sum"))
    if family.type == "gauge":
        # an info-style gauge (1 per live version) is the same in every worker: max, not sum
        mode = "livemax" if family.name.endswith("_info") else "livesum"
        return f"gauge_{mode}", lambda name: True
    return None, lambda name: False


class WorkerApp:
    """Wraps a worker's ASGI app: `/readyz` also requires every other worker to be ready,
    `/metrics` answers the sum over workers; everything else goes straight through."""

    def __init__(self, app: Any, shared: SharedState, registry: Any) -> None:
        self.app = app
        self.shared = shared
        self.publisher = MetricsPublisher(registry, shared.path)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == "/readyz":
                await self._readyz(scope, receive, send)
                return
            if path == "/metrics":
                await self._metrics(scope, receive, send)
                return
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def publish_forever() -> None:
            while True:
                await asyncio.sleep(PUBLISH_S)
                self.publisher.publish()

        task = asyncio.ensure_future(publish_forever())
        try:
            await self.app(scope, receive, send)
        finally:
            task.cancel()
            self.publisher.publish()  # the last counts of a clean exit are kept
            self.publisher.close()

    async def _inner(self, scope: dict[str, Any], receive: Any) -> tuple[int, list[Any], bytes]:
        """Run the request through the wrapped app and capture its answer."""
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        return int(start.get("status", 500)), list(start.get("headers", [])), b"".join(body)

    async def _readyz(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        status, headers, body = await self._inner(scope, receive)
        if status == 200:
            ready, total = self.shared.ready_count(), self.shared.workers
            state = "ready" if ready == total else "loading"
            status = 200 if ready == total else 503
            body = json.dumps({"status": state, "workers_ready": ready, "workers": total}).encode()
            headers = [(b"content-type", b"application/json")]
        await _answer(send, status, headers, body)

    async def _metrics(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        status, headers, body = await self._inner(scope, receive)  # auth, fresh gauges
        if status == 200:
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
            from prometheus_client.multiprocess import MultiProcessCollector

            self.publisher.publish()
            total = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(total, path=str(self.shared.path))
            body = generate_latest(total)
            headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await _answer(send, status, headers, body)


async def _answer(send: Any, status: int, headers: list[Any], body: bytes) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _registry_of(app: Any) -> Any:
    """The prometheus CollectorRegistry of the app `build_app` made."""
    metrics = getattr(app, "metrics", None) or app.state.metrics
    return metrics.registry


def _die_with_parent() -> None:
    """Get SIGTERM when the supervisor dies (Linux), so no worker outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_main(argv: list[str]) -> int:
    """One worker: `SPEC INDEX FD`."""
    from .app import ServeOptions
    from .server import run_server
    from .target import resolve_targets

    spec_path, index, fd = argv[0], int(argv[1]), int(argv[2])
    _die_with_parent()
    # The supervisor may have died before prctl took effect (we would be init's child then):
    # compare with the pid it gave us, not with what getppid() said when we started.
    from ..config import supervisor_pid

    if os.getppid() != (supervisor_pid() or os.getppid()):
        return 1
    spec = json.loads(Path(spec_path).read_text())
    shared = SharedState(Path(spec["dir"]), int(spec["workers"]))
    sock = socket.socket(fileno=fd)
    (served,) = resolve_targets([spec["target"]], spec["device"])
    options = ServeOptions(**spec["options"])

    def ready() -> None:
        shared.mark_ready(index)

    return run_server(
        served,
        options,
        on_ready=ready,
        sockets=[sock],
        wrap_app=lambda app: WorkerApp(app, shared, _registry_of(app)),
    )


# -- the supervisor ------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


@dataclasses.dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ever_ready: bool = False
    young_deaths: int = 0
    restart_at: float | None = None


def _how(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _Supervisor:
    def __init__(
        self,
        sock: socket.socket,
        shared: SharedState,
        spec_path: Path,
        on_ready: Callable[[], None] | None,
        log: Callable[[str], None],
    ) -> None:
        self.sock = sock
        self.shared = shared
        self.spec_path = spec_path
        self.on_ready = on_ready
        self.log = log
        self.workers = [_Worker(i) for i in range(shared.workers)]
        self.stopping = 0  # the signal that asked, once one did
        self.fatal: str | None = None
        self.all_ready = False

    def spawn(self, w: _Worker) -> None:
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self.shared.path))
        env[SUPERVISOR_ENV] = str(os.getpid())
        fd = self.sock.fileno()
        cmd = [sys.executable, "-m", "torchshelf.serving.workers", str(self.spec_path)]
        w.proc = subprocess.Popen([*cmd, str(w.index), str(fd)], env=env, pass_fds=(fd,))
        w.started, w.ever_ready, w.restart_at = time.monotonic(), False, None

    def signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping:
            for w in self.workers:  # asked twice: the workers exit at once too
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGTERM)
            os._exit(128 + sig)
        self.stopping = sig

    def reap(self, w: _Worker) -> None:
        """Notice a worker's death: forget its readiness and schedule a replacement."""
        assert w.proc is not None
        code = w.proc.returncode
        from prometheus_client.multiprocess import mark_process_dead

        self.shared.clear(w.index)
        mark_process_dead(w.proc.pid, str(self.shared.path))
        if code == 1 and not w.ever_ready:
            self.fatal = f"worker {w.index} failed to start (exit code 1); stopping"
            return
        now = time.monotonic()
        young = now - w.started < _YOUNG_S
        w.young_deaths = w.young_deaths + 1 if young else 0
        delay = min(5.0, 0.25 * 2 ** (w.young_deaths - 1)) if young else 0.0
        self.log(
            f"worker {w.index} (pid {w.proc.pid}) died: {_how(code)}; "
            f"starting a replacement{f' in {delay:g} s' if delay else ''}"
        )
        w.proc, w.restart_at = None, now + delay

    def tick(self) -> None:
        for w in self.workers:
            if w.proc is None:
                if w.restart_at is not None and time.monotonic() >= w.restart_at:
                    self.spawn(w)
            elif w.proc.poll() is not None:
                self.reap(w)
            elif not w.ever_ready and self.shared.ready_pid(w.index) == w.proc.pid:
                w.ever_ready = True
        if not self.all_ready and all(w.ever_ready for w in self.workers):
            self.all_ready = True
            if self.on_ready is not None:
                self.on_ready()

    def drain(self) -> int:
        """Stop accepting, SIGTERM every worker, wait for each to finish its drain."""
        self.sock.close()
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait() for proc in live]
        # a worker still loading when SIGTERM came may die by it: it had nothing in flight
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT)
        original = {sig: signal.signal(sig, self.signal) for sig in handled}
        try:
            for w in self.workers:
                self.spawn(w)
            while not self.stopping and self.fatal is None:
                self.tick()
                time.sleep(_TICK_S)
            if self.fatal is not None:
                self.log(self.fatal)
                self.drain()
                return 1
            return self.drain()
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run_workers(
    target: str,
    device: str | None,
    options: Any,
    workers: int,
    on_ready: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Serve `target` from `workers` processes on options.host:port until SIGTERM; the exit
    code (0 after every worker drained cleanly, 1 if a worker could not load the model)."""
    if options.threads is None and (device is None or device.startswith("cpu")):
        options = dataclasses.replace(options, threads=worker_threads(workers))
    sock = _listen(options.host, options.port)
    with tempfile.TemporaryDirectory(prefix="torchshelf-workers-") as tmp:
        path = Path(tmp)
        spec = {
            "target": target,
            "device": device,
            "options": dataclasses.asdict(options),
            "workers": workers,
            "dir": tmp,
        }
        (path / "spec.json").write_text(json.dumps(spec))
        shared = SharedState(path, workers)

        def stderr(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        return _Supervisor(sock, shared, path / "spec.json", on_ready, log or stderr).run()


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
