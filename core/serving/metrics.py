"""Prometheus metrics for `shelf serve`, with the names fixed by the contract.

Each app owns its registry (several apps can live in one process, as in tests). Per-api children
are bound once, so recording a request is a dict lookup and two atomic adds.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    """Requests by api and status, latency, batch sizes, queue depth, queue wait vs compute."""

    def __init__(self, apis: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "torchshelf_requests", "Requests answered, by api and HTTP status.", ["api", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "torchshelf_request_duration_seconds", "Time from a request's body to its answer.",
            ["api"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "torchshelf_batch_size", "Items per model call.", ["api"], buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.depth = Gauge(
            "torchshelf_queue_depth", "Items waiting for the worker.", ["api"], registry=r
        )
        self.wait = Histogram(
            "torchshelf_queue_wait_seconds", "Time a request waited in the queue.", ["api"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "torchshelf_compute_seconds", "Time of one model call (a whole batch).", ["api"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._latency = {a: self.latency.labels(a) for a in apis}
        self._batch = {a: self.batch_size.labels(a) for a in apis}
        self._depth = {a: self.depth.labels(a) for a in apis}
        self._wait = {a: self.wait.labels(a) for a in apis}
        self._compute = {a: self.compute.labels(a) for a in apis}
        self._count: dict[tuple[str, int], Counter] = {}
        for a in apis:
            self._depth[a].set(0)

    def request(self, api: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its latency."""
        key = (api, status)
        child = self._count.get(key)
        if child is None:
            child = self._count[key] = self.requests.labels(api, str(status))
        child.inc()
        lat = self._latency.get(api)
        if lat is not None:
            lat.observe(seconds)

    # BatchObserver
    def queue_depth(self, queue: str, rows: int) -> None:
        """Set the queue depth gauge."""
        self._depth[queue].set(rows)

    def batch(self, queue: str, rows: int, waits: Sequence[float], compute_s: float) -> None:
        """Record one model call: its size, each request's queue wait and the compute time."""
        self._batch[queue].observe(rows)
        self._compute[queue].observe(compute_s)
        w = self._wait[queue]
        for s in waits:
            w.observe(s)
