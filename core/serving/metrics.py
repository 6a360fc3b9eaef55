"""Prometheus metrics for `shelf serve`, with the names fixed by the contract.

Every observation happens on the event loop thread, so the values are plain Python numbers with
no locks: recording a request is a few list increments, not prometheus_client's locked children
(which cost ~6 % of a small model's request in a profile). prometheus_client renders them at
scrape time through a custom collector. Each app owns its registry (several apps can live in
one process, as in tests).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

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
    """Requests by api and status, latency, batch sizes, queue depth, queue wait vs compute."""

    def __init__(self, apis: Sequence[str]) -> None:
        self.apis = list(apis)
        self.counts: dict[tuple[str, int], int] = {}
        self.latency = {a: _Histogram(_LATENCY_BUCKETS) for a in apis}
        self.batch_size = {a: _Histogram(_BATCH_BUCKETS) for a in apis}
        self.wait = {a: _Histogram(_LATENCY_BUCKETS) for a in apis}
        self.compute = {a: _Histogram(_LATENCY_BUCKETS) for a in apis}
        self.depth = dict.fromkeys(apis, 0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

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
        self.depth[queue] = rows

    def batch(self, queue: str, rows: int, waits: Sequence[float], compute_s: float) -> None:
        """Record one model call: its size, each request's queue wait and the compute time."""
        self.batch_size[queue].observe(rows)
        self.compute[queue].observe(compute_s)
        observe = self.wait[queue].observe
        for s in waits:
            observe(s)


class _Collector:
    """Renders `ServeMetrics` as Prometheus families when /metrics is scraped."""

    def __init__(self, m: ServeMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        requests = CounterMetricFamily(
            "torchshelf_requests",
            "Requests answered, by api and HTTP status.",
            labels=["api", "status"],
        )
        for (api, status), n in sorted(m.counts.items()):
            requests.add_metric([api, str(status)], n)
        yield requests
        for name, doc, hists in (
            (
                "torchshelf_request_duration_seconds",
                "Time from a request's arrival to its answer.",
                m.latency,
            ),
            ("torchshelf_batch_size", "Items per model call.", m.batch_size),
            ("torchshelf_queue_wait_seconds", "Time a request waited in the queue.", m.wait),
            ("torchshelf_compute_seconds", "Time of one model call (a whole batch).", m.compute),
        ):
            family = HistogramMetricFamily(name, doc, labels=["api"])
            for api, hist in hists.items():
                family.add_metric([api], hist.cumulative(), sum_value=hist.total)
            yield family
        depth = GaugeMetricFamily(
            "torchshelf_queue_depth", "Items waiting for the worker.", labels=["api"]
        )
        for api, rows in m.depth.items():
            depth.add_metric([api], rows)
        yield depth
