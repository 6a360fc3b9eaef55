"""Stalled clients (issue 15): the header-read deadline and `--max-connections`.

A real `shelf serve` process on 127.0.0.1; slow-loris clients are plain sockets that send one
header byte at a time and never finish. p99 figures for normal clients beside 500 of them come
from benchmarks/stalled_clients.py; here the properties: normal clients get right answers, the
stalled connections are answered 408 and closed once the deadline passes, and one connection
past `--max-connections` gets a JSON 503.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from conftest import child_env

FEATURES = 8
HEADER_TIMEOUT_S = 2.0
STALLED = 500
MARGIN_S = 15.0  # scheduling slack on a loaded 2-core box; the deadline itself is 2 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torchshelf

    root = tmp_path_factory.mktemp("store")
    torch.manual_seed(15)
    model = torch.nn.Linear(FEATURES, 3)
    torchshelf.save_model("lin", model, store=root)
    return root


class Serve:
    def __init__(self, store: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "torchshelf", "serve", "lin:latest", "--threads", "1"]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port), *args],
            env=child_env(store),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[Serve]:
    serve = Serve(store, "--header-timeout", str(HEADER_TIMEOUT_S))
    yield serve
    serve.stop()


class SlowLoris:
    """`count` connections that send request headers one byte every `every` s, never ending."""

    def __init__(self, port: int, count: int, every: float = 0.25) -> None:
        self.sel = selectors.DefaultSelector()
        self.opened = time.monotonic()
        self.closed_at: dict[int, float] = {}
        self.replies: dict[int, bytes] = {}
        self.socks = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
            self.socks.append(s)
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.closed_at) < len(self.socks):
            for key, _ in self.sel.select(timeout=self.every):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except ConnectionError:
                    data = b""
                if data:
                    self.replies[s.fileno()] = self.replies.get(s.fileno(), b"") + data
                    continue
                self.closed_at[s.fileno()] = time.monotonic() - self.opened
                self.sel.unregister(s)
            for s in self.socks:
                if s.fileno() not in self.closed_at:
                    with contextlib.suppress(OSError):
                        s.send(b"X")  # one more header byte: "X-..." never completes

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.socks:
            s.close()


def test_500_stalled_header_senders_are_closed_at_the_deadline_and_others_are_served(
    server: Serve,
) -> None:
    loris = SlowLoris(server.port, STALLED)
    try:
        rows = [[float(i + j) for j in range(FEATURES)] for i in range(4)]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = [client.post("/predict", json={"inputs": rows}) for _ in range(100)]
        assert all(r.status_code == 200 for r in answers)
        first = answers[0].json()["outputs"]
        assert all(r.json()["outputs"] == first for r in answers)
        loris.thread.join(HEADER_TIMEOUT_S + MARGIN_S)
        assert len(loris.closed_at) == STALLED, f"{STALLED - len(loris.closed_at)} still open"
        assert min(loris.closed_at.values()) >= HEADER_TIMEOUT_S * 0.9  # not before the deadline
        timed_out = [r for r in loris.replies.values() if r.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) == STALLED
        body = timed_out[0].split(b"\r\n\r\n", 1)[1]
        assert "request headers not complete" in json.loads(body)["error"]
        assert server.proc.poll() is None
    finally:
        loris.close()


def test_a_slow_second_request_on_a_kept_alive_connection_is_timed_out_too(
    server: Serve,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        body = json.dumps({"inputs": [[1.0] * FEATURES]}).encode()
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        first = s.recv(65536)
        while b"\r\n\r\n" not in first:
            first += s.recv(65536)
        head, _, rest = first.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:  # the whole first response, so what follows is the second's
            rest += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        s.sendall(b"POST /predict HTTP/1.1\r\nHo")  # and nothing more
        started = time.monotonic()
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9


def test_one_connection_past_max_connections_gets_a_json_503(store: Path) -> None:
    serve = Serve(store, "--max-connections", "8", "--header-timeout", "60")
    idle = [socket.create_connection(("127.0.0.1", serve.port)) for _ in range(8)]
    try:
        time.sleep(0.5)  # let the server accept all eight
        with httpx.Client(base_url=serve.url, timeout=30) as client:
            busy = client.post("/predict", json={"inputs": [[1.0] * FEATURES]})
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"
            assert "--max-connections 8" in busy.json()["error"]
        for s in idle:
            s.close()
        time.sleep(0.5)
        with httpx.Client(base_url=serve.url, timeout=30) as client:
            assert client.post("/predict", json={"inputs": [[1.0] * FEATURES]}).status_code == 200
    finally:
        for s in idle:
            s.close()
        serve.stop()


def test_serve_help_lists_the_connection_flags() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torchshelf", "serve", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert "--header-timeout" in proc.stdout and "--max-connections" in proc.stdout
