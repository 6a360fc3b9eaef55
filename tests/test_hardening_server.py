"""Hardening `shelf serve` (issue 6, server half): fuzzing, overload, shutdown and access.

Every test drives a real `shelf serve` child process on a free 127.0.0.1 port with real sockets.
Loops are bounded by count and by time, so the file runs in about a minute on two shared cores.

NaN, the choice made: JSON has no NaN or infinity, so a `NaN`/`Infinity` literal is malformed JSON
(400) and a number past float32's range is refused (422). A safetensors body is raw float32 bits:
NaN there is a valid float32 value, so the model runs on it and the answer is 200 (the output
holds NaN, or null in a JSON response). The fuzz sends both and expects exactly that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from safetensors.torch import save as st_save

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = 8
BODY_LIMIT = 1024 * 1024  # --max-body-mb 1
BODY_TIMEOUT_S = 3.0  # --timeout 3: a body must arrive within this


# -- a server process ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `shelf serve` child process; ready once /readyz answers 200 on 127.0.0.1."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, host: str | None = None
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = ["--host", host] if host else []
        # stderr goes to a file, not a pipe nobody reads: a full pipe would block the server.
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchshelf", "serve", *args, *extra, "--port", str(self.port)],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("server did not become ready")

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read()

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the server process in KiB, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def alive(self) -> bool:
        return (
            self.proc.poll() is None
            and httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, torch.nn.Module]]:
    """A store holding an MLP whose signature declares its input: shape [-1, 8], float32."""
    root = tmp_path_factory.mktemp("store")
    old = os.environ.get("TORCHSHELF_HOME")
    os.environ["TORCHSHELF_HOME"] = str(root)
    try:
        import torchshelf

        torch.manual_seed(6)
        model = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)
        )
        spec = {"shape": [-1, FEATURES], "dtype": "float32"}
        tag = torchshelf.save_model(
            "fuzzed",
            model,
            signatures={"__call__": {"batchable": True, "batch_dim": 0, "input_spec": spec}},
        )
    finally:
        if old is None:
            os.environ.pop("TORCHSHELF_HOME", None)
        else:
            os.environ["TORCHSHELF_HOME"] = old
    yield str(root), str(tag), model.eval()


@pytest.fixture(scope="module")
def fuzz_server(store: tuple[str, str, torch.nn.Module]) -> Iterator[Server]:
    root, tag, _ = store
    server = Server(
        tag,
        "--max-body-mb", "1",
        "--timeout", str(BODY_TIMEOUT_S),
        "--threads", "1",
        env={"TORCHSHELF_HOME": root},
    )  # fmt: skip
    yield server
    server.kill()


def _expected(model: torch.nn.Module, rows: list[list[float]]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(rows, dtype=torch.float32))


# -- malformed requests, generated with hypothesis ---------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """One bad request: how it is sent, and the statuses it may get (all 4xx, or 200 for NaN)."""

    kind: str
    body: bytes
    content_type: str = "application/json"
    statuses: frozenset[int] = frozenset({400, 422})
    headers: tuple[tuple[str, str], ...] = field(default=())
    raw: str = ""  # "" = an ordinary request; "stall" / "close" = slow-loris over a raw socket


def _j(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
good_row = st.lists(finite, min_size=FEATURES, max_size=FEATURES)
good_inputs = st.lists(good_row, min_size=1, max_size=4)
not_a_number = st.one_of(
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), finite, max_size=2),
)


@st.composite
def broken_json(draw: st.DrawFn) -> Malformed:
    text = _j({"inputs": draw(good_inputs)})
    how = draw(st.sampled_from(["truncate", "garbage", "flip", "empty"]))
    if how == "truncate":
        body = text[: draw(st.integers(1, len(text) - 1))]
    elif how == "garbage":
        body = draw(
            st.binary(min_size=1, max_size=200).filter(lambda b: not b.strip().startswith(b"{"))
        )
    elif how == "flip":
        at = draw(st.integers(0, len(text) - 1))
        body = (
            text[:at]
            + draw(st.sampled_from([b"}", b"]", b",", b":", b"\x00", b"'"]))
            + text[at + 1 :]
        )
    else:
        body = b""
    try:  # a mutation can happen to still be valid JSON: then it is a wrong-type body instead
        json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Malformed("broken json", body, statuses=frozenset({400}))
    return Malformed("broken json", body)


@st.composite
def wrong_type(draw: st.DrawFn) -> Malformed:
    how = draw(st.sampled_from(["top", "field", "missing", "cell"]))
    if how == "top":  # the body is JSON but not an object
        body: Any = draw(st.one_of(good_inputs, st.text(max_size=10), st.integers(), st.none()))
    elif how == "field":
        body = {"inputs": draw(not_a_number)}
    elif how == "missing":
        body = {draw(st.text(max_size=8).filter(lambda k: k != "inputs")): draw(good_inputs)}
    else:  # one cell of a good tensor replaced by a non-number
        rows = draw(good_inputs)
        rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, FEATURES - 1))] = draw(
            not_a_number
        )
        body = {"inputs": rows}
    return Malformed("wrong type", _j(body))


@st.composite
def wrong_shape(draw: st.DrawFn) -> Malformed:
    how = draw(st.sampled_from(["width", "ragged", "rank", "empty"]))
    if how == "width":
        width = draw(st.integers(0, 20).filter(lambda w: w != FEATURES))
        rows: Any = draw(
            st.lists(st.lists(finite, min_size=width, max_size=width), min_size=1, max_size=3)
        )
    elif how == "ragged":
        rows = draw(good_inputs) + [draw(st.lists(finite, min_size=1, max_size=FEATURES - 1))]
    elif how == "rank":
        rows = draw(st.one_of(finite, good_row, st.lists(good_inputs, min_size=1, max_size=2)))
    else:
        rows = draw(st.sampled_from([[], [[]], [[[]]]]))
    return Malformed("wrong shape", _j({"inputs": rows}))


@st.composite
def wrong_dtype(draw: st.DrawFn) -> Malformed:
    n = draw(st.integers(1, 3))
    how = draw(st.sampled_from(["safetensors", "bools", "strings"]))
    if how == "safetensors":
        dtype = draw(
            st.sampled_from([torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8])
        )
        body = st_save({"inputs": torch.zeros(n, FEATURES, dtype=dtype)})
        return Malformed("wrong dtype", body, "application/vnd.safetensors", frozenset({422}))
    if how == "bools":
        return Malformed("wrong dtype", _j({"inputs": [[draw(st.booleans())] * FEATURES] * n}))
    cell = draw(st.from_regex(r"-?[0-9]{1,3}(\.[0-9]{1,2})?", fullmatch=True))
    return Malformed("wrong dtype", _j({"inputs": [[cell] * FEATURES] * n}))


@st.composite
def non_finite(draw: st.DrawFn) -> Malformed:
    rows = draw(good_inputs)
    how = draw(st.sampled_from(["literal", "huge", "bigint", "safetensors"]))
    r, c = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, FEATURES - 1))
    if how == "literal":  # NaN / Infinity are not JSON
        rows[r][c] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        return Malformed("nan", _j({"inputs": rows}), statuses=frozenset({400}))
    if how == "huge":  # finite in JSON, past float32's range
        rows[r][c] = draw(st.sampled_from([1e39, -1e300, 3.5e38, 1.7976931348623157e308]))
        return Malformed("huge number", _j({"inputs": rows}), statuses=frozenset({422}))
    if how == "bigint":
        rows[r][c] = draw(st.sampled_from([10**39, -(10**45), 10**400]))  # past float32
        return Malformed("huge number", _j({"inputs": rows}), statuses=frozenset({400, 422}))
    t = torch.tensor(rows)
    t[r, c] = draw(st.sampled_from([float("nan"), float("inf")]))
    # Valid float32 bits: the documented choice is to run the model (see the module docstring).
    body = st_save({"inputs": t})
    return Malformed("nan", body, "application/vnd.safetensors", frozenset({200}))


@st.composite
def deeply_nested(draw: st.DrawFn) -> Malformed:
    depth = draw(st.integers(3, 5000))
    inner = draw(st.sampled_from(["0.5", "", '"x"']))
    body = b'{"inputs": ' + b"[" * depth + inner.encode() + b"]" * depth + b"}"
    return Malformed("deeply nested", body)


@st.composite
def giant_body(draw: st.DrawFn) -> Malformed:
    size = draw(st.integers(BODY_LIMIT + 1, BODY_LIMIT + 64 * 1024))
    how = draw(st.sampled_from(["json", "declared", "chunked"]))
    if how == "declared":  # a Content-Length past the limit is refused before reading the body
        headers = (("Content-Length", str(draw(st.integers(BODY_LIMIT + 1, 2**62)))),)
        return Malformed(
            "giant body", b"", statuses=frozenset({413}), headers=headers, raw="declared"
        )
    body = b'{"inputs": [' + b"0.0," * (size // 4) + b"0.0]}"
    return Malformed(
        "giant body", body, statuses=frozenset({413}), raw="chunked" if how == "chunked" else ""
    )


@st.composite
def wrong_content_type(draw: st.DrawFn) -> Malformed:
    ctype, body = draw(
        st.sampled_from(
            [
                ("application/vnd.safetensors", _j({"inputs": [[0.0] * FEATURES]})),
                ("application/x-www-form-urlencoded", b"inputs=0.1&inputs=0.2"),
                ("text/xml", b"<inputs><row>0.1</row></inputs>"),
                ("image/png", b"\x89PNG\r\n\x1a\n not really"),
                ("multipart/form-data; boundary=x", b"--x\r\n\r\n0.1\r\n--x--"),
                ("application/octet-stream", bytes(range(256))),
            ]
        )
    )
    return Malformed("wrong content type", body, ctype, frozenset({400, 415, 422}))


@st.composite
def slow_loris(draw: st.DrawFn) -> Malformed:
    body = _j({"inputs": draw(good_inputs)})
    cut = draw(st.integers(0, len(body) - 1))
    raw = draw(st.sampled_from(["stall", "close"]))
    # "stall" must be answered 408 once the body timeout passes; "close" has nobody to answer.
    return Malformed(
        "slow loris",
        body[:cut],
        statuses=frozenset({408}),
        headers=(("Content-Length", str(len(body))),),
        raw=raw,
    )


MALFORMED_KINDS: list[st.SearchStrategy[Malformed]] = [
    broken_json(), wrong_type(), wrong_shape(), wrong_dtype(), non_finite(), deeply_nested(),
    giant_body(), wrong_content_type(), slow_loris(),
]  # fmt: skip


def _draw(strategy: st.SearchStrategy[Malformed], count: int, seed: int) -> list[Malformed]:
    """`count` examples of `strategy`, drawn by hypothesis's engine (a `@given` with
    max_examples, so generation is bounded); small spaces that run out are cycled."""
    drawn: list[Malformed] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(request: Malformed) -> None:
        drawn.append(request)

    collect()
    return [drawn[i % len(drawn)] for i in range(count)]


def generate_malformed(count: int, seed: int = 6) -> list[Malformed]:
    """`count` malformed requests, the same share of each kind, in a shuffled order."""
    n = len(MALFORMED_KINDS)
    out: list[Malformed] = []
    for i, strategy in enumerate(MALFORMED_KINDS):
        out += _draw(strategy, count // n + (1 if i < count % n else 0), seed + i)
    random.Random(seed).shuffle(out)
    return out


# -- sending them -------------------------------------------------------------------------------


def _raw_request(port: int, m: Malformed, timeout: float) -> tuple[int | None, bytes]:
    """Send `m` over a raw socket; returns (status, body), status None when nothing came back."""
    head = [
        "POST /predict HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Type: {m.content_type}",
        "Connection: close",
    ]
    body = m.body
    if m.raw == "chunked":
        head.append("Transfer-Encoding: chunked")
        step = 64 * 1024
        body = (
            b"".join(
                f"{len(body[i : i + step]):x}\r\n".encode() + body[i : i + step] + b"\r\n"
                for i in range(0, len(body), step)
            )
            + b"0\r\n\r\n"
        )
    else:
        head += [f"{k}: {v}" for k, v in m.headers]
        if not any(k.lower() == "content-length" for k, _ in m.headers):
            head.append(f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # the server may answer 413 and close before taking the rest
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        if m.raw == "close":
            return None, b""
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    if not head_bytes:
        return None, b""
    return int(head_bytes.split()[1]), payload


def _send_malformed(client: httpx.Client, port: int, m: Malformed) -> tuple[int | None, bytes]:
    if m.raw:
        return _raw_request(port, m, timeout=BODY_TIMEOUT_S + 10)
    headers = {"Content-Type": m.content_type, **dict(m.headers)}
    r = client.post("/predict", content=m.body, headers=headers)
    return r.status_code, r.content


def _is_json_error(payload: bytes) -> bool:
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), str) and bool(doc["error"])


@dataclass
class FuzzTally:
    sent: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    valid_ok: int = 0
    valid_wrong: list[str] = field(default_factory=list)
    peak_rss_kib: int = 0


@pytest.mark.slow
@needs_proc
def test_1000_malformed_requests_get_json_4xx_while_16_clients_get_correct_answers(
    fuzz_server: Server, store: tuple[str, str, torch.nn.Module], record_property: Any
) -> None:
    model = store[2]
    requests = generate_malformed(1000)
    tally = FuzzTally()
    lock = threading.Lock()
    done = threading.Event()
    rss_before, _ = fuzz_server.memory_kib()

    def valid_client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=fuzz_server.url, timeout=30) as client:
            end = time.monotonic() + 120  # bounded even if the fuzz hangs
            while not done.is_set() and time.monotonic() < end:
                rows = [
                    [rng.uniform(-10, 10) for _ in range(FEATURES)]
                    for _ in range(rng.randint(1, 4))
                ]
                r = client.post("/predict", json={"inputs": rows})
                got = torch.tensor(r.json()["outputs"]) if r.status_code == 200 else None
                with lock:
                    if got is not None and torch.allclose(got, _expected(model, rows), atol=1e-4):
                        tally.valid_ok += 1
                    else:
                        tally.valid_wrong.append(f"{r.status_code}: {r.text[:200]}")

    def fuzz_client(share: list[Malformed]) -> None:
        with httpx.Client(base_url=fuzz_server.url, timeout=BODY_TIMEOUT_S + 10) as client:
            for m in share:
                try:
                    status, payload = _send_malformed(client, fuzz_server.port, m)
                except httpx.TransportError as exc:
                    status, payload = None, repr(exc).encode()
                with lock:
                    tally.sent += 1
                    tally.by_kind[m.kind] = tally.by_kind.get(m.kind, 0) + 1
                    if m.raw == "close":
                        continue
                    ok = status in m.statuses and (status == 200 or _is_json_error(payload))
                    if not ok:
                        tally.wrong.append(
                            f"{m.kind} {m.body[:80]!r} -> {status} {payload[:200]!r}"
                        )

    def watch_memory() -> None:
        while not done.is_set():
            _, hwm = fuzz_server.memory_kib()
            tally.peak_rss_kib = max(tally.peak_rss_kib, hwm)
            time.sleep(0.2)

    # Slow-loris requests each hold a socket for the body timeout: send them all at once, on
    # their own threads, while the rest go through 6 fuzzing clients.
    loris = [m for m in requests if m.kind == "slow loris"]
    rest = [m for m in requests if m.kind != "slow loris"]
    shares = [rest[i::6] for i in range(6)] + [[m] for m in loris]
    started = time.monotonic()
    with ThreadPoolExecutor(16 + len(shares) + 1) as pool:
        valid = [pool.submit(valid_client, i) for i in range(16)]
        watcher = pool.submit(watch_memory)
        for f in [pool.submit(fuzz_client, share) for share in shares]:
            f.result(timeout=180)
        done.set()
        for f in [*valid, watcher]:
            f.result(timeout=60)
    elapsed = time.monotonic() - started

    rss_after, hwm = fuzz_server.memory_kib()
    tally.peak_rss_kib = max(tally.peak_rss_kib, hwm)
    crashes = 0 if fuzz_server.alive() else 1
    figures = {
        "malformed_sent": tally.sent,
        "by_kind": tally.by_kind,
        "crashes": crashes,
        "valid_answered_correctly": tally.valid_ok,
        "peak_rss_mib": round(tally.peak_rss_kib / 1024, 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        "seconds": round(elapsed, 1),
    }
    record_property("fuzz", json.dumps(figures))
    print("\nserver fuzz:", json.dumps(figures), file=sys.stderr)
    assert tally.sent == 1000 and crashes == 0
    assert len(tally.by_kind) >= len(MALFORMED_KINDS), tally.by_kind
    assert not tally.wrong, f"{len(tally.wrong)} malformed requests mis-answered:\n" + "\n".join(
        tally.wrong[:20]
    )
    assert not tally.valid_wrong, tally.valid_wrong[:10]
    assert tally.valid_ok >= 16
    # Bounded: the fuzz (1000 requests, giant bodies included) grows the server by far less
    # than it sent; the limit is generous because allocator arenas keep some freed memory.
    assert tally.peak_rss_kib - rss_before < 300 * 1024, figures
    assert "Traceback" not in fuzz_server.stderr(), fuzz_server.stderr()[-3000:]


def test_a_partial_body_that_stalls_is_answered_408_and_the_server_keeps_serving(
    fuzz_server: Server,
) -> None:
    stalled = Malformed(
        "slow loris", b'{"inputs": [[0.1', headers=(("Content-Length", "400"),), raw="stall"
    )
    started = time.monotonic()
    status, payload = _raw_request(fuzz_server.port, stalled, timeout=BODY_TIMEOUT_S + 10)
    assert status == 408 and "did not arrive" in json.loads(payload)["error"]
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5
    closed = Malformed(
        "slow loris", b'{"inputs": [[0.1', headers=(("Content-Length", "400"),), raw="close"
    )
    _raw_request(fuzz_server.port, closed, timeout=5)
    r = httpx.post(fuzz_server.url + "/predict", json={"inputs": [[0.0] * FEATURES]})
    assert r.status_code == 200, r.text


# -- schemathesis -------------------------------------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors_or_schema_violations(
    fuzz_server: Server, tmp_path: Path
) -> None:
    pytest.importorskip("schemathesis")
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which(
        "schemathesis"
    )
    if cli is None:
        pytest.skip("the schemathesis command is not installed")
    cmd = [
        cli, "--no-color", "run", fuzz_server.url + "/openapi.json",
        "--checks", "all",  # incl. positive_data_acceptance: schema-valid bodies must get 2xx
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "25",
        "--max-time", "15",  # fuzzing repeats until the budget is spent: this bounds the test
        "--workers", "2",
        "--request-timeout", "10",
        "--generation-deterministic",
        "--suppress-health-check", "all",
        # V2 bodies tie `data` to `shape` (no JSON schema can say so) and its repository routes
        # unload models; test_serve_v2*.py covers them
        "--exclude-path-regex", "^/v2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    generated = re.search(r"(\d+) generated", proc.stdout)
    assert generated and int(generated.group(1)) >= 100, proc.stdout[-3000:]
    print(f"\nschemathesis: {generated.group(1)} generated, no failures", file=sys.stderr)
    assert fuzz_server.alive()


# -- overload and shutdown ----------------------------------------------------------------------

SLOW_SOURCE = """
import time
import torchshelf.serving as ts


@ts.service
class Slow:
    @ts.api
    def wait(self, seconds: float, pad: str = "") -> dict:
        time.sleep(seconds)
        return {"slept": seconds, "pad": len(pad)}
"""


def _slow_server(tmp_path: Path, *args: str) -> Server:
    path = tmp_path / "slow.py"
    path.write_text(SLOW_SOURCE)
    return Server(f"{path}:Slow", *args)


_SSL = ssl.create_default_context()  # one for every client: building one costs ~30 ms


async def _flood(
    url: str,
    count: int,
    body: dict[str, Any],
    stagger_s: float = 0.0,
    finished: list[Any] | None = None,
) -> list[Any]:
    """`count` requests at once, one connection each; a response or the exception it raised.
    Each outcome is also appended to `finished` as it arrives, for a watching thread."""

    async def one(i: int) -> Any:
        await asyncio.sleep(i * stagger_s)
        async with httpx.AsyncClient(timeout=60, verify=_SSL) as c:
            try:
                outcome: Any = await c.post(url, json=body)
            except httpx.TransportError as exc:
                outcome = exc
        if finished is not None:
            finished.append(outcome)
        return outcome

    return await asyncio.gather(*(one(i) for i in range(count)))


@pytest.mark.slow
@needs_proc
def test_load_past_the_queue_bound_gets_503_with_retry_after_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    server = _slow_server(tmp_path, "--max-queue", "4")
    try:
        rss_before, _ = server.memory_kib()
        pad = "x" * 50_000  # each request carries 50 kB, so a queue that grew would show in RSS
        peak = 0
        codes: list[int] = []
        for _ in range(3):
            responses = asyncio.run(
                _flood(server.url + "/wait", 150, {"seconds": 0.05, "pad": pad})
            )
            assert all(isinstance(r, httpx.Response) for r in responses), responses
            codes += [r.status_code for r in responses]
            for r in responses:
                if r.status_code == 503:
                    assert int(r.headers["retry-after"]) >= 1
                    assert set(r.json()) == {"error"}
            peak = max(peak, server.memory_kib()[1])
        assert set(codes) <= {200, 503}
        assert codes.count(200) >= 4 and codes.count(503) >= 150, (
            codes.count(200),
            codes.count(503),
        )
        print(
            f"\noverload: {codes.count(200)} answered 200, {codes.count(503)} refused 503; "
            f"RSS {rss_before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB",
            file=sys.stderr,
        )
        assert peak - rss_before < 150 * 1024, (rss_before, peak)
        assert server.alive()
        assert "Traceback" not in server.stderr()
    finally:
        server.kill()


def _refused_cleanly(exc: Exception) -> bool:
    if isinstance(exc, (httpx.ConnectError, httpx.ReadError)):
        return True  # refused, or reset before any byte of an answer
    return isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc)


@pytest.mark.slow
def test_sigterm_under_load_answers_every_accepted_request_then_exits_0(tmp_path: Path) -> None:
    server = _slow_server(tmp_path, "--max-queue", "64")
    finished: list[Any] = []
    outcomes: list[Any] = []
    body = {"seconds": 0.05}

    def load() -> None:
        outcomes.extend(asyncio.run(_flood(server.url + "/wait", 60, body, 0.01, finished)))

    caller = threading.Thread(target=load)
    caller.start()
    deadline = time.monotonic() + 20
    while len(finished) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)  # some answered, more queued behind them, the rest not yet sent
    server.proc.send_signal(signal.SIGTERM)
    caller.join(60)
    assert not caller.is_alive(), "a request hung"
    assert server.proc.wait(30) == 0
    answered = [o for o in outcomes if isinstance(o, httpx.Response)]
    refused = [o for o in outcomes if not isinstance(o, httpx.Response)]
    assert len(outcomes) == 60
    for r in answered:
        # the whole answer, or a clean 503 (draining): never a truncated body
        assert r.status_code in (200, 503), r.status_code
        if r.status_code == 200:
            assert r.json() == {"slept": 0.05, "pad": 0}
        else:
            assert "error" in r.json() and r.headers.get("retry-after")
    # After shutdown began, new connections are refused (or, caught in the listen backlog or
    # before their request was read, closed with no answer at all): none gets half an answer.
    assert all(_refused_cleanly(e) for e in refused), refused
    ok = sum(r.status_code == 200 for r in answered)
    assert ok > 5, f"requests queued when SIGTERM came should have been answered ({ok} were)"
    print(
        f"\nSIGTERM under load: {ok} answered 200, {len(answered) - ok} 503, {len(refused)} refused",
        file=sys.stderr,
    )


@pytest.mark.slow
def test_a_second_sigterm_exits_at_once_without_waiting_for_the_drain(tmp_path: Path) -> None:
    server = _slow_server(tmp_path)
    caller = threading.Thread(
        target=lambda: asyncio.run(_flood(server.url + "/wait", 1, {"seconds": 20})), daemon=True
    )
    caller.start()
    time.sleep(0.5)  # the 20 s call is running
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.proc.poll() is None, "the first SIGTERM should wait for the running call"
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(10)
    assert time.monotonic() - started < 3
    assert code == 128 + signal.SIGTERM
    assert "SIGTERM again" in server.stderr()


# -- access -------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["flag", "env"])
def test_an_api_token_is_required_on_api_routes_but_not_on_health(
    store: tuple[str, str, torch.nn.Module], via: str
) -> None:
    root, tag, model = store
    env = {"TORCHSHELF_HOME": root}
    args: list[str] = [tag]
    if via == "flag":
        args += ["--api-token", TOKEN]
    else:
        env["TORCHSHELF_API_TOKEN"] = TOKEN
    server = Server(*args, env=env)
    try:
        url, body = server.url + "/predict", {"inputs": [[0.25] * FEATURES]}
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            r = httpx.post(url, json=body, headers=headers)
            assert r.status_code == 401, (headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]
        r = httpx.post(url, json=body, headers=AUTH)
        assert r.status_code == 200
        assert torch.allclose(
            torch.tensor(r.json()["outputs"]), _expected(model, body["inputs"]), atol=1e-5
        )
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(server.url + path).status_code == 200, path
    finally:
        server.kill()


def test_metrics_auth_puts_metrics_behind_the_token_too(
    store: tuple[str, str, torch.nn.Module],
) -> None:
    root, tag, _ = store
    server = Server(tag, "--api-token", TOKEN, "--metrics-auth", env={"TORCHSHELF_HOME": root})
    try:
        assert httpx.get(server.url + "/metrics").status_code == 401
        assert (
            httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer no"}).status_code
            == 401
        )
        assert httpx.get(server.url + "/metrics", headers=AUTH).status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.kill()


def test_binding_all_interfaces_without_a_token_prints_a_warning(
    store: tuple[str, str, torch.nn.Module],
) -> None:
    root, tag, _ = store
    server = Server(tag, host="0.0.0.0", env={"TORCHSHELF_HOME": root})  # only 127.0.0.1 is called
    server.kill()
    err = server.stderr()
    assert "warning:" in err and "0.0.0.0 without an API token" in err and "--api-token" in err


def test_binding_all_interfaces_with_a_token_prints_no_warning(
    store: tuple[str, str, torch.nn.Module],
) -> None:
    root, tag, _ = store
    server = Server(
        tag, host="0.0.0.0", env={"TORCHSHELF_HOME": root, "TORCHSHELF_API_TOKEN": TOKEN}
    )
    server.kill()
    assert "without an API token" not in server.stderr()


@needs_proc
def test_the_default_bind_is_loopback_only(store: tuple[str, str, torch.nn.Module]) -> None:
    root, tag, _ = store
    server = Server(tag, env={"TORCHSHELF_HOME": root})
    try:
        listening = [
            c
            for c in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if c.split()[1].endswith(f":{server.port:04X}") and c.split()[3] == "0A"
        ]
        assert listening and all(c.split()[1].startswith("0100007F:") for c in listening), listening
    finally:
        server.kill()
