"""Optional tracing of BentoML's CorkDispatcher, for explaining its 503s (not for timing runs).

Why: BentoML 1.4 answers 503 "process is overloaded" when its adaptive batcher cancels a queued
request. To show *why* it cancels, this wraps (never replaces) two methods in
`bentoml/_internal/marshal/dispatcher.py`:
- `CorkDispatcher.inbound_call`: per request, whether it was served or shed, how long it sat in
  the dispatcher queue, and the queue length it found on arrival;
- `Optimizer.log_outbound`: per batch, its size and how long the batch callback took, i.e. the
  samples the optimizer fits `duration = o_a * n + o_b` to.
Every `interval` seconds it prints one JSON line to stderr with the window's aggregates and the
optimizer's current o_a, o_b and wait. Enabled by TORCHSHELF_PEER_TRACE=1 in bentoml_peer.py.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from typing import Any

from bentoml._internal.marshal import dispatcher as _d

_lock = threading.Lock()
_window: dict[str, list[float]] = {}
_last: dict[str, Any] = {}


def record(key: str, value: float) -> None:
    """Add one sample to the current window (thread-safe; used by the service for compute time)."""
    with _lock:
        _window.setdefault(key, []).append(value)


def _summary(values: list[float]) -> dict[str, float]:
    """Count, mean and median (milliseconds where the key says so)."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": round(statistics.fmean(values), 3),
            "median": round(statistics.median(values), 3), "max": round(max(values), 3)}  # fmt: skip


def install(interval: float = 2.0) -> None:
    """Wrap the dispatcher and start the periodic reporter thread."""
    orig_inbound = _d.CorkDispatcher.inbound_call
    orig_log = _d.Optimizer.log_outbound

    async def inbound_call(self: Any, data: Any) -> Any:
        t0 = time.time()
        record("queue_len_on_arrival", float(len(self._queue)))
        _last["opt"] = self.optimizer
        _last["max_latency_ms"] = self.max_latency * 1000
        try:
            result = await orig_inbound(self, data)
        except asyncio.CancelledError:
            record("shed_wait_ms", 1000 * (time.time() - t0))
            raise
        record("ok_wait_ms", 1000 * (time.time() - t0))
        return result

    def log_outbound(self: Any, n: int, wait: float, duration: float) -> None:
        record("batch_size", float(n))
        record("batch_duration_ms", 1000 * duration)
        record("batch_first_wait_ms", 1000 * wait)
        orig_log(self, n, wait, duration)

    _d.CorkDispatcher.inbound_call = inbound_call  # type: ignore[method-assign]
    _d.Optimizer.log_outbound = log_outbound  # type: ignore[method-assign]

    def report() -> None:
        while True:
            time.sleep(interval)
            with _lock:
                window = dict(_window)
                _window.clear()
            if not window:
                continue
            opt = _last.get("opt")
            line: dict[str, Any] = {k: _summary(v) for k, v in sorted(window.items())}
            if opt is not None:
                line["optimizer_ms"] = {
                    "o_a": round(1000 * opt.o_a, 3),
                    "o_b": round(1000 * opt.o_b, 3),
                    "wait": round(1000 * opt.wait, 3),
                    "max_latency": _last.get("max_latency_ms"),
                }
            print("bentoml-trace " + json.dumps(line), file=sys.stderr, flush=True)

    threading.Thread(target=report, name="bentoml-trace", daemon=True).start()
