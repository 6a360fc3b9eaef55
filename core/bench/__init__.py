"""Benchmarking: model-level latency/throughput and an HTTP load generator.

`bench_model` / `measure_callable` time a forward pass in this process; `bench_server` drives a
running server with closed-loop clients. Both return a `BenchReport` of frozen result records;
`shelf bench` only renders them. Importing this package does not import torch or matplotlib.

Example:
    >>> from torchshelf.bench import ModelBenchSettings, bench_model
    >>> report = bench_model("classifier:latest", ModelBenchSettings(batch_sizes=(1, 32)))
    >>> [(r.batch_size, r.latency.p99, r.throughput_per_s) for r in report.results]
"""

from .load import (
    LoadSettings,
    RequestBody,
    bench_server,
    body_from_file,
    body_from_server,
    body_from_shape,
)
from .model import InputSpec, ModelBenchSettings, bench_model, measure_callable
from .plot import plot_report
from .report import (
    BaselineCheck,
    BenchReport,
    LatencyStats,
    ModelResult,
    ServerResult,
    compare_with_baseline,
    load_report,
    write_csv,
)

__all__ = [
    "BaselineCheck",
    "BenchReport",
    "InputSpec",
    "LatencyStats",
    "LoadSettings",
    "ModelBenchSettings",
    "ModelResult",
    "RequestBody",
    "ServerResult",
    "bench_model",
    "bench_server",
    "body_from_file",
    "body_from_server",
    "body_from_shape",
    "compare_with_baseline",
    "load_report",
    "measure_callable",
    "plot_report",
    "write_csv",
]
