"""`LoadedModel`: one loaded version of one served target, and `Inference`, what it answers.

A `LoadedModel` is immutable once built: a newer version is loaded beside it and swapped into
its registry slot (issue 12) while batches already running finish on this one. `release()` drops
every reference it holds to weights and asks the allocators to give the memory back, so a model
evicted by `--max-loaded` leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .target import Call, Endpoint, Served, make_runner

__all__ = ["Inference", "LoadedModel", "default_threads"]


@dataclass(frozen=True, slots=True)
class Inference:
    """One request's result and the version of the model that computed it."""

    value: Any
    version: str


class LoadedModel:
    """The runners of one target's version on each of its devices; built on the loader thread.

    One replica per entry of `--device` (`served.devices`), each with its own copy of the
    weights. `run(api, calls, replica)` is the batch function a queue calls (on that replica's
    worker thread, or inline on the event loop for tiny models); `call(api, kwargs)` awaits an
    async api directly (on the first replica).
    """

    def __init__(
        self,
        served: Served,
        endpoints: Sequence[Endpoint],
        fns: dict[str, Callable[..., Any]] | Sequence[dict[str, Callable[..., Any]]],
    ) -> None:
        self.name = served.name
        self.version = served.version
        self.device = served.device
        self.devices = served.devices
        self.endpoints = tuple(endpoints)
        per_replica = [fns] if isinstance(fns, dict) else list(fns)
        if len(per_replica) != len(self.devices):
            raise ValueError(f"{len(per_replica)} replicas loaded for devices {self.devices}")
        self._fns = per_replica[0]
        self._runners = [
            {
                ep.name: make_runner(ep, one[ep.name], device)
                for ep in endpoints
                if not ep.is_async and not ep.stream
            }
            for one, device in zip(per_replica, self.devices, strict=True)
        ]
        self.released = False

    @classmethod
    def load(cls, served: Served, endpoints: Sequence[Endpoint]) -> LoadedModel:
        """Load weights (or build the service) on every replica's device and warm up;
        blocking, run it off the loop."""
        return cls(served, endpoints, [served.load(device) for device in served.devices])

    def run(self, api: str, calls: list[Call], replica: int = 0) -> list[Inference]:
        """Run one batch of `api` on `replica`; every result is tagged with this version."""
        version = self.version
        return [Inference(v, version) for v in self._runners[replica][api](calls)]

    async def call(self, api: str, kwargs: dict[str, Any]) -> Inference:
        """Await an `async def` api (not batched: it runs on the event loop)."""
        return Inference(await self._fns[api](**kwargs), self.version)

    def open_stream(self, api: str, kwargs: dict[str, Any]) -> Inference:
        """Start a streaming api: the value is its (async) generator, not run yet; see
        `streaming.GeneratorStream`."""
        return Inference(self._fns[api](**kwargs), self.version)

    def release(self) -> None:
        """Drop the weights and give their memory back (CUDA cache, malloc arenas)."""
        self.released = True
        self._fns = {}
        self._runners = []
        # Modules hold no reference cycles, so dropping the dicts freed the weights; a young-
        # generation pass catches stray cycles without the ~100 ms of a full collection.
        gc.collect(1)
        if any(d.startswith("cuda") for d in self.devices):
            import torch

            torch.cuda.empty_cache()
        _malloc_trim()


def _malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise, and RSS would only grow)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


def default_threads() -> int:
    """Torch threads for CPU serving: every core but one, which is left to the event loop.

    The loop parses and answers requests while the worker computes; if torch took every core,
    the loop would be starved during each forward, fewer requests would be decoded per batch,
    and batches (and throughput) would shrink.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)
