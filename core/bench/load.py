"""Server mode: a closed-loop HTTP/1.1 load generator that costs the client as little as we can.

Why it is built this way (see MEASURING.md: one httpx process tops out near 1,300 req/s here,
which caps any server it drives):

- Raw asyncio streams and a hand-written HTTP/1.1 keep-alive exchange: the request is encoded
  once into bytes, each "client" owns one connection, and the response is read by
  `Content-Length` (or chunked framing) with no header objects built.
- The request path appends two integers to lists and nothing else; percentiles, error counts
  and window statistics are computed by the controller between windows.
- `procs` worker processes share the connections of a level, so the client can use more than one
  core; each reports its own CPU time, and the result says when the client, not the server, was
  the limit (`client_bound`).
- Windows repeat until the last three agree (`report.windows_agree`), like perf_analyzer.
- It only ever connects to the host and port of the URL it is given (the request route, and
  `/metrics` on the same address for the server's batch sizes).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ShelfError, UsageError
from .report import (
    BenchReport,
    LatencyStats,
    ServerResult,
    Window,
    busy_machine_warnings,
    windows_agree,
)

__all__ = [
    "Endpoint",
    "RequestBody",
    "LoadSettings",
    "body_from_shape",
    "body_from_file",
    "body_from_server",
    "bench_server",
    "parse_batch_size_histogram",
]

# (label, windows done, most windows, finished) - same shape as model mode's progress callback.
Progress = Callable[[str, int, int, bool], None]

_WORKER = Path(__file__).with_name("_worker.py")

# Recorded by the worker for a request that failed below HTTP (reset, refused, bad framing),
# or that got no complete answer within `LoadSettings.timeout_s`.
CONNECTION_ERROR = 0
TIMEOUT = -1
_ERROR_NAMES = {CONNECTION_ERROR: "connection", TIMEOUT: "timeout"}

# A worker whose process used more than this fraction of one core was probably the bottleneck.
CLIENT_BOUND_CPU = 0.85


class ServerUnreachable(ShelfError):
    """The benchmark target refused the connection or answered the probe request with an error."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: scheme, host, port and path of the `--url`."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Validate `--url`; only http(s)://HOST[:PORT]/PATH is accepted."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"--url {url!r} is not an http(s) URL; write e.g. http://127.0.0.1:3000/predict"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"--url {url!r} has an invalid port") from None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def origin(self) -> str:
        """`scheme://host:port`, for the probe and `/metrics` (same address, never another)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The full request URL."""
        return self.origin + self.path

    @property
    def api(self) -> str:
        """The api name the server labels its metrics with: the last path segment."""
        return self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "predict"


@dataclass(frozen=True)
class RequestBody:
    """A request body encoded once, and how many items it carries (for items/s)."""

    data: bytes
    content_type: str = "application/json"
    items: int = 1
    source: str = ""


def _random_nested(shape: Sequence[int], integer: bool, rng: random.Random) -> Any:
    if not shape:
        return rng.randrange(100) if integer else round(rng.gauss(0.0, 1.0), 4)
    return [_random_nested(shape[1:], integer, rng) for _ in range(shape[0])]


def body_from_shape(
    item_shape: Sequence[int],
    dtype: str = "float32",
    items: int = 1,
    *,
    batch_dim: int = 0,
    key: str = "inputs",
) -> RequestBody:
    """`{"inputs": ...}` holding `items` random items of `item_shape`, batched at `batch_dim`.

    Values are rounded to 4 decimals: the server parses them like any client's, and shorter
    numbers keep the body (and the client's cost of sending it) close to what people send.
    """
    integer = not (dtype.startswith("float") or dtype.startswith("bfloat"))
    shape = list(item_shape)
    shape.insert(batch_dim, items)
    inputs = _random_nested(shape, integer, random.Random(0))
    data = json.dumps({key: inputs}, separators=(",", ":")).encode()
    text = ",".join(map(str, item_shape))
    return RequestBody(data, "application/json", items, f"shape {text} ({dtype}) x {items}")


def _fetch_schema(endpoint: Endpoint, headers: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
    """`GET /schema` on the target's own address (what `shelf serve` reports), or None."""
    import httpx

    try:
        response = httpx.get(
            endpoint.origin + "/schema", headers=dict(headers), timeout=5.0, trust_env=False
        )
        doc = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def body_from_server(
    endpoint: Endpoint, headers: Sequence[tuple[str, str]] = ()
) -> RequestBody | None:
    """Build a one-item body from the input spec the server reports at `GET /schema`.

    `shelf serve` describes each api there (path, batch, batch_dim, input_spec with the full
    shape and -1 for free dims, parameter names). None when the server has no such route, the
    api is not listed, or a free dimension other than the batch one leaves the shape unknown.
    """
    doc = _fetch_schema(endpoint, headers)
    if doc is None:
        return None
    path = endpoint.path.split("?", 1)[0]
    api = next(
        (a for a in doc.get("apis", []) if isinstance(a, dict) and a.get("path") == path), None
    )
    if api is None:
        return None
    params = [p for p in api.get("params") or [] if isinstance(p, dict)]
    spec = api.get("input_spec")
    if not isinstance(spec, dict) and len(params) == 1 and params[0].get("shape"):
        spec = {"shape": params[0]["shape"], "dtype": params[0].get("dtype") or "float32"}
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list) or len(params) > 1:
        return None
    shape = [int(d) for d in spec["shape"]]
    batch_dim = int(api.get("batch_dim") or 0)
    if api.get("batch") and 0 <= batch_dim < len(shape):
        shape.pop(batch_dim)
    elif shape and shape[0] == -1:  # an unbatched api whose leading dim is free: send one row
        shape, batch_dim = shape[1:], 0
    else:
        batch_dim = -1
    if any(d <= 0 for d in shape):
        return None
    key = str(params[0].get("name") or "inputs") if params else "inputs"
    dtype = str(spec.get("dtype") or "float32")
    if batch_dim < 0:  # the spec is the whole input: no batch dimension to add
        data = json.dumps(
            {
                key: _random_nested(
                    shape, not dtype.startswith(("float", "bfloat")), random.Random(0)
                )
            },
            separators=(",", ":"),
        ).encode()
        return RequestBody(data, "application/json", 1, f"/schema {shape} ({dtype})")
    body = body_from_shape(shape, dtype, 1, batch_dim=batch_dim, key=key)
    return RequestBody(body.data, body.content_type, 1, f"/schema {body.source}")


def body_from_file(path: str | Path, content_type: str | None = None) -> RequestBody:
    """A body read from a file as-is; the content type follows the extension unless given."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"--body {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    if content_type is None:
        content_type = {
            ".json": "application/json",
            ".safetensors": "application/vnd.safetensors",
            ".bin": "application/octet-stream",  # e.g. a V2 binary-extension body, sent as-is
        }.get(p.suffix.lower(), "application/json")
    items = 1
    if content_type == "application/json":
        try:
            doc = json.loads(data)
        except ValueError:
            raise UsageError(f"--body {str(p)!r} is not valid JSON") from None
        if isinstance(doc, dict) and isinstance(doc.get("inputs"), list) and doc["inputs"]:
            first = doc["inputs"][0]
            items = len(doc["inputs"]) if isinstance(first, list) else 1
    return RequestBody(data, content_type, items, f"--body {p}")


@dataclass(frozen=True)
class LoadSettings:
    """How to load the server: the knobs of `shelf bench --url`, recorded in the JSON."""

    concurrency: tuple[int, ...] = (1, 8, 64)
    warmup_s: float = 1.0
    duration_s: float = 2.0  # length of one measurement window
    stability: float = 0.10
    max_windows: int = 10
    procs: int = 1
    headers: tuple[tuple[str, str], ...] = field(default=())
    timeout_s: float = 30.0  # a request unanswered this long counts as a "timeout" error

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise UsageError("--concurrency needs positive integers, e.g. 1,8,64")
        if self.warmup_s < 0:
            raise UsageError("--warmup-duration must be >= 0 seconds")
        if not self.duration_s > 0:
            raise UsageError("--duration must be a positive number of seconds")
        if not self.stability > 0:
            raise UsageError("--stability must be a positive percentage, e.g. 10%")
        if self.max_windows < 3:
            raise UsageError("--max-windows must be at least 3 (stability compares the last 3)")
        if self.procs < 1:
            raise UsageError("--procs must be >= 1")
        if not self.timeout_s > 0:
            raise UsageError("--timeout must be a positive number of seconds")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy for the report (header values are hidden: they may hold tokens)."""
        out = asdict(self)
        out["concurrency"] = list(self.concurrency)
        out["headers"] = [name for name, _ in self.headers]
        return out


def _content_type(body: RequestBody, headers: Sequence[tuple[str, str]]) -> str:
    """A `-H 'Content-Type: ...'` replaces the body's own type (sent once, never twice)."""
    given = [v for k, v in headers if k.lower() == "content-type"]
    return given[-1] if given else body.content_type


def _other_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != "content-type"]


def _encode_request(
    endpoint: Endpoint, body: RequestBody, headers: Sequence[tuple[str, str]]
) -> bytes:
    host = endpoint.host if ":" not in endpoint.host else f"[{endpoint.host}]"
    lines = [
        f"POST {endpoint.path} HTTP/1.1",
        f"Host: {host}:{endpoint.port}",
        "User-Agent: torchshelf-bench",
        "Accept: */*",
        f"Content-Type: {_content_type(body, headers)}",
        f"Content-Length: {len(body.data)}",
        *(f"{k}: {v}" for k, v in _other_headers(headers)),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body.data


# --- the server's own batch sizes from /metrics -------------------------------------------------


@dataclass(frozen=True)
class _Histogram:
    sum: float
    count: float
    buckets: dict[float, float]  # le -> cumulative count


def parse_batch_size_histogram(text: str, api: str | None = None) -> _Histogram | None:
    """Read `torchshelf_batch_size` from Prometheus text; sum over apis unless `api` matches."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError):
        return None
    for family in families:
        if family.name != "torchshelf_batch_size":
            continue
        apis = {s.labels.get("api") for s in family.samples}
        wanted = api if api in apis else None
        total = count = 0.0
        buckets: dict[float, float] = {}
        for sample in family.samples:
            if wanted is not None and sample.labels.get("api") != wanted:
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
        return _Histogram(total, count, buckets)
    return None


def _fetch_metrics(endpoint: Endpoint, headers: Sequence[tuple[str, str]]) -> _Histogram | None:
    import httpx

    try:
        response = httpx.get(
            endpoint.origin + "/metrics", headers=dict(headers), timeout=5.0, trust_env=False
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return parse_batch_size_histogram(response.text, endpoint.api)


def _batch_delta(
    before: _Histogram | None, after: _Histogram | None
) -> tuple[float | None, dict[str, int] | None]:
    if before is None or after is None:
        return None, None
    calls = after.count - before.count
    if calls <= 0:
        return None, None
    mean = (after.sum - before.sum) / calls
    distribution: dict[str, int] = {}
    previous = 0.0
    for le in sorted(after.buckets):
        cumulative = after.buckets[le] - before.buckets.get(le, 0.0)
        in_bucket = int(round(cumulative - previous))
        previous = cumulative
        if in_bucket:
            label = "+Inf" if math.isinf(le) else f"{le:g}"
            distribution[label] = in_bucket
    return mean, distribution


# --- the controller -------------------------------------------------------------------------------


def _probe(endpoint: Endpoint, body: RequestBody, headers: Sequence[tuple[str, str]]) -> None:
    """One request before any load, so a wrong URL or body fails with the server's own words."""
    import httpx

    try:
        response = httpx.post(
            endpoint.url,
            content=body.data,
            headers={"Content-Type": _content_type(body, headers), **dict(_other_headers(headers))},
            timeout=60.0,
            trust_env=False,  # never through a proxy from the environment: only the given address
        )
    except httpx.HTTPError as exc:
        raise ServerUnreachable(
            f"cannot reach {endpoint.url}: {exc}; is the server running (e.g. `shelf serve TAG`)?"
        ) from None
    if 400 <= response.status_code < 500:  # our request is wrong; 5xx is load to measure
        detail = response.text.strip().replace("\n", " ")[:300]
        hint = {
            401: "pass the token with --header 'Authorization: Bearer TOKEN'",
            403: "pass the token with --header 'Authorization: Bearer TOKEN'",
            404: "check the URL's path (GET /openapi.json lists the server's routes)",
        }.get(
            response.status_code, "check --input-shape/--dtype or --body against the model's input"
        )
        raise ServerUnreachable(
            f"{endpoint.url} answered {response.status_code} to the benchmark request "
            f"({detail}); {hint}"
        )


def client_was_bound(cpu_fractions: Sequence[float]) -> bool:
    """True when any load worker kept its core busier than `CLIENT_BOUND_CPU` (of 1.0).

    A closed-loop client that is never idle is waiting on itself, not on the server: the
    req/s it reports is then the client's ceiling, and more --procs (or cores) would raise it.
    """
    return max(cpu_fractions, default=0.0) > CLIENT_BOUND_CPU


def _send_stop(workers: Sequence[tuple[Any, Any]]) -> None:
    for _, pconn in workers:
        with contextlib.suppress(OSError):  # already gone
            pconn.send(("stop",))


def _drain_and_join(workers: Sequence[tuple[Any, Any]], deadline_s: float) -> None:
    """Read what workers still send (a window finished after the decision) until they exit.

    Draining matters: a worker blocked writing a large window to a full pipe would never exit.
    """
    deadline = time.monotonic() + deadline_s
    for proc, pconn in workers:
        while time.monotonic() < deadline:
            try:
                if pconn.poll(0.1):
                    pconn.recv()
                elif proc.poll() is not None:
                    break
            except (EOFError, OSError):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.terminate()
            proc.wait(5)
        pconn.close()


def _start_worker(job: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start `_worker.py` as a plain child process, talking over a socketpair."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, str(_WORKER), str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # stdout carries the report (JSON); workers never write there
    )
    theirs.close()
    conn = Connection(ours.detach())
    conn.send(job)
    return proc, conn


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


_Kept = tuple["array[int]", "array[int]", int, list[tuple[int, int]]]  # one window's raw data


def _run_level(
    endpoint: Endpoint,
    request: bytes,
    body: RequestBody,
    concurrency: int,
    settings: LoadSettings,
    progress: Progress | None,
) -> ServerResult:
    """Measure one concurrency level: windows until the last three agree, then summarise them."""
    workers = [
        _start_worker(
            {
                "scheme": endpoint.scheme,
                "host": endpoint.host,
                "port": endpoint.port,
                "request": request,
                "connections": share,
                "warmup_ns": int(settings.warmup_s * 1e9),
                "window_ns": int(settings.duration_s * 1e9),
                "max_windows": settings.max_windows,
                "timeout_ns": int(settings.timeout_s * 1e9),
            }
        )
        for share in _split(concurrency, settings.procs)
    ]
    label = f"concurrency {concurrency}"
    try:
        _await_ready(workers)
        start_ns = time.perf_counter_ns() + 50_000_000
        for _, pconn in workers:
            pconn.send(("go", start_ns))
        time.sleep(max(0.0, (start_ns + settings.warmup_s * 1e9 - time.perf_counter_ns()) / 1e9))
        before = _fetch_metrics(endpoint, settings.headers)
        windows: list[Window] = []
        kept: list[_Kept] = []
        stable = False
        for _ in range(settings.max_windows):
            window = _collect_window(workers, settings)
            lat, sts, wall, _ = window
            ok = [v for v, s in zip(lat, sts, strict=False) if 200 <= s < 300]
            rate = len(ok) / (wall / 1e9) if wall else 0.0
            windows.append(Window(rate, sorted(ok)[len(ok) // 2] / 1e6 if ok else math.nan))
            kept.append(window)
            stable = windows_agree(windows, settings.stability)
            if progress:
                progress(label, len(windows), settings.max_windows, stable)
            if stable:
                break
        _send_stop(workers)
        after = _fetch_metrics(endpoint, settings.headers)
        if progress and not stable:
            progress(label, len(windows), settings.max_windows, True)
    finally:
        _send_stop(workers)
        _drain_and_join(workers, deadline_s=settings.duration_s + 10)
    mean, distribution = _batch_delta(before, after)
    return _summarise(
        kept[-3:], len(workers), concurrency, body, mean, distribution, len(windows), stable
    )


def _await_ready(workers: list[tuple[subprocess.Popen[bytes], Connection]]) -> None:
    """Every load worker has connected to the server, or the first that could not says why."""
    for proc, pconn in workers:
        if not pconn.poll(60):
            raise ServerUnreachable(f"load worker {proc.pid} did not start within 60 s")
        try:
            message = pconn.recv()
        except EOFError:
            raise ShelfError(
                f"load worker {proc.pid} exited before starting (see its error above)"
            ) from None
        if message[0] == "error":
            raise ServerUnreachable(message[1] + "; is the server running?")


def _collect_window(
    workers: list[tuple[subprocess.Popen[bytes], Connection]], settings: LoadSettings
) -> _Kept:
    """One measurement window from every worker: latencies, statuses, wall time, CPU."""
    lat: array[int] = array("q")
    sts: array[int] = array("h")
    cpu: list[tuple[int, int]] = []
    wall = 0
    for proc, pconn in workers:
        try:
            if not pconn.poll(settings.duration_s * 4 + 30):
                raise EOFError
            _, _, lat_bytes, st_bytes, cpu_ns, wall_ns = pconn.recv()
        except EOFError:
            raise ShelfError(f"load worker {proc.pid} stopped reporting") from None
        lat.frombytes(lat_bytes)
        sts.frombytes(st_bytes)
        cpu.append((cpu_ns, wall_ns))
        wall = max(wall, wall_ns)
    return lat, sts, wall, cpu


def _summarise(
    tail: list[_Kept],
    n_workers: int,
    concurrency: int,
    body: RequestBody,
    mean: float | None,
    distribution: dict[str, int] | None,
    windows: int,
    stable: bool,
) -> ServerResult:
    """Statistics over the last three windows: the ones the stability rule judged."""
    ok_latencies: list[int] = []
    errors: Counter[str] = Counter()
    for lat, sts, _, _ in tail:
        for value, status in zip(lat, sts, strict=False):
            if 200 <= status < 300:
                ok_latencies.append(value)
            else:
                errors[_ERROR_NAMES.get(status, str(status))] += 1
    wall_s = sum(w for _, _, w, _ in tail) / 1e9
    cpu_s = sum(c for _, _, _, cpu in tail for c, _ in cpu) / 1e9
    per_worker = [
        sum(cpu[i][0] for *_, cpu in tail) / max(1, sum(cpu[i][1] for *_, cpu in tail))
        for i in range(n_workers)
    ]
    requests = len(ok_latencies) + sum(errors.values())
    return ServerResult(
        concurrency=concurrency,
        requests=requests,
        requests_per_s=len(ok_latencies) / wall_s if wall_s else 0.0,
        items_per_request=body.items,
        latency=LatencyStats.from_ns(ok_latencies),
        errors=dict(sorted(errors.items())),
        batch_size_mean=mean,
        batch_size_distribution=distribution,
        client_cpu_percent=100.0 * cpu_s / wall_s if wall_s else 0.0,
        client_cpu_us_per_request=cpu_s / requests * 1e6 if requests else None,
        client_bound=client_was_bound(per_worker),
        windows=windows,
        stable=stable,
    )


def bench_server(
    url: str,
    body: RequestBody,
    settings: LoadSettings,
    *,
    progress: Progress | None = None,
) -> BenchReport:
    """Drive `url` at each concurrency level and report req/s, latency, errors, batch sizes.

    Example:
        >>> body = body_from_shape((64,))
        >>> report = bench_server("http://127.0.0.1:3000/predict", body,
        ...                       LoadSettings(concurrency=(1, 8), duration_s=1))
    """
    endpoint = Endpoint.parse(url)
    _probe(endpoint, body, settings.headers)
    request = _encode_request(endpoint, body, settings.headers)
    results: list[ServerResult] = []
    warnings: list[str] = busy_machine_warnings()
    for level in settings.concurrency:
        result = _run_level(endpoint, request, body, level, settings, progress)
        results.append(result)
        if result.client_bound:
            warnings.append(
                f"concurrency {level}: the load generator used {result.client_cpu_percent:.0f}% "
                f"of a core across {min(settings.procs, level)} process(es), so it may be what "
                "limits req/s; retry with more --procs (on a machine with cores to spare)"
            )
        if not result.stable:
            warnings.append(
                f"concurrency {level}: the last 3 of {result.windows} windows never agreed within "
                f"{settings.stability:.0%}; numbers are noisy"
            )
        if result.errors:
            warnings.append(f"concurrency {level}: errors by status {result.errors}")
    try:
        from importlib.metadata import version

        torch_version: str | None = version("torch")
    except Exception:  # torch not installed next to the client: fine in server mode
        torch_version = None
    schema = _fetch_schema(endpoint, settings.headers) or {}
    return BenchReport(
        mode="server",
        target=endpoint.url,
        device=str(schema.get("device") or "unknown (server)"),
        torch=torch_version,
        settings={
            **settings.to_dict(),
            "body": body.source,
            "body_bytes": len(body.data),
            "content_type": _content_type(body, settings.headers),
            "items_per_request": body.items,
        },
        results=list(results),
        warnings=warnings,
    )
