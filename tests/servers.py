"""A real `shelf serve` child process on a free 127.0.0.1 port, for the serving tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`shelf serve ARGS...`; `url` is ready once /readyz answers 200 (or at once if `wait`
    is False). Its output is piped (`proc.stdout`/`proc.stderr`), or with `log=` written to
    that file, for a server that logs more than a pipe holds while nobody reads it."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        log: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"  # what tritonclient takes
        self.url = f"http://{self.host}"
        self.log_path = log
        self._log = log.open("w") if log is not None else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchshelf", "serve", *args, "--port", str(self.port)],
            env={**os.environ, **(env or {})},
            stdout=self._log or subprocess.PIPE,
            stderr=subprocess.STDOUT if self._log else subprocess.PIPE,
            text=True,
        )
        if wait:
            self.wait_ready()

    def output(self) -> str:
        """What the server wrote (stderr when piped; the whole log with `log=`)."""
        if self.log_path is not None:
            return self.log_path.read_text()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    text = httpx.get(url + "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
