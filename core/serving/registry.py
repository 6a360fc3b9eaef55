"""`ModelRegistry`: the served models by name, each in a slot with its live version and queues.

Every protocol handler makes the same one call, `await registry.infer(model, api, kwargs, rows)`,
so V2 and native requests to one model share its batch queue. A slot's `LoadedModel` is read
when a batch is dispatched, never captured earlier: `swap()` (issue 12) replaces it, new batches
run on the new version, the batch already running finishes on the old one, which is released
after it. `--max-loaded N` keeps at most N models in memory: a model loads on first use and the
least recently used idle one is unloaded (and its memory freed) to make room.

All bookkeeping happens on the event loop thread, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, UsageError
from .batching import Batcher, BatchObserver, QueueSpec
from .codecs import InputError
from .loaded import Inference, LoadedModel, default_threads
from .options import ServeOptions
from .target import Call, Endpoint, Served

if TYPE_CHECKING:
    from .follow import CanarySplit

__all__ = ["Inference", "ModelRegistry", "ModelSlot", "NotLoaded"]


class NotLoaded(Exception):
    """The model is not in memory and could not be loaded (HTTP 503)."""


class ModelSlot:
    """One served name: what it serves, its effective endpoints, its live version and queues.

    `prefix` is where its native routes live: "" with a single target, `/models/<name>` with
    several. `queues[api]` names its batch queue (also the metrics series of that api).
    """

    def __init__(self, served: Served, options: ServeOptions, prefix: str, queue_prefix: str):
        self.name = served.name
        self.served = served
        self.endpoints = [_effective(ep, options) for ep in served.endpoints]
        self.by_api = {ep.name: ep for ep in self.endpoints}
        self.prefix = prefix
        self.queues = {ep.name: queue_prefix + ep.name for ep in self.endpoints}
        self.loaded: LoadedModel | None = None
        self.state = "unloaded"  # unloaded | loading | ready | failed
        self.error: str | None = None
        self.pending = 0  # requests of this slot between submit and answer
        self.used = 0  # the registry's clock at the last request, for LRU eviction
        self.loading: asyncio.Future[LoadedModel] | None = None
        self.idle: asyncio.Event | None = None  # set when `pending` drops to 0 (for unload)
        # Serving a label (issue 12): a second live version taking `split`'s share of requests,
        # and, during a drain swap, a future new requests wait on before they are queued.
        self.canary: LoadedModel | None = None
        self.split: CanarySplit | None = None
        self.held: asyncio.Future[None] | None = None

    def takes_canary(self) -> bool:
        """Whether the next request goes to the canary version (decided once, on arrival)."""
        return self.canary is not None and self.split is not None and self.split.take()

    @property
    def device(self) -> str:
        """The first replica's device."""
        return self.served.device

    @property
    def devices(self) -> list[str]:
        """One device per replica (`--device cuda:0,cuda:1`)."""
        return self.served.devices

    @property
    def batcher_key(self) -> str:
        """Which `Batcher` serves this slot: one per device list, shared by its models."""
        return ",".join(self.devices)

    @property
    def version(self) -> str:
        """The version serving now (the target's version before the first load)."""
        return self.loaded.version if self.loaded is not None else self.served.version

    def path(self, api: str) -> str:
        """The native route of `api`."""
        ep = self.by_api[api]
        return ep.path if not self.prefix else f"{self.prefix}/{ep.name}"


class ModelRegistry:
    """Served models by name; one `Batcher` per device list (one worker thread per replica),
    shared by every model on those devices."""

    def __init__(
        self,
        targets: Sequence[Served],
        options: ServeOptions,
        observer: BatchObserver | None = None,
    ) -> None:
        if not targets:
            raise UsageError("nothing to serve: give at least one target")
        names = [t.name for t in targets]
        for name in names:
            if names.count(name) > 1:
                raise UsageError(f"{name!r} is served twice; serve each model name once")
        many = len(targets) > 1
        self.options = options
        self.slots: dict[str, ModelSlot] = {
            t.name: ModelSlot(
                t, options, f"/models/{t.name}" if many else "", f"{t.name}/" if many else ""
            )
            for t in targets
        }
        self.observer = observer
        self.batchers: dict[str, Batcher] = {}
        self._executors: list[ThreadPoolExecutor] = []
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="torchshelf-loader")
        self._clock = 0
        self.started = False
        self.failed: str | None = None  # why the models of the start could not load

    # -- names and lookup ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The served model names, in command-line order."""
        return list(self.slots)

    def slot(self, name: str) -> ModelSlot:
        """The slot of `name`; `NotFound` names the served ones."""
        try:
            return self.slots[name]
        except KeyError:
            raise NotFound(
                f"no model {name!r} is served here; served: {', '.join(self.slots)}"
            ) from None

    @property
    def ready(self) -> bool:
        """True once the models loaded at start are loaded and warmed up."""
        return self.started

    def loaded_count(self) -> int:
        return sum(1 for s in self.slots.values() if s.loaded is not None or s.loading)

    # -- start and stop --------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the batchers and load the first `max_loaded` models (all by default).

        Raises the first load error: the server cannot serve what it was asked to.
        """
        threads = self.options.threads or default_threads()
        if any("cpu" in s.devices for s in self.slots.values()):
            _set_threads(threads)  # inline batches run on this (the loop's) thread
        for slot in self.slots.values():
            batcher = self._batcher(slot.devices, threads)
            for ep in slot.endpoints:
                if not ep.is_async and not ep.stream:
                    batcher.add_queue(self._queue_spec(slot, ep))
        eager = list(self.slots.values())[: self.options.max_loaded or None]
        for slot in eager:
            await self.load(slot.name)
        self.started = True

    def _batcher(self, devices: list[str], threads: int) -> Batcher:
        key = ",".join(devices)
        batcher = self.batchers.get(key)
        if batcher is None:
            from ..devices import split_threads

            # CPU replicas share the torch threads, so together they do not oversubscribe
            executors = [
                _replica_executor(device, index, share)
                for index, (device, share) in enumerate(
                    zip(devices, split_threads(threads, devices), strict=True)
                )
            ]
            self._executors.extend(executors)
            batcher = self.batchers[key] = Batcher(
                [],
                executors=executors,
                observer=self.observer,
                default_timeout=self.options.timeout,
                fill_wait=self.options.fill_wait,
                inline_max_s=self.options.inline_max_s,
            )
        return batcher

    def _queue_spec(self, slot: ModelSlot, ep: Endpoint) -> QueueSpec:
        api = ep.name

        def run_on(replica: int, calls: list[Call]) -> list[Inference]:
            loaded = slot.loaded  # read per batch: a swap takes effect at the next batch
            if loaded is None:
                raise NotLoaded(f"model {slot.name!r} was unloaded; retry to load it again")
            canary = slot.canary
            if canary is None or not any(c.canary for c in calls):
                return loaded.run(api, calls, replica)
            return _run_split(api, calls, loaded, canary, replica)

        def run(calls: list[Call]) -> list[Inference]:
            return run_on(0, calls)

        return QueueSpec(
            name=slot.queues[api],
            run=run,
            run_on=run_on,
            batchable=ep.batch,
            max_batch_size=ep.max_batch_size,
            max_latency_ms=ep.max_latency_ms,
            max_queue=self.options.max_queue,
        )

    async def drain(self) -> None:
        """Answer everything queued and running; refuse new work."""
        for batcher in self.batchers.values():
            await batcher.drain()

    def close(self) -> None:
        """Fail what is still queued and stop the worker and loader threads."""
        for batcher in self.batchers.values():
            batcher.close()
        for executor in (*self._executors, self._loader):
            executor.shutdown(wait=False, cancel_futures=True)

    # -- the one call every protocol makes -------------------------------------------------------

    async def infer(
        self,
        model: str,
        api: str,
        kwargs: dict[str, Any],
        rows: int = 1,
        timeout: float | None = None,
    ) -> Inference:
        """Run `api` of `model` on one request's decoded arguments (loading it if need be).

        Batch apis go through the model's queue; `async def` apis are awaited directly.
        """
        slot = self.slots[model]
        while slot.held is not None:  # a drain swap: queue here until the new version is live
            await asyncio.shield(slot.held)
        if slot.by_api[api].stream:
            raise InputError(
                f"{api} streams its answer, which this protocol cannot carry: call its native "
                f"route POST {slot.path(api)} (Server-Sent Events or NDJSON)",
                400,
            )
        self._clock += 1
        slot.used = self._clock
        loaded = slot.loaded
        if loaded is None:
            loaded = await self.load(model)
        if slot.by_api[api].is_async:
            return await loaded.call(api, kwargs)
        slot.pending += 1
        try:
            return await self.batchers[slot.batcher_key].submit(  # type: ignore[no-any-return]
                slot.queues[api], Call(kwargs, rows, slot.takes_canary()), rows, timeout
            )
        finally:
            self._finished(slot)

    @contextlib.asynccontextmanager
    async def stream(
        self, model: str, api: str, kwargs: dict[str, Any]
    ) -> AsyncIterator[Inference]:
        """Start a streaming api of `model`: yields `Inference(generator, version)`. The model
        counts as busy (not evicted, unload waits) until the block exits."""
        slot = self.slots[model]
        while slot.held is not None:  # a drain swap: wait until the new version is live
            await asyncio.shield(slot.held)
        self._clock += 1
        slot.used = self._clock
        loaded = slot.loaded
        if loaded is None:
            loaded = await self.load(model)
        slot.pending += 1
        try:
            yield loaded.open_stream(api, kwargs)
        finally:
            self._finished(slot)

    def _finished(self, slot: ModelSlot) -> None:
        slot.pending -= 1
        if not slot.pending:
            if slot.idle is not None:
                slot.idle.set()
            if self.options.max_loaded and self.loaded_count() > self.options.max_loaded:
                self._make_room(None)

    # -- loading, unloading, swapping ------------------------------------------------------------

    async def load(self, name: str) -> LoadedModel:
        """Load `name` if it is not loaded (evicting the least recently used under
        `--max-loaded`); concurrent callers share one load."""
        slot = self.slot(name)
        if slot.loaded is not None:
            return slot.loaded
        if slot.loading is None:
            slot.loading = asyncio.ensure_future(self._load(slot))
        return await asyncio.shield(slot.loading)

    async def _load(self, slot: ModelSlot) -> LoadedModel:
        self._make_room(slot)
        slot.state = "loading"
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(
                self._loader, LoadedModel.load, slot.served, slot.endpoints
            )
        except BaseException as exc:
            slot.state = "failed"
            slot.error = f"loading {slot.served.title} failed: {type(exc).__name__}: {exc}"
            print(f"error: {slot.error}", file=sys.stderr, flush=True)
            raise NotLoaded(slot.error) from exc
        finally:
            slot.loading = None
        slot.loaded, slot.state, slot.error = loaded, "ready", None
        return loaded

    def _make_room(self, coming: ModelSlot | None) -> None:
        """Under `--max-loaded`, unload least recently used idle models until one more fits
        (`coming` is the slot about to load; None: just get back within the limit)."""
        limit = self.options.max_loaded
        if not limit:
            return
        want = limit - (1 if coming is not None else 0)
        while self.loaded_count() - (1 if coming is not None else 0) > want:
            idle = [
                s
                for s in self.slots.values()
                if s.loaded is not None and not s.pending and s is not coming
            ]
            if not idle:
                return  # every loaded model is busy: over the limit until one is idle
            self._detach(min(idle, key=lambda s: s.used))

    def _detach(self, slot: ModelSlot) -> None:
        """Take the slot's version out of service and release it once no batch runs on it."""
        old, slot.loaded, slot.state = slot.loaded, None, "unloaded"
        if old is not None:
            self._release_later(slot.batcher_key, old)

    def _release_later(self, key: str, old: LoadedModel) -> None:
        loop = asyncio.get_running_loop()

        def release() -> None:
            loop.run_in_executor(self._loader, old.release)

        batcher = self.batchers.get(key)
        if batcher is None:
            release()
        else:
            batcher.after_running(release)

    async def unload(self, name: str) -> None:
        """Unload `name` once its queued requests are answered (it loads again on use)."""
        slot = self.slot(name)
        if slot.loading is not None:
            with contextlib.suppress(NotLoaded):
                await asyncio.shield(slot.loading)
        while slot.pending:
            slot.idle = asyncio.Event()
            await slot.idle.wait()
        slot.idle = None
        self._detach(slot)

    def swap(self, name: str, new: LoadedModel, *, canary: bool = False) -> LoadedModel | None:
        """Make `new` the live version of `name` (or its canary); returns the old one (released
        after the batch running now). Build `new` with `LoadedModel.load(served,
        slot.endpoints)` off the loop."""
        slot = self.slot(name)
        if canary:
            old, slot.canary = slot.canary, new
        else:
            old, slot.loaded, slot.state, slot.error = slot.loaded, new, "ready", None
        if old is not None and old is not new:
            self._release_later(slot.batcher_key, old)
        return old

    async def drain_swap(
        self,
        name: str,
        build: Callable[[], LoadedModel],
        rebuild_old: Callable[[], LoadedModel],
    ) -> LoadedModel:
        """`--swap drain`: hold new requests (they wait, they are not refused), let the queued
        ones finish on the old version, release it, then build the new one and resume on it.

        If `build` fails, `rebuild_old` loads the old version again and requests resume on it
        before the error propagates; the held requests are never failed by the swap.
        """
        slot = self.slot(name)
        loop = asyncio.get_running_loop()
        slot.held = loop.create_future()
        try:
            while slot.pending:
                slot.idle = asyncio.Event()
                await slot.idle.wait()
            slot.idle = None
            old, slot.loaded = slot.loaded, None
            if old is not None:
                await loop.run_in_executor(self._loader, old.release)
            try:
                new = await loop.run_in_executor(self._loader, build)
            except BaseException:
                slot.loaded = await loop.run_in_executor(self._loader, rebuild_old)
                raise
            slot.loaded, slot.state, slot.error = new, "ready", None
            return new
        finally:
            held, slot.held = slot.held, None
            held.set_result(None)


def _run_split(
    api: str, calls: list[Call], primary: LoadedModel, canary: LoadedModel, replica: int = 0
) -> list[Inference]:
    """One batch holding primary and canary requests: each part runs wholly on its version."""
    out: list[Inference | None] = [None] * len(calls)
    for model, wanted in ((primary, False), (canary, True)):
        idx = [i for i, c in enumerate(calls) if c.canary is wanted]
        if idx:
            for i, res in zip(idx, model.run(api, [calls[i] for i in idx], replica), strict=True):
                out[i] = res
    return out  # type: ignore[return-value]


def _replica_executor(device: str, index: int, threads: int) -> ThreadPoolExecutor:
    """One replica's worker thread (on CPU with its share of the torch threads)."""
    name = f"torchshelf-{device}-r{index}"
    if device != "cpu":
        return ThreadPoolExecutor(1, thread_name_prefix=name)
    return ThreadPoolExecutor(
        1, thread_name_prefix=name, initializer=_set_threads, initargs=(threads,)
    )


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _effective(ep: Endpoint, options: ServeOptions) -> Endpoint:
    """Apply `--max-batch-size` / `--max-latency-ms` to batch apis."""
    if not ep.batch:
        return ep
    changes: dict[str, Any] = {}
    if options.max_batch_size is not None:
        changes["max_batch_size"] = options.max_batch_size
    if options.max_latency_ms is not None:
        changes["max_latency_ms"] = options.max_latency_ms
    return replace(ep, **changes) if changes else ep
