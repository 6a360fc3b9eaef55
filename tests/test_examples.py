"""Every example under examples/ runs end to end, as a user would run it.

Scripts run in a subprocess against a store in tmp_path (TORCHSHELF_HOME). Services are started
with the real `shelf serve FILE:Class --port FREE`, called over HTTP on 127.0.0.1 once /readyz
answers, and stopped with SIGTERM, which must drain and exit 0.
"""

from __future__ import annotations

import io
import json
import os
import re
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
    cmd = (
        ["bash", first, *args[1:]] if first.endswith(".sh") else [sys.executable, first, *args[1:]]
    )
    proc = subprocess.run(
        cmd, env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
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
    cmd = [
        sys.executable,
        "-m",
        "torchshelf",
        "serve",
        target,
        "--port",
        str(port),
        "--threads",
        "1",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, env=_env(home), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
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
    assert proc.returncode == 0, (
        f"shelf serve {target} exited {proc.returncode} after SIGTERM:\n{log}"
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "shelf"


def list_tags(home: Path, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "torchshelf", "list", *args, "--output", "tags"],
        env=_env(home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


# -- scripts ------------------------------------------------------------------------------------


def test_basic_save_and_load(home: Path) -> None:
    out = run_example(home, "basic_save_load.py").stdout
    assert "Model saved: simple_model:" in out and "loaded outputs match the original" in out
    tags = list_tags(home, "simple_model")
    assert len(tags) == 2 and tags[0] == "simple_model:v1.2.0"  # newest first


def test_advanced_configuration_stores_signatures_labels_metadata_and_custom_objects(
    home: Path,
) -> None:
    out = run_example(home, "advanced_config.py").stdout
    assert (
        "'preprocessor': 'tensors'" in out
        and "'tokenizer': 'pickle'" in out
        and "'vocab': 'json'" in out
    )
    info = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torchshelf",
                "get",
                "advanced_pytorch_model",
                "--output",
                "json",
            ],
            env=_env(home),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["labels"] == {
        "stage": "production",
        "framework": "pytorch",
        "task": "classification",
    }
    assert info["metadata"]["accuracy"] == 0.95
    assert info["signatures"]["__call__"]["batchable"] is True
    assert sorted(info["custom_objects"]) == ["preprocessor", "tokenizer", "vocab"]


def test_preprocessing_pipeline_is_a_custom_object_usable_without_its_source(home: Path) -> None:
    out = run_example(home, "preprocessing_pipeline.py").stdout
    assert "input (1, 3, 64, 64) -> " in out
    # A fresh process that never saw the transform's classes can still use it (pickled by value).
    code = (
        "import torchshelf; from PIL import Image\n"
        "t = torchshelf.get('resnet_classifier').custom_objects['transform']\n"
        "print(tuple(t(Image.new('RGB', (300, 200))).shape))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(home),
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "(3, 64, 64)"


def test_device_loading_falls_back_to_cpu(home: Path) -> None:
    proc = run_example(home, "device_fallback.py", "cuda:99")  # a device no machine here has
    assert "asked for cuda:99, running on cpu" in proc.stdout
    assert "device 'cuda:99'" in proc.stderr and "falling back to cpu" in proc.stderr
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
    assert list_tags(home, "production_model", "--label", "stage=production") == [
        "production_model:1.1.0"
    ]


# -- services -----------------------------------------------------------------------------------


def test_basic_service_predicts_with_stored_transform_and_class_names(home: Path) -> None:
    run_example(home, "basic_service/save.py")
    with serve(home, "examples/basic_service/service.py:PyTorchClassifier") as srv:
        r = srv.post("predict", {"input_tensor": [[0.1, 0.2, 0.3, 0.4]]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["class_name"] in ("negative", "neutral", "positive")
        assert body["class_name"] == ["negative", "neutral", "positive"][body["class_id"]]
        assert abs(sum(body["probabilities"][0]) - 1) < 1e-5
        assert body["confidence"] == max(body["probabilities"][0])


def test_batch_service_gives_each_concurrent_caller_its_own_results(home: Path) -> None:
    import torch

    run_example(home, "batch_service/save.py")
    import torchshelf

    model = torchshelf.load_model("batch_model", store=home)
    items = [torch.randn(16) for _ in range(24)]
    with serve(home, "examples/batch_service/service.py:BatchPyTorchService") as srv:
        results: dict[int, Any] = {}

        def call(i: int) -> None:  # 12 clients, 2 items each, all at once
            r = srv.post(
                "batch_predict",
                {"input_tensors": [items[2 * i].tolist(), items[2 * i + 1].tolist()]},
            )
            results[i] = (r.status_code, r.json())

        threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = srv.http.get("/metrics").text
    with torch.no_grad():
        expected = model(torch.stack(items))
    for i, (status, body) in results.items():
        assert status == 200, body
        assert len(body) == 2
        for j, got in enumerate(body):
            assert torch.allclose(torch.tensor(got["prediction"]), expected[2 * i + j], atol=1e-5)
    # the batch metrics also carry the device and replica that ran the batch (issue 13)
    assert re.search(r'torchshelf_batch_size_count\{api="batch_predict"[,}]', metrics), metrics


def test_multi_model_service_serves_three_models(home: Path) -> None:
    run_example(home, "multi_model_service/save.py")
    image = [[[0.1 * (c + y + x) for x in range(8)] for y in range(8)] for c in range(3)]
    with serve(home, "examples/multi_model_service/service.py:MultiPyTorchService") as srv:
        r = srv.post("classify", {"image": image})
        assert r.status_code == 200 and 0 <= r.json()["class"] < 5, r.text
        r = srv.post("detect_objects", {"image": image})
        assert r.status_code == 200 and len(r.json()["detections"]) == 4, r.text
        assert all(len(box) == 5 for box in r.json()["detections"])
        r = srv.post("generate_image", {"noise": [[0.0] * 16]})
        assert r.status_code == 200, r.text
        generated = r.json()
        assert len(generated) == 3 and len(generated[0]) == 8 and len(generated[0][0]) == 8


def test_torchscript_service_serves_the_scripted_model(home: Path) -> None:
    run_example(home, "torchscript/save.py")
    with serve(home, "examples/torchscript/service.py:TorchScriptService") as srv:
        r = srv.post("predict", {"input_data": [[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(out) == 2 and len(out[0]) == 3
        assert all(-10 <= v <= 10 for row in out for v in row)


def test_state_dict_service_rebuilds_the_model_from_its_config(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run_example(home, "state_dict/save.py").stdout
    assert "model_config stored as tensors" in out  # a state dict needs no pickle
    monkeypatch.syspath_prepend(str(EXAMPLES / "state_dict"))  # `architectures`, for the reference
    import torch

    import torchshelf

    x = torch.arange(24, dtype=torch.float32).view(2, 12) / 10
    with torch.no_grad():
        expected = torchshelf.load_model("model_with_state", store=home)(x)
    with serve(home, "examples/state_dict/service.py:StateDictService") as srv:
        r = srv.post("predict", {"input_data": x.tolist()})
    assert r.status_code == 200, r.text
    assert torch.allclose(torch.tensor(r.json()["prediction"]), expected, atol=1e-5)
    assert r.json()["class_id"] == expected.argmax(dim=1).tolist()


def test_dynamic_service_loads_models_on_demand(home: Path) -> None:
    run_example(home, "dynamic_loading/save.py")
    row = [[0.0, 1, 2, 3, 4, 5, 6, 7]]
    with serve(home, "examples/dynamic_loading/service.py:DynamicPyTorchService") as srv:
        r = srv.post("predict_with_model", {"model_name": "topic", "input_data": row})
        assert r.status_code == 200, r.text
        assert r.json()["loaded"] == ["topic"] and len(r.json()["prediction"][0]) == 5
        r = srv.post("predict_with_model", {"model_name": "sentiment", "input_data": row})
        assert r.json()["loaded"] == ["sentiment", "topic"] and len(r.json()["prediction"][0]) == 2
        r = srv.post("predict_with_model", {"model_name": "nope", "input_data": row})
        assert r.status_code == 422 and "not found" in r.json()["error"], r.text


def test_error_handling_service_reports_missing_model_and_wrong_shape(home: Path) -> None:
    service = "examples/error_handling/service.py:RobustPyTorchService"
    with serve(home, service) as srv:  # empty store: starts, but says what is missing
        r = srv.post("predict", {"input_data": [[0.0] * 8]})
        assert r.status_code == 500 and "robust_model" in r.json()["error"], r.text
    run_example(home, "error_handling/errors.py")  # saves robust_model
    with serve(home, service) as srv:
        r = srv.post("predict", {"input_data": [[0.0] * 5]})
        assert (
            r.status_code == 422 and "expected a (batch, 8) tensor, got [1, 5]" in r.json()["error"]
        )
        r = srv.post("predict", {"input_data": "not a tensor"})
        assert r.status_code == 422 and "input_data" in r.json()["error"]
        r = srv.post("predict", content=b"{not json")
        assert r.status_code == 400, r.text
        r = srv.post("predict", {"input_data": [[0.0] * 8, [1.0] * 8]})
        assert r.status_code == 200 and r.json()["success"] is True
        assert len(r.json()["prediction"]) == 2


def _png(color: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_classifier_service_answers_an_upload_with_the_top_5(home: Path) -> None:
    import base64

    run_example(home, "preprocessing_pipeline.py")  # saves resnet_classifier with its transform
    png = _png((200, 120, 40))
    with serve(home, "examples/image_classifier/service.py:ImageClassifier") as srv:
        r = srv.post("classify_image", content=png, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        top = r.json()["top_predictions"]
        assert len(top) == 5
        confidences = [p["confidence"] for p in top]
        assert confidences == sorted(confidences, reverse=True) and 0 < sum(confidences) <= 1 + 1e-6
        assert len({p["class_id"] for p in top}) == 5 and all(p["class_name"] for p in top)
        as_json = srv.post("classify_image", {"image": base64.b64encode(png).decode()})
        assert as_json.json() == r.json()
        r = srv.post(
            "classify_image", content=b"not an image", headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 400 and "image" in r.json()["error"]


@pytest.mark.slow
def test_text_generation_service_generates_from_a_prompt(home: Path) -> None:
    pytest.importorskip("transformers", reason="the text generation example needs transformers")
    pytest.importorskip("tokenizers", reason="the text generation example needs tokenizers")
    run_example(home, "text_generation/save.py")
    with serve(home, "examples/text_generation/service.py:TextGenerator") as srv:
        r = srv.post("generate_text", {"prompt": "The server batches", "max_length": 24})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prompt"] == "The server batches"
        assert body["generated_text"].startswith("The server batches")
        assert body["length"] == len(body["generated_text"]) and body["tokens"] <= 24
        r = srv.post("generate_text", {"prompt": "A tokenizer"})  # max_length defaults to 100
        assert r.status_code == 200 and r.json()["tokens"] <= 100, r.text
        r = srv.post("generate_text", {"prompt": "too long", "max_length": 100000})
        assert r.status_code == 422 and "max_length" in r.json()["error"]
        r = srv.post("generate_text", {"max_length": 10})
        assert r.status_code == 422 and "prompt" in r.json()["error"]
        _check_token_stream(srv)


def _check_token_stream(srv: Server) -> None:
    """`generate_stream` sends the continuation piece by piece, as SSE, NDJSON and to Client."""
    from torchshelf.serving.streaming import SSEDecoder

    body = {"prompt": "The server batches", "max_length": 24}
    with srv.http.stream("POST", "/generate_stream", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        decoder = SSEDecoder()
        items = [json.loads(e.data) for chunk in r.iter_bytes() for e in decoder.feed(chunk)]
    assert items and all(e["text"] for e in items)
    counts = [e["tokens"] for e in items]  # the prompt's tokens and those sampled so far
    assert counts == sorted(set(counts)) and counts[0] > 1 and counts[-1] <= 24
    r = srv.post("generate_stream", body, headers={"Accept": "application/x-ndjson"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines and all(set(line) == {"text", "tokens"} for line in lines)
    r = srv.post("generate_stream", {"prompt": "too long", "max_length": 100000})
    assert r.status_code == 422 and "max_length" in r.json()["error"]  # before any token

    import torchshelf

    with torchshelf.Client(srv.url) as client:
        with client.generate_stream(prompt="A tokenizer", max_length=40) as tokens:
            first = next(tokens)  # hanging up after the first piece stops the sampling
        assert first["text"] and first["tokens"] <= 40
        pieces = list(client.generate_stream(prompt="A tokenizer", max_length=12))
        assert pieces and pieces[-1]["tokens"] <= 12


@pytest.mark.slow
def test_ci_pipeline_script_runs_with_the_cli_only(tmp_path: Path) -> None:
    for tool in ("jq", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the CI pipeline example needs {tool}: apt-get install -y jq curl")
    work = tmp_path / "ci"
    work.mkdir()
    env = _env(tmp_path / "unused")
    del env["TORCHSHELF_HOME"]  # the script picks its own build and deploy stores under WORK
    # The gate itself is exercised by bench's tests; here only its plumbing, on a noisy machine.
    env.update(WORK=str(work), PORT=str(free_port()), MAX_REGRESSION="1000%")
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "ci_pipeline.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, (
        f"ci_pipeline.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("pipeline passed: ")
    assert tag.startswith("ci-classifier:")
    assert (work / "ci-classifier.shelf").is_file()
    assert tag in list_tags(work / "deploy-store") and tag in list_tags(work / "build-store")
    bench = json.loads((work / "bench.json").read_text())
    assert [r["concurrency"] for r in bench["results"]] == [1, 4]
    assert bench["baseline"]["passed"] is True and (work / "bench-baseline.json").is_file()
    assert "POST /predict answered 10 scores" in proc.stdout


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    helpers = {"README.md", "quickstart_model.py", "__pycache__"}
    for entry in sorted(EXAMPLES.iterdir()):
        if entry.name in helpers:
            continue
        link = f"]({entry.name}/)" if entry.is_dir() else f"]({entry.name})"
        assert link in readme, f"examples/README.md has no line for {entry.name}"
