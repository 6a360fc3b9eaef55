"""`shelf bench TAG`: the harness measures what it claims, and the CLI keeps its contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SLEEP_S = 0.010  # the slowed model's forward pass sleeps this long

MODELS_PY = textwrap.dedent(
    f"""
    import time
    import torch

    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep({SLEEP_S})
            return x + 1

    def conv():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    """
)


def shelf(*args: str, env: dict[str, str] | None = None, timeout: float = 180):
    """Run the real command line in a fresh process, as a user or a CI job would."""
    return subprocess.run(
        [sys.executable, "-m", "torchshelf", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def models_py(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.py"
    path.write_text(MODELS_PY)
    return path


@pytest.fixture(scope="module")
def slow_py(models_py) -> str:
    return f"{models_py}:Slow"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """A store holding `tiny` (with an input spec) and `nospec` (without), saved via the API."""
    import torch

    import torchshelf

    root = tmp_path_factory.mktemp("store")
    env = {"TORCHSHELF_HOME": str(root)}
    old = os.environ.get("TORCHSHELF_HOME")
    os.environ.update(env)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
        )
        sig = {
            "batchable": True,
            "batch_dim": 0,
            "input_spec": {"shape": [-1, 16], "dtype": "float32"},
        }
        torchshelf.save_model("tiny", model, signatures={"__call__": sig})
        torchshelf.save_model("nospec", model)
    finally:
        if old is None:
            os.environ.pop("TORCHSHELF_HOME")
        else:
            os.environ["TORCHSHELF_HOME"] = old
    return env


# --- the measuring loop, in process ---------------------------------------------------------------


def test_a_model_that_sleeps_is_measured_within_a_sane_band_of_its_sleep():
    import time

    from torchshelf.bench.model import InputSpec, ModelBenchSettings, measure_callable

    def slow(x):
        time.sleep(SLEEP_S)
        return x

    settings = ModelBenchSettings(batch_sizes=(1, 4), warmup=2, duration_s=0.15, max_windows=3)
    results = measure_callable(slow, InputSpec((3,)), settings)
    for r in results:
        assert SLEEP_S * 1e3 <= r.latency.p50 < SLEEP_S * 1e3 * 1.5 + 2, r
        assert r.latency.count == r.iterations >= 3 * 10
        assert r.throughput_per_s == pytest.approx(r.batch_size / (r.latency.mean / 1e3), rel=1e-6)


def test_warmup_iterations_are_not_timed():
    from torchshelf.bench.model import InputSpec, ModelBenchSettings, measure_callable

    calls = []
    settings = ModelBenchSettings(batch_sizes=(2,), warmup=7, iterations=5, max_windows=3)
    (result,) = measure_callable(calls.append, InputSpec((3,)), settings)
    assert len(calls) == 7 + result.windows * 5
    assert result.iterations == 3 * 5  # the last three windows are reported
    assert tuple(calls[0].shape) == (2, 3)


def test_inputs_come_from_the_signature_or_the_flags():
    from torchshelf.bench.model import resolve_input_spec
    from torchshelf.errors import UsageError

    sig = {
        "predict": {
            "batchable": True,
            "batch_dim": 1,
            "input_spec": {"shape": [5, -1, 7], "dtype": "int64"},
        }
    }
    spec = resolve_input_spec(sig, None, None, method="predict")
    assert (spec.item_shape, spec.dtype, spec.batch_dim) == ((5, 7), "int64", 1)
    assert spec.batch_shape(8) == (5, 8, 7)
    assert resolve_input_spec(sig, "3,4", "float16", method="predict").item_shape == (3, 4)
    with pytest.raises(UsageError, match="--input-shape"):
        resolve_input_spec({"__call__": {"batchable": False, "batch_dim": 0}}, None, None)
    with pytest.raises(UsageError, match="--dtype"):
        resolve_input_spec(None, "3", "complex-ish")


# --- the command line ------------------------------------------------------------------------------


def test_json_has_the_documented_fields_and_consistent_throughput(store, tmp_path):
    csv_path, png = tmp_path / "out.csv", tmp_path / "out.png"
    run = shelf("bench", "tiny", "--batch-sizes", "1,8", "--duration", "0.1", "--max-windows", "3",
                "--warmup", "3", "--threads", "1", "--output", "json", "--csv", str(csv_path),
                "--plot", str(png), env=store)  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["target"].startswith("tiny:")
    assert doc["device"] == "cpu"
    assert doc["torch"] and doc["machine"]["cpu_count"] >= 1
    assert doc["settings"]["input_shape"] == [16] and doc["settings"]["batch_sizes"] == [1, 8]
    assert doc["settings"]["torch_threads"] == 1
    assert [r["batch_size"] for r in doc["results"]] == [1, 8]
    for r in doc["results"]:
        assert set(r["latency_ms"]) == {"p50", "p90", "p95", "p99", "mean", "std"}
        lat = r["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
        assert r["peak_memory_bytes"] > 1_000_000  # RSS of a process that imported torch
        expected = r["batch_size"] / (lat["mean"] / 1e3)
        assert r["throughput_per_s"] == pytest.approx(expected, rel=1e-3)  # mean is rounded to 1 ns
    assert csv_path.read_text().startswith("Batch Size,Variant,Inferences/Second,p50 latency")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_table_goes_to_stdout_and_the_spec_comes_from_the_signature(store):
    run = shelf("bench", "tiny", "--batch-sizes", "2", "--duration", "0.05", "--max-windows", "3",
                env={**store, "COLUMNS": "200"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "P50" in run.stdout and "ITEMS/S" in run.stdout


def test_a_model_without_an_input_spec_names_the_flag_to_pass(store):
    run = shelf("bench", "nospec", "--duration", "0.05", env=store)
    assert run.returncode == 2
    assert "--input-shape" in run.stderr and run.stdout == ""


def test_baseline_passes_and_fails_as_it_should(slow_py, tmp_path):
    first = shelf("bench", slow_py, "--input-shape", "3", "--batch-sizes", "1", "--duration", "0.1",
                  "--max-windows", "3", "--warmup", "1", "-o", "json")  # fmt: skip
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    # A baseline twice as fast as this run: the sleeping model is 50% slower -> exit 1.
    faster = json.loads(first.stdout)
    for r in faster["results"]:
        r["throughput_per_s"] *= 2
        r["latency_ms"]["p50"] /= 2
    (tmp_path / "fast.json").write_text(json.dumps(faster))
    # A baseline at half speed: this run is an improvement -> exit 0.
    slower = json.loads(first.stdout)
    for r in slower["results"]:
        r["throughput_per_s"] /= 2
        r["latency_ms"]["p50"] *= 2
    (tmp_path / "slow.json").write_text(json.dumps(slower))
    common = ("bench", slow_py, "--input-shape", "3", "--batch-sizes", "1", "--duration", "0.1",
              "--max-windows", "3", "--warmup", "1", "-o", "json", "--max-regression", "20%")  # fmt: skip

    failing = shelf(*common, "--baseline", str(tmp_path / "fast.json"))
    assert failing.returncode == 1, failing.stderr
    assert "regression" in failing.stderr
    assert json.loads(failing.stdout)["baseline"]["passed"] is False

    passing = shelf(*common, "--baseline", str(tmp_path / "slow.json"))
    assert passing.returncode == 0, passing.stderr
    assert json.loads(passing.stdout)["baseline"]["passed"] is True
    assert doc["results"][0]["latency_ms"]["p50"] >= SLEEP_S * 1e3


def test_channels_last_is_measured_next_to_eager(models_py):
    run = shelf("bench", f"{models_py}:conv", "--input-shape", "3,16,16", "--batch-sizes", "2",
                "--channels-last", "--duration", "0.05", "--max-windows", "3", "-o", "json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert [(r["variant"], r["batch_size"]) for r in doc["results"]] == [
        ("eager", 2),
        ("channels-last", 2),
    ]
    assert doc["settings"]["channels_last"] is True


def test_channels_last_refuses_inputs_that_are_not_images(models_py):
    run = shelf("bench", f"{models_py}:conv", "--input-shape", "16", "--channels-last")
    assert run.returncode == 2
    assert "--channels-last needs 4-D inputs" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "pass a model TAG"),
        (("tiny", "--url", "http://127.0.0.1:1/p"), "not both"),
        (("tiny", "--batch-sizes", "1,0"), "--batch-sizes values must be >= 1"),
        (("tiny", "--batch-sizes", "a"), "comma-separated list of integers"),
        (("tiny", "--device", "gpu"), "invalid device 'gpu'"),
        (("tiny", "--stability", "lots"), "--stability 'lots' is not a percentage"),
        (("tiny", "--duration", "0"), "--duration must be a positive"),
        (("tiny", "--concurrency", "8"), "--concurrency only applies to server mode"),
        (("--url", "http://127.0.0.1:1/p", "--compile"), "--compile only applies to model mode"),
        (("--url", "ftp://127.0.0.1/p", "--input-shape", "3"), "is not an http(s) URL"),
        (("--url", "http://127.0.0.1:1/p"), "pass --input-shape"),
        (("tiny", "--baseline", "/nonexistent/b.json"), "does not exist"),
        (("tiny", "--output", "yaml"), "yaml"),
        (("tiny", "--threads", "0"), "--threads must be >= 1"),
        (("tiny", "--duration", "1", "--iterations", "5"), "not both"),
    ],
)
def test_bad_flags_are_clear_errors_with_exit_2(args, message, tmp_path):
    run = shelf("bench", *args, env={"TORCHSHELF_HOME": str(tmp_path), "COLUMNS": "200"})
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert message in run.stderr
    assert run.stdout == ""


def test_bench_help_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        from torchshelf.cli.app import app
        try:
            app(["bench", "--help"])
        except SystemExit:
            pass
        print("TORCH", "torch" in sys.modules)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--batch-sizes" in run.stdout
    assert "TORCH False" in run.stdout


def test_unavailable_cuda_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = shelf("bench", f"{Path(tmp_path)}/x.py:M", "--device", "cuda", "--input-shape", "3")
    assert run.returncode == 2
    assert "no CUDA device" in run.stderr
