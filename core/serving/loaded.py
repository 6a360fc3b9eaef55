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
    """The runners of one target's version on one device; built on the worker thread.

    `run(api, calls)` is the batch function a queue calls (on the worker thread, or inline on
    the event loop for tiny models); `call(api, kwargs)` awaits an async api directly.
    """

    def __init__(
        self,
        served: Served,
        endpoints: Sequence[Endpoint],
        fns: dict[str, Callable[..., Any]],
    ) -> None:
        self.name = served.name
        self.version = served.version
        self.device = served.device
        self.endpoints = tuple(endpoints)
        self._fns = fns
        self._runners = {
            ep.name: make_runner(ep, fns[ep.name], served.device)
            for ep in endpoints
            if not ep.is_async and not ep.stream
        }
        self.released = False

    @classmethod
    def load(cls, served: Served, endpoints: Sequence[Endpoint]) -> LoadedModel:
        """Load weights (or build the service) and warm up; blocking, run it off the loop."""
        return cls(served, endpoints, served.load())

    def run(self, api: str, calls: list[Call]) -> list[Inference]:
        """Run one batch of `api`; every result is tagged with this version."""
        version = self.version
        return [Inference(v, version) for v in self._runners[api](calls)]

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
        self._runners = {}
        # Modules hold no reference cycles, so dropping the dicts freed the weights; a young-
        # generation pass catches stray cycles without the ~100 ms of a full collection.
        gc.collect(1)
        if self.device.startswith("cuda"):
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
