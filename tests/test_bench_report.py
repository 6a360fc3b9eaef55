"""Bench records without torch or sockets: percentiles, stability, baselines, CSV, flag parsing."""

from __future__ import annotations

import csv
import json
import math

import pytest

from torchshelf.bench.report import (
    LatencyStats,
    Window,
    compare_with_baseline,
    load_report,
    parse_int_list,
    parse_percent,
    windows_agree,
    write_csv,
)
from torchshelf.errors import UsageError


def test_latency_stats_match_numpy_style_percentiles():
    stats = LatencyStats.from_ns([i * 1_000_000 for i in range(1, 101)])  # 1..100 ms
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    assert stats.std == pytest.approx(29.0115, rel=1e-4)
    assert stats.count == 100


def test_latency_stats_of_nothing_are_null_in_json():
    assert LatencyStats.from_ns([]).to_dict()["p50"] is None


def test_windows_agree_only_when_the_last_three_are_within_tolerance():
    steady = [Window(100, 1.0), Window(104, 1.02), Window(97, 0.99)]
    assert windows_agree(steady, 0.10)
    assert not windows_agree(steady[:2], 0.10)
    assert not windows_agree([*steady[:2], Window(150, 1.0)], 0.10)  # throughput jumped
    assert not windows_agree([*steady[:2], Window(100, 1.5)], 0.10)  # latency jumped
    assert windows_agree([Window(10, 9.0), *steady], 0.10)  # only the last three count
    assert not windows_agree([*steady[:2], Window(100, math.nan)], 0.10)


@pytest.mark.parametrize(("text", "value"), [("10%", 0.10), ("10", 0.10), ("2.5%", 0.025)])
def test_percent_flags_accept_perf_analyzer_spellings(text, value):
    assert parse_percent(text, "--stability") == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "-5%", "0", "%"])
def test_percent_flags_refuse_nonsense(text):
    with pytest.raises(UsageError, match="--stability"):
        parse_percent(text, "--stability")


def test_int_lists_refuse_zero_and_words():
    assert parse_int_list("1, 8,32,8", "--batch-sizes") == [1, 8, 32]
    with pytest.raises(UsageError, match="--batch-sizes"):
        parse_int_list("1,x", "--batch-sizes")
    with pytest.raises(UsageError, match=">= 1"):
        parse_int_list("0", "--batch-sizes")


def _model_doc(throughput: float, p50: float) -> dict:
    return {
        "mode": "model",
        "results": [
            {"batch_size": 8, "variant": "eager", "throughput_per_s": throughput,
             "latency_ms": {"p50": p50}},
        ],
    }  # fmt: skip


def test_baseline_flags_a_throughput_drop_past_the_limit():
    check = compare_with_baseline(_model_doc(800, 10), _model_doc(1000, 10), 0.10)
    assert not check.passed
    (bad,) = check.regressions
    assert (bad.key, bad.metric, bad.change) == ("batch_size=8", "throughput", 0.2)


def test_baseline_flags_a_latency_rise_and_passes_small_noise():
    assert not compare_with_baseline(_model_doc(1000, 12), _model_doc(1000, 10), 0.10).passed
    assert compare_with_baseline(_model_doc(950, 10.5), _model_doc(1000, 10), 0.10).passed
    assert compare_with_baseline(_model_doc(2000, 5), _model_doc(1000, 10), 0.10).passed


def test_baseline_lists_unmatched_results_without_failing():
    current = _model_doc(1000, 10)
    current["results"].append({"batch_size": 64, "throughput_per_s": 1, "latency_ms": {"p50": 1}})
    check = compare_with_baseline(current, _model_doc(1000, 10), 0.10)
    assert check.passed and check.unmatched == ["batch_size=64 (not in baseline)"]


def test_baseline_refuses_comparing_server_runs_with_model_runs():
    server = {"mode": "server", "results": []}
    with pytest.raises(UsageError, match="like with like"):
        compare_with_baseline(server, _model_doc(1, 1), 0.1)


def test_baseline_file_must_be_a_bench_document(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UsageError, match="not a `shelf bench --output json` document"):
        load_report(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_report(tmp_path / "missing.json")


def test_server_csv_has_perf_analyzer_columns_in_microseconds(tmp_path):
    doc = {
        "mode": "server",
        "results": [{
            "concurrency": 8, "requests_per_s": 100.0, "throughput_per_s": 100.0,
            "latency_ms": {"p50": 1.5, "p90": 2, "p95": 2.5, "p99": 3, "mean": 1.6, "std": 0.2},
            "errors": {"503": 2}, "batch_size_mean": 4.0, "client_cpu_percent": 12.0,
        }],
    }  # fmt: skip
    write_csv(doc, tmp_path / "out.csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert rows[0]["Concurrency"] == "8"
    assert rows[0]["Inferences/Second"] == "100.0"
    assert rows[0]["p50 latency"] == "1500"
    assert rows[0]["Avg latency"] == "1600"
    assert rows[0]["Errors"] == "2"


def test_importing_the_bench_package_imports_neither_torch_nor_matplotlib():
    import subprocess
    import sys

    code = "import sys, torchshelf.bench; print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr


def test_the_client_counts_as_the_bottleneck_only_when_a_worker_saturates_its_core():
    from torchshelf.bench.load import client_was_bound

    assert client_was_bound([0.3, 0.95])
    assert not client_was_bound([0.5, 0.6])
    assert not client_was_bound([])


def test_server_runs_are_compared_by_concurrency():
    def doc(rate: float) -> dict:
        return {"mode": "server", "results": [
            {"concurrency": 8, "requests_per_s": rate, "latency_ms": {"p50": 5.0}}]}  # fmt: skip

    check = compare_with_baseline(doc(500), doc(1000), 0.10)
    assert [(c.key, c.metric) for c in check.regressions] == [("concurrency=8", "throughput")]
    assert compare_with_baseline(doc(990), doc(1000), 0.10).passed
