"""Benchmark records: latency statistics, the stability rule, baseline comparison and CSV.

Everything here is plain data and arithmetic (no torch, no HTTP), so model mode and server mode
share one definition of a percentile, of "stable" and of "a regression".

The JSON document (`BenchReport.to_dict`) follows the contract: times in milliseconds,
`results` holding one record per batch size (model mode) or per concurrency level (server mode).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = [
    "LatencyStats",
    "ModelResult",
    "ServerResult",
    "BenchReport",
    "Window",
    "windows_agree",
    "parse_percent",
    "parse_int_list",
    "Comparison",
    "BaselineCheck",
    "compare_with_baseline",
    "load_report",
    "write_csv",
    "machine_info",
    "busy_machine_warnings",
]

PERCENTILES = (50, 90, 95, 99)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), on an already sorted sequence."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n == 1:
        return float(sorted_values[0])
    rank = (n - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles, mean and standard deviation, in milliseconds."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    count: int

    @classmethod
    def from_ns(cls, samples_ns: Iterable[int]) -> LatencyStats:
        """Summarise raw `perf_counter_ns` durations (sorted here, off the timed path)."""
        values = sorted(v / 1e6 for v in samples_ns)
        n = len(values)
        if n == 0:
            nan = math.nan
            return cls(nan, nan, nan, nan, nan, nan, 0)
        mean = math.fsum(values) / n
        var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        p50, p90, p95, p99 = (_percentile(values, q) for q in PERCENTILES)
        return cls(p50, p90, p95, p99, mean, math.sqrt(var), n)

    def to_dict(self) -> dict[str, float | None]:
        """The contract's `latency_ms` object (count is kept out: it lives on the result)."""
        return {k: _round(v, 6) for k, v in asdict(self).items() if k != "count"}


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


@dataclass(frozen=True)
class Window:
    """One measurement window, reduced to the two numbers the stability rule compares."""

    throughput: float
    p50_ms: float


def windows_agree(windows: Sequence[Window], tolerance: float, last: int = 3) -> bool:
    """perf_analyzer's rule: the last `last` windows are stable when, for throughput and for
    p50 latency, every window lies within `tolerance` (a fraction, 0.1 = 10%) of their mean.

    p50 rather than the mean latency because a shared machine produces outliers that would keep
    the mean from ever settling while the typical request is unchanged.
    """
    if len(windows) < last:
        return False
    tail = windows[-last:]
    for values in ([w.throughput for w in tail], [w.p50_ms for w in tail]):
        if any(math.isnan(v) for v in values):
            return False
        mean = sum(values) / len(values)
        if mean == 0:
            return False
        if any(abs(v - mean) / mean > tolerance for v in values):
            return False
    return True


@dataclass(frozen=True)
class ModelResult:
    """One batch size of one model variant, measured in-process."""

    batch_size: int
    variant: str
    latency: LatencyStats
    throughput_per_s: float
    peak_memory_bytes: int | None
    iterations: int
    windows: int
    stable: bool

    def to_dict(self) -> dict[str, Any]:
        """The contract's result record (plus variant, iterations, windows, stable)."""
        return {
            "batch_size": self.batch_size,
            "variant": self.variant,
            "latency_ms": self.latency.to_dict(),
            "throughput_per_s": _round(self.throughput_per_s, 3),
            "peak_memory_bytes": self.peak_memory_bytes,
            "iterations": self.iterations,
            "windows": self.windows,
            "stable": self.stable,
        }


@dataclass(frozen=True)
class ServerResult:
    """One closed-loop concurrency level against an HTTP endpoint."""

    concurrency: int
    requests: int
    requests_per_s: float
    items_per_request: int
    latency: LatencyStats
    errors: dict[str, int]
    batch_size_mean: float | None
    batch_size_distribution: dict[str, int] | None
    client_cpu_percent: float
    client_cpu_us_per_request: float | None
    client_bound: bool
    windows: int
    stable: bool

    def to_dict(self) -> dict[str, Any]:
        """The contract's `--url` result record (plus client cost and stability fields)."""
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "requests_per_s": _round(self.requests_per_s, 3),
            "throughput_per_s": _round(self.requests_per_s * self.items_per_request, 3),
            "latency_ms": self.latency.to_dict(),
            "errors": dict(self.errors),
            "client_cpu_percent": _round(self.client_cpu_percent, 1),
            "client_cpu_us_per_request": _round(self.client_cpu_us_per_request, 1),
            "client_bound": self.client_bound,
            "windows": self.windows,
            "stable": self.stable,
        }
        if self.batch_size_mean is not None:
            out["batch_size_mean"] = _round(self.batch_size_mean, 3)
            out["batch_size_distribution"] = self.batch_size_distribution
        return out


@dataclass
class BenchReport:
    """A whole run: what was measured, where, with which settings, and the results."""

    mode: str  # "model" or "server"
    target: str
    device: str
    torch: str | None
    settings: dict[str, Any]
    results: list[ModelResult | ServerResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=lambda: machine_info())
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict[str, Any]:
        """The `--output json` document (see CONTRACT.md, `shelf bench`)."""
        return {
            "mode": self.mode,
            "target": self.target,
            "device": self.device,
            "torch": self.torch,
            "created": self.created,
            "machine": self.machine,
            "settings": self.settings,
            "results": [r.to_dict() for r in self.results],
            "warnings": list(self.warnings),
        }


def machine_info() -> dict[str, Any]:
    """Enough about the host to tell two runs' machines apart, without importing torch."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": platform.processor() or None,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(ValueError, OSError, AttributeError):
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    torch = sys.modules.get("torch")  # only describe torch if this run already imported it
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def busy_machine_warnings() -> list[str]:
    """A warning when other work already keeps the CPUs busy: numbers taken now will be noisy."""
    if not hasattr(os, "getloadavg"):
        return []
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load < cpus:
        return []
    return [
        f"the machine was busy before the run (load average {load:.1f} on {cpus} CPUs): "
        "expect noisy numbers; compare runs taken under the same conditions"
    ]


# --- flag parsing shared by the CLI and the library -------------------------------------------


def parse_percent(text: str | float, flag: str) -> float:
    """`"10%"`, `"10"` or `10` -> 0.10. A bare number is read as percent, as perf_analyzer does."""
    raw = str(text).strip()
    number = raw[:-1].strip() if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"{flag} {raw!r} is not a percentage: write e.g. 10%") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{flag} must be a positive percentage, got {raw!r}")
    return value / 100.0


def parse_int_list(text: str, flag: str, *, minimum: int = 1) -> list[int]:
    """`"1,8,32"` -> `[1, 8, 32]`, refusing anything that is not a list of positive integers."""
    parts = [p.strip() for p in str(text).split(",")]
    values: list[int] = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise UsageError(
                f"{flag} {text!r} is not a comma-separated list of integers (e.g. 1,8,32)"
            ) from None
        if value < minimum:
            raise UsageError(f"{flag} values must be >= {minimum}, got {value}")
        values.append(value)
    if not values:
        raise UsageError(f"{flag} needs at least one value")
    return list(dict.fromkeys(values))  # keep order, drop duplicates


# --- baseline comparison ------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One metric of one result compared with the same metric in the baseline."""

    key: str  # e.g. "batch_size=8" or "eager batch_size=8" or "concurrency=64"
    metric: str  # "throughput" or "latency p50"
    baseline: float
    current: float
    change: float  # signed fraction; positive = worse
    regressed: bool


@dataclass(frozen=True)
class BaselineCheck:
    """The outcome of `--baseline`: every comparison made, and the ones past the limit."""

    baseline_path: str
    max_regression: float
    comparisons: list[Comparison]
    unmatched: list[str]

    @property
    def regressions(self) -> list[Comparison]:
        """Comparisons worse than `max_regression`."""
        return [c for c in self.comparisons if c.regressed]

    @property
    def passed(self) -> bool:
        """True when nothing regressed past the limit."""
        return not self.regressions

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary, added to the `--output json` document under `baseline`."""
        return {
            "path": self.baseline_path,
            "max_regression": self.max_regression,
            "passed": self.passed,
            "comparisons": [asdict(c) for c in self.comparisons],
            "unmatched": list(self.unmatched),
        }


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an earlier `--output json` document, refusing files that are not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--baseline file {str(p)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--baseline file {str(p)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise UsageError(
            f"--baseline file {str(p)!r} is not a `shelf bench --output json` document "
            "(no 'results' list)"
        )
    return data


def _result_key(record: dict[str, Any]) -> str | None:
    if "concurrency" in record:
        return f"concurrency={record['concurrency']}"
    if "batch_size" in record:
        variant = record.get("variant") or "eager"
        prefix = "" if variant == "eager" else f"{variant} "
        return f"{prefix}batch_size={record['batch_size']}"
    return None


def _throughput(record: dict[str, Any]) -> float | None:
    value = record.get("requests_per_s", record.get("throughput_per_s"))
    return float(value) if isinstance(value, (int, float)) else None


def _p50(record: dict[str, Any]) -> float | None:
    value = (record.get("latency_ms") or {}).get("p50")
    return float(value) if isinstance(value, (int, float)) else None


DEFAULT_MAX_REGRESSION = 0.10  # `shelf bench --baseline`: allowed throughput drop / p50 rise


def compare_with_baseline(
    current: dict[str, Any], baseline: dict[str, Any], max_regression: float, path: str = ""
) -> BaselineCheck:
    """Compare throughput (lower is worse) and p50 latency (higher is worse) per result.

    Results are matched by batch size and variant (model mode) or by concurrency (server mode);
    results present on one side only are listed as unmatched, not failed, so adding a batch size
    to a CI job does not break it.
    """
    if baseline.get("mode") and current.get("mode") and baseline["mode"] != current["mode"]:
        raise UsageError(
            f"--baseline {path!r} is a {baseline['mode']}-mode run and this is a "
            f"{current['mode']}-mode run; compare like with like"
        )
    base_by_key = {_result_key(r): r for r in baseline["results"] if isinstance(r, dict)}
    comparisons: list[Comparison] = []
    unmatched: list[str] = []
    for record in current["results"]:
        key = _result_key(record)
        old = base_by_key.pop(key, None)
        if key is None or old is None:
            unmatched.append(f"{key} (not in baseline)")
            continue
        pairs = (
            ("throughput", _throughput(old), _throughput(record), -1.0),
            ("latency p50", _p50(old), _p50(record), 1.0),
        )
        for metric, before, after, sign in pairs:
            if before is None or after is None or before <= 0:
                continue
            change = sign * (after - before) / before
            comparisons.append(
                Comparison(key, metric, before, after, round(change, 4), change > max_regression)
            )
    unmatched += [f"{k} (only in baseline)" for k in base_by_key if k is not None]
    return BaselineCheck(str(path), max_regression, comparisons, unmatched)


# --- CSV ----------------------------------------------------------------------------------------

# perf_analyzer's CSV names (latencies in microseconds, as there), plus our own columns after.
_SERVER_COLUMNS = [
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "Std latency",
    "Requests/Second",
    "Errors",
    "Server Batch Size Mean",
    "Client CPU %",
]
_MODEL_COLUMNS = [
    "Batch Size",
    "Variant",
    "Inferences/Second",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "Std latency",
    "Peak Memory Bytes",
]


def _us(ms: float | None) -> str:
    return "" if ms is None else str(round(ms * 1000))


def write_csv(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write perf_analyzer-like CSV: one row per level, latencies in microseconds.

    Columns perf_analyzer fills from Triton's server-side statistics (queue, compute, ...) stay
    empty here: a generic HTTP endpoint does not report them.
    """
    rows: list[list[Any]] = []
    server = report.get("mode") == "server"
    for r in report["results"]:
        lat = r["latency_ms"]
        if server:
            rows.append(
                [r["concurrency"], r.get("throughput_per_s", r["requests_per_s"])]
                + [""] * 7
                + [_us(lat[k]) for k in ("p50", "p90", "p95", "p99", "mean", "std")]
                + [
                    r["requests_per_s"],
                    sum(r["errors"].values()),
                    "" if r.get("batch_size_mean") is None else r["batch_size_mean"],
                    r.get("client_cpu_percent", ""),
                ]
            )
        else:
            rows.append(
                [r["batch_size"], r.get("variant", "eager"), r["throughput_per_s"]]
                + [_us(lat[k]) for k in ("p50", "p90", "p95", "p99", "mean", "std")]
                + ["" if r["peak_memory_bytes"] is None else r["peak_memory_bytes"]]
            )
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_SERVER_COLUMNS if server else _MODEL_COLUMNS)
        writer.writerows(rows)
