"""Every example under examples/ runs end to end, as a user would run it.

Scripts run in a subprocess against a store in tmp_path (TORCHSHELF_HOME). Services are started
with the real `shelf serve FILE:Class --port FREE`, called over HTTP on 127.0.0.1 once /readyz
answers, and stopped with SIGTERM, which must drain and exit 0.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent  # where `shelf` of this interpreter lives


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHSHELF_")}
    env["TORCHSHELF_HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # Two shared cores in CI: keep torch from oversubscribing them in every child process.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_example(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python examples/<args>` (or a shell script) and fail with its output if it fails."""
    first = str(EXAMPLES / args[0])
    cmd = ["bash", first, *args[1:]] if first.endswith(".sh") else [sys.executable, first, *args[1:]]
    proc = subprocess.run(cmd, env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running `shelf serve` and an httpx client pointed at it."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60)

    def post(self, api: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.http.post(f"/{api}", **kwargs)


@contextmanager
def serve(home: Path, target: str, *extra: str, ready_timeout: float = 90) -> Iterator[Server]:
    """Start `shelf serve TARGET`, wait for /readyz, yield, then SIGTERM and expect exit 0."""
    port = free_port()
    cmd = [sys.executable, "-m", "torchshelf", "serve", target, "--port", str(port), "--threads", "1", *extra]
    proc = subprocess.Popen(cmd, env=_env(home), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    server = Server(proc, url)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"shelf serve {target} exited {proc.returncode}:\n{proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                if server.http.get("/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"shelf serve {target} not ready after {ready_timeout} s")
            time.sleep(0.1)
        yield server
    finally:
        server.http.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log = proc.stdout.read() if proc.stdout else ""  # type: ignore[union-attr]
    assert proc.returncode == 0, f"shelf serve {target} exited {proc.returncode} after SIGTERM:\n{log}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "shelf"


def list_tags(home: Path, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "torchshelf", "list", *args, "--output", "tags"],
                         env=_env(home), capture_output=True, text=True, check=True).stdout
    return out.split()


# -- scripts ------------------------------------------------------------------------------------


def test_basic_save_and_load(home: Path) -> None:
    out = run_example(home, "basic_save_load.py").stdout
    assert "Model saved: simple_model:" in out and "loaded outputs match the original" in out
    tags = list_tags(home, "simple_model")
    assert len(tags) == 2 and tags[0] == "simple_model:v1.2.0"  # newest first


def test_advanced_configuration_stores_signatures_labels_metadata_and_custom_objects(home: Path) -> None:
    out = run_example(home, "advanced_config.py").stdout
    assert "'preprocessor': 'tensors'" in out and "'tokenizer': 'pickle'" in out and "'vocab': 'json'" in out
    info = json.loads(subprocess.run(
        [sys.executable, "-m", "torchshelf", "get", "advanced_pytorch_model", "--output", "json"],
        env=_env(home), capture_output=True, text=True, check=True).stdout)
    assert info["labels"] == {"stage": "production", "framework": "pytorch", "task": "classification"}
    assert info["metadata"]["accuracy"] == 0.95
    assert info["signatures"]["__call__"]["batchable"] is True
    assert sorted(info["custom_objects"]) == ["preprocessor", "tokenizer", "vocab"]


def test_preprocessing_pipeline_is_a_custom_object_usable_without_its_source(home: Path) -> None:
    out = run_example(home, "preprocessing_pipeline.py").stdout
    assert "input (1, 3, 64, 64) -> " in out
    # A fresh process that never saw the transform's classes can still use it (pickled by value).
    code = ("import torchshelf; from PIL import Image\n"
            "t = torchshelf.get('resnet_classifier').custom_objects['transform']\n"
            "print(tuple(t(Image.new('RGB', (300, 200))).shape))")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(home), cwd="/", capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "(3, 64, 64)"


def test_device_loading_falls_back_to_cpu(home: Path) -> None:
    proc = run_example(home, "device_fallback.py", "cuda:7")
    assert "asked for cuda:7, running on cpu" in proc.stdout or "running on cuda:7" in proc.stdout
    assert "falling back to cpu" in proc.stderr or "running on cuda:7" in proc.stdout
    assert "asked for cpu, running on cpu" in run_example(home, "device_fallback.py", "cpu").stdout


def test_error_handling_script_catches_typed_errors(home: Path) -> None:
    out = run_example(home, "error_handling/errors.py").stdout
    assert "not found: model 'no_such_model' not found" in out
    assert "invalid name: invalid model name 'Bad Name!'" in out
    assert "wrong input shape [3, 5]" in out
    assert "device: " in out


def test_versioning_loads_the_newest_production_model(home: Path) -> None:
    out = run_example(home, "versioning.py").stdout
    assert "serving production_model:1.1.0" in out
    assert list_tags(home, "production_model", "--label", "stage=production") == ["production_model:1.1.0"]
