"""Prometheus metrics for `shelf serve`, with the names fixed by the contract.

Every observation happens on the event loop thread, so the values are plain Python numbers with
no locks: recording a request is a few list increments, not prometheus_client's locked children
(which cost ~6 % of a small model's request in a profile). prometheus_client renders them at
scrape time through a custom collector. Each app owns its registry (several apps can live in
one process, as in tests).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Histogram:
    """Bucket counts (non-cumulative) and a sum; `le` buckets as Prometheus defines them."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class ServeMetrics:
    """Requests by api and status, latency, batch sizes, queue depth, queue wait vs compute.

    Each series is keyed by a string (the batch queue's name) and carries one value per label
    name: `ServeMetrics(["predict"])` labels by `api`; with several models the app uses
    `labels=("model", "api")` and `add_series("a/predict", ("a", "predict"))`. The batch
    metrics (`torchshelf_batch_size`, `_queue_wait_seconds`, `_compute_seconds`) also carry
    `device` and `replica` (the index in the `--device` list): `add_series(..., devices=...)`
    names each replica's device, and `batch(..., replica=i)` records on replica i.
    `live_versions`, when given, yields (model, version) for `torchshelf_model_info`.
    """

    def __init__(
        self,
        apis: Sequence[str] = (),
        *,
        labels: Sequence[str] = ("api",),
        live_versions: Callable[[], Iterable[tuple[str, str]]] | None = None,
    ) -> None:
        self.label_names = tuple(labels)
        self.series: dict[str, tuple[str, ...]] = {}
        self.counts: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.devices: dict[str, tuple[str, ...]] = {}
        self.batch_size: dict[str, list[_Histogram]] = {}  # per replica
        self.wait: dict[str, list[_Histogram]] = {}
        self.compute: dict[str, list[_Histogram]] = {}
        self.depth: dict[str, int] = {}
        self.live_versions = live_versions
        for api in apis:
            self.add_series(api, (api,))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    @property
    def apis(self) -> list[str]:
        return list(self.series)

    def add_series(
        self, key: str, values: Sequence[str], devices: Sequence[str] = ("cpu",)
    ) -> None:
        """Start recording series `key` with these label values (one per label name), run by
        one replica on each of `devices`."""
        if len(values) != len(self.label_names):
            raise ValueError(f"series {key!r} needs values for {self.label_names}")
        self.series[key] = tuple(values)
        self.devices[key] = tuple(devices)
        self.latency[key] = _Histogram(_LATENCY_BUCKETS)
        self.batch_size[key] = [_Histogram(_BATCH_BUCKETS) for _ in devices]
        self.wait[key] = [_Histogram(_LATENCY_BUCKETS) for _ in devices]
        self.compute[key] = [_Histogram(_LATENCY_BUCKETS) for _ in devices]
        self.depth[key] = 0

    def request(self, api: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its latency."""
        key = (api, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        hist = self.latency.get(api)
        if hist is not None:
            hist.observe(seconds)

    # BatchObserver
    def queue_depth(self, queue: str, rows: int) -> None:
        """Set the queue depth gauge."""
        if queue in self.depth:
            self.depth[queue] = rows

    def batch(
        self, queue: str, rows: int, waits: Sequence[float], compute_s: float, replica: int = 0
    ) -> None:
        """Record one model call on `replica`: its size, each request's queue wait and the
        compute time."""
        if queue not in self.series:
            return
        self.batch_size[queue][replica].observe(rows)
        self.compute[queue][replica].observe(compute_s)
        observe = self.wait[queue][replica].observe
        for s in waits:
            observe(s)


class _Collector:
    """Renders `ServeMetrics` as Prometheus families when /metrics is scraped."""

    def __init__(self, m: ServeMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        names = list(m.label_names)
        requests = CounterMetricFamily(
            "torchshelf_requests",
            "Requests answered, by api and HTTP status.",
            labels=[*names, "status"],
        )
        for (key, status), n in sorted(m.counts.items()):
            if key in m.series:
                requests.add_metric([*m.series[key], str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "torchshelf_request_duration_seconds",
            "Time from a request's arrival to its answer.",
            labels=names,
        )
        for key, hist in m.latency.items():
            latency.add_metric(list(m.series[key]), hist.cumulative(), sum_value=hist.total)
        yield latency
        for name, doc, per_replica in (
            ("torchshelf_batch_size", "Items per model call.", m.batch_size),
            ("torchshelf_queue_wait_seconds", "Time a request waited in the queue.", m.wait),
            ("torchshelf_compute_seconds", "Time of one model call (a whole batch).", m.compute),
        ):
            family = HistogramMetricFamily(name, doc, labels=[*names, "device", "replica"])
            for key, hists in per_replica.items():
                for replica, (device, hist) in enumerate(zip(m.devices[key], hists, strict=True)):
                    values = [*m.series[key], device, str(replica)]
                    family.add_metric(values, hist.cumulative(), sum_value=hist.total)
            yield family
        depth = GaugeMetricFamily(
            "torchshelf_queue_depth", "Items waiting for the worker.", labels=names
        )
        for key, rows in m.depth.items():
            depth.add_metric(list(m.series[key]), rows)
        yield depth
        if m.live_versions is not None:
            info = GaugeMetricFamily(
                "torchshelf_model_info",
                "1 for each live model version.",
                labels=["model", "version"],
            )
            for model, version in m.live_versions():
                info.add_metric([model, version], 1)
            yield info
