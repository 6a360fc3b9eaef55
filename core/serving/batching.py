"""The adaptive batching loop: bounded queues feeding one worker thread per model replica.

This module knows nothing about HTTP, codecs or torch. Callers `submit()` a payload and await an
asyncio future; the `Batcher` merges queued payloads into one call of the queue's batch function,
run on a worker thread (one batch in flight per replica: one replica per `--device` entry), and
hands each caller its own result or error. With several replicas a batch is formed when one of
them is free and goes to that one: no request is tied to a replica before then.

Policy, in the order it is applied when the worker is free:
- a request whose deadline can no longer be met (now + expected compute > deadline) is answered
  with `DeadlineExceeded` instead of being run;
- a queue whose head is alone, with the worker idle, is dispatched at once: a lone request never
  waits for `max_latency_ms`;
- a backlog (several requests queued while the last batch ran) may wait a little to fill up, but
  only while requests keep arriving (an arrival expected within the recent inter-arrival gap),
  never longer than `max_latency_ms` counted from the first queued request, and never past any
  queued request's deadline;
- a full batch (`max_batch_size` rows; a request carrying k rows counts as k) goes at once;
- queues take turns: the one served longest ago goes first, so one queue's backlog (one model,
  or one api) never starves another's;
- a batch whose queue's measured compute time is below the measured cost of the handoff to the
  worker thread (and below `inline_max_s`) runs on the event loop itself: for a tiny model the
  handoff costs more than the forward pass. A queue starts on the worker, so a big model is
  measured there and never blocks the loop; `inline_max_s=0` turns this off. When, moreover,
  nothing is queued or running and the recent batches held one request each, such a request
  runs inside `submit` itself, saving the loop turn of a deferred dispatch (every 8th request
  still takes that turn, to notice when requests become concurrent again).

If a batch raises, it is split in halves and re-run until the failing requests are isolated, so
the others still get their answers and each bad item gets its own error.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "BatchObserver",
    "Batcher",
    "DeadlineExceeded",
    "Overloaded",
    "QueueSpec",
    "ShuttingDown",
]

BatchFn = Callable[[list[Any]], Sequence[Any]]


class Overloaded(Exception):
    """The queue is full; the caller should retry later (HTTP 503 + Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Overloaded):
    """The request could no longer finish before its deadline, so it was not run."""


class ShuttingDown(Overloaded):
    """The server is draining and accepts no new work."""


class BatchSizeMismatch(Exception):
    """A batch function returned a different number of results than it was given items."""


class BatchObserver(Protocol):
    """Receives what the loop measures (the HTTP layer turns it into Prometheus metrics)."""

    def queue_depth(self, queue: str, rows: int) -> None: ...

    def batch(
        self, queue: str, rows: int, waits: Sequence[float], compute_s: float, replica: int = 0
    ) -> None: ...


class _NullObserver:
    def queue_depth(self, queue: str, rows: int) -> None:
        pass

    def batch(
        self, queue: str, rows: int, waits: Sequence[float], compute_s: float, replica: int = 0
    ) -> None:
        pass


@dataclass(frozen=True)
class QueueSpec:
    """One api's queue: how to run a batch and how far to merge.

    `run` receives the payloads of one batch and returns one result per payload, in order; it runs
    on the worker thread. `batchable=False` runs each request alone. With several replicas
    (executors), `run_on(replica, payloads)` is called instead when given, on that replica's
    thread.
    """

    name: str
    run: BatchFn
    batchable: bool = True
    max_batch_size: int = 32
    max_latency_ms: float = 10.0
    max_queue: int = 1024
    run_on: Callable[[int, list[Any]], Sequence[Any]] | None = None


@dataclass(eq=False)
class _Request:
    payload: Any
    rows: int
    enqueued: float
    deadline: float
    future: asyncio.Future[Any]


@dataclass(eq=False)
class _Queue:
    spec: QueueSpec
    items: deque[_Request] = field(default_factory=deque)
    rows: int = 0
    compute_ewma: float = 0.0  # seconds per batch, 0 until measured
    gap_ewma: float = 0.0  # seconds between arrivals
    last_arrival: float = 0.0
    turn: int = 0  # when this queue was last dispatched (a counter), for taking turns
    rows_ewma: float = 0.0  # rows per batch that the deferred dispatch formed
    arrivals: int = 0


class Batcher:
    """Bounded queues (one per api) served by worker threads, one batch in flight on each.

    With several `executors` (one replica of the model per device), a batch goes to whichever
    replica is free when it is dispatched; nothing is assigned to a replica ahead of time, so a
    slow replica never holds requests that another could run.

    Must be used from a running asyncio loop. `submit` returns a future resolved with the item's
    result, or failed with the item's own exception, `Overloaded` or `DeadlineExceeded`.

    Example:
        >>> batcher = Batcher([QueueSpec("double", lambda xs: [2 * x for x in xs])])
        >>> await batcher.submit("double", 21)
        42
    """

    def __init__(
        self,
        queues: Sequence[QueueSpec],
        *,
        executor: ThreadPoolExecutor | None = None,
        executors: Sequence[ThreadPoolExecutor] = (),
        observer: BatchObserver | None = None,
        default_timeout: float = 30.0,
        fill_wait: bool = True,
        thread_name: str = "torchshelf-worker",
        inline_max_s: float = 0.0,
    ) -> None:
        self._queues: dict[str, _Queue] = {q.name: _Queue(q) for q in queues}
        self._own_executor = executor is None and not executors
        if executors:
            self._executors = list(executors)
        else:
            self._executors = [executor or ThreadPoolExecutor(1, thread_name_prefix=thread_name)]
        self._free = list(range(len(self._executors)))  # idle replicas, lowest index first
        self._observer: BatchObserver = observer or _NullObserver()
        self._timeout = default_timeout
        self._fill_wait = fill_wait
        self._inline_max_s = inline_max_s
        self._handoff_ewma = 0.0  # seconds a worker batch took beyond its compute, 0 until seen
        self._turns = 0
        self._after_batch: list[tuple[set[int], Callable[[], None]]] = []
        self._pending = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queues(self) -> list[str]:
        """The queue names."""
        return list(self._queues)

    def depth(self, queue: str) -> int:
        """Rows waiting in `queue` (not counting the batch in flight)."""
        return self._queues[queue].rows

    def add_queue(self, spec: QueueSpec) -> None:
        """Add a queue (a model loaded after start); replacing a queue keeps its waiting items."""
        q = self._queues.get(spec.name)
        if q is None:
            self._queues[spec.name] = _Queue(spec)
        else:
            q.spec = spec

    @property
    def replicas(self) -> int:
        """How many worker threads (replicas) serve the queues."""
        return len(self._executors)

    @property
    def running(self) -> bool:
        """True while a batch is on a worker thread."""
        return len(self._free) < len(self._executors)

    def after_running(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) once the batches now running, if any, have finished.

        A slot swap uses it: batches dispatched from now on read the new version, so the old one
        can be released when this returns.
        """
        busy = set(range(len(self._executors))) - set(self._free)
        if busy:
            self._after_batch.append((busy, callback))
        else:
            callback()

    def submit(
        self, queue: str, payload: Any, rows: int = 1, timeout: float | None = None
    ) -> asyncio.Future[Any]:
        """Queue one request carrying `rows` items; its deadline is now + `timeout` seconds."""
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        q = self._queues[queue]
        fut: asyncio.Future[Any] = loop.create_future()
        if self._closing:
            fut.set_exception(ShuttingDown("the server is shutting down"))
            return fut
        spec = q.spec
        if q.rows + rows > spec.max_queue and q.items:
            fut.set_exception(
                Overloaded(
                    f"queue {queue!r} is full ({q.rows} items waiting, limit {spec.max_queue}); "
                    "retry later",
                    retry_after=self._retry_after(q),
                )
            )
            return fut
        now = time.monotonic()
        if q.last_arrival:
            gap = now - q.last_arrival
            q.gap_ewma = gap if not q.gap_ewma else 0.8 * q.gap_ewma + 0.2 * gap
        q.last_arrival = now
        req = _Request(
            payload, rows, now, now + (self._timeout if timeout is None else timeout), fut
        )
        q.arrivals += 1
        if self._lone_and_cheap(q):
            # Requests arrive far apart and the model costs less than a handoff: nothing would
            # join this batch, so it runs now, without the loop turn of a deferred dispatch.
            self._turns += 1
            q.turn = self._turns
            outcomes, compute_s = _run_isolating(spec.run, [payload])
            self._complete(q, [req], rows, [0.0], outcomes, compute_s)
            return fut
        q.items.append(req)
        q.rows += rows
        self._idle.clear()
        if self._free and not self._pending:
            # Dispatch on the next loop iteration, not now: every request the loop parses in
            # this iteration (epoll hands it all ready sockets at once) joins the same batch,
            # at no cost in latency for a lone request.
            self._pending = True
            loop.call_soon(self._deferred)
        return fut

    def _inline_ok(self, q: _Queue) -> bool:
        """Whether a batch of `q` is cheaper on the loop than handed to the worker (one replica
        only: with several, the loop must not compete with them for the model)."""
        return (
            0 < q.compute_ewma < min(self._inline_max_s, self._handoff_ewma)
            and len(self._executors) == 1
        )

    def _lone_and_cheap(self, q: _Queue) -> bool:
        """Nothing queued or running anywhere, cheap enough to run inline, and the batches the
        deferred dispatch formed lately held one request (every 8th request still takes the
        deferred path: if others join it, requests are concurrent and batching resumes)."""
        return (
            len(self._free) == len(self._executors)
            and not self._pending
            and self._timer is None
            and not q.items
            and q.rows_ewma < 1.25
            and q.arrivals % 8 != 0
            and self._inline_ok(q)
        )

    def _deferred(self) -> None:
        self._pending = False
        if self._free:
            self._schedule()

    async def drain(self) -> None:
        """Stop accepting work and wait until every queued and running request is answered."""
        self._closing = True
        if self.running or any(q.items for q in self._queues.values()):
            await self._idle.wait()

    def close(self) -> None:
        """Fail whatever is still queued and stop the worker thread."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        for q in self._queues.values():
            while q.items:
                req = q.items.popleft()
                if not req.future.done():
                    req.future.set_exception(ShuttingDown("the server is shutting down"))
            q.rows = 0
        if self._own_executor:
            for executor in self._executors:
                executor.shutdown(wait=False, cancel_futures=True)

    # -- the loop ------------------------------------------------------------------------------

    def _retry_after(self, q: _Queue) -> float:
        # Roughly how long the backlog takes to clear: batches ahead times time per batch.
        batches = max(1, q.rows // max(1, q.spec.max_batch_size))
        return max(1.0, round(batches * (q.compute_ewma or 0.01) + 0.5))

    def _pick(self) -> _Queue | None:
        """The non-empty queue served longest ago (the oldest head among equals)."""
        best: _Queue | None = None
        for q in self._queues.values():
            if q.items and (
                best is None
                or q.turn < best.turn
                or (q.turn == best.turn and q.items[0].enqueued < best.items[0].enqueued)
            ):
                best = q
        return best

    def _expire(self, q: _Queue, now: float) -> None:
        """Answer 'deadline exceeded' to queued requests that cannot finish in time."""
        if not q.items:
            return
        need = q.compute_ewma
        keep: deque[_Request] = deque()
        for req in q.items:
            if req.future.done():  # cancelled by its caller
                q.rows -= req.rows
            elif now + need > req.deadline:
                q.rows -= req.rows
                req.future.set_exception(
                    DeadlineExceeded(
                        f"request could not be served within its {self._timeout:g} s deadline; "
                        "the server is overloaded, retry later",
                        retry_after=self._retry_after(q),
                    )
                )
            else:
                keep.append(req)
        q.items = keep

    def _schedule(self) -> None:
        """Decide, with the worker free, whether to dispatch now, wait a little, or idle."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.monotonic()
        while True:
            q = self._pick()
            if q is None:
                if not self.running:
                    self._idle.set()
                return
            self._expire(q, now)
            if q.items:
                break
            self._observer.queue_depth(q.spec.name, q.rows)
        spec = q.spec
        if (
            self._fill_wait
            and spec.batchable
            and not self._closing
            and len(q.items) > 1
            and q.rows < spec.max_batch_size
        ):
            wait_until = self._fill_until(q, now)
            if wait_until > now:
                assert self._loop is not None
                self._timer = self._loop.call_at(
                    self._loop.time() + (wait_until - now), self._schedule
                )
                return
        self._dispatch(q, now)

    def _fill_until(self, q: _Queue, now: float) -> float:
        """When a backlog should stop waiting for more arrivals (<= now means: go now)."""
        gap = q.gap_ewma
        budget_end = q.items[0].enqueued + q.spec.max_latency_ms / 1000.0
        if not gap or now >= budget_end or now - q.last_arrival > 2 * gap:
            return now  # the budget is spent, or arrivals have stopped
        earliest_deadline = min(r.deadline for r in q.items) - q.compute_ewma
        # Each arrival re-runs this, so the wait extends only while requests keep coming.
        return min(q.last_arrival + 2 * gap, budget_end, earliest_deadline)

    def _dispatch(self, q: _Queue, now: float) -> None:
        spec = q.spec
        batch: list[_Request] = []
        rows = 0
        limit = spec.max_batch_size if spec.batchable else 1
        while q.items:
            req = q.items[0]
            if batch and rows + req.rows > limit:
                break
            q.items.popleft()
            q.rows -= req.rows
            if req.future.done():
                continue
            batch.append(req)
            rows += req.rows
            if not spec.batchable:
                break
        self._observer.queue_depth(spec.name, q.rows)
        if not batch:
            self._schedule()
            return
        self._turns += 1
        q.turn = self._turns
        q.rows_ewma = rows if not q.rows_ewma else 0.8 * q.rows_ewma + 0.2 * rows
        waits = [now - r.enqueued for r in batch]
        payloads = [r.payload for r in batch]
        assert self._loop is not None
        if self._inline_ok(q):
            # Cheaper here than a thread handoff; the next batch waits for the loop's next turn,
            # so a backlog of tiny batches never holds the loop for long.
            outcomes, compute_s = _run_isolating(spec.run, payloads)
            self._complete(q, batch, rows, waits, outcomes, compute_s)
            if any(x.items for x in self._queues.values()):
                if not self._pending:
                    self._pending = True
                    self._loop.call_soon(self._deferred)
            else:
                self._idle.set()
            return
        replica = self._free.pop(0)
        run = spec.run if spec.run_on is None else functools.partial(spec.run_on, replica)
        started = time.perf_counter()
        task = self._loop.run_in_executor(self._executors[replica], _run_isolating, run, payloads)
        task.add_done_callback(lambda t: self._finish(q, batch, rows, waits, t, replica, started))
        if self._free and any(x.items for x in self._queues.values()):
            self._schedule()  # another replica is idle: it takes the next batch now

    def _finish(
        self,
        q: _Queue,
        batch: list[_Request],
        rows: int,
        waits: list[float],
        task: asyncio.Future[tuple[list[tuple[bool, Any]], float]],
        replica: int = 0,
        started: float = 0.0,
    ) -> None:
        self._free.append(replica)
        self._free.sort()
        try:
            outcomes, compute_s = task.result()
        except BaseException as exc:  # the executor itself failed (e.g. shut down)
            outcomes, compute_s = [(False, exc)] * len(batch), 0.0
        else:
            # Two thread switches and a wake-up of the loop: what running inline would save.
            handoff = max(0.0, time.perf_counter() - started - compute_s)
            h = self._handoff_ewma
            self._handoff_ewma = handoff if not h else 0.8 * h + 0.2 * handoff
        self._complete(q, batch, rows, waits, outcomes, compute_s, replica)
        if self._after_batch:
            waiting = []
            for busy, callback in self._after_batch:
                busy.discard(replica)
                if busy:
                    waiting.append((busy, callback))
                else:
                    callback()
            self._after_batch = waiting
        self._schedule()

    def _complete(
        self,
        q: _Queue,
        batch: list[_Request],
        rows: int,
        waits: list[float],
        outcomes: list[tuple[bool, Any]],
        compute_s: float,
        replica: int = 0,
    ) -> None:
        q.compute_ewma = compute_s if not q.compute_ewma else 0.7 * q.compute_ewma + 0.3 * compute_s
        for req, (ok, value) in zip(batch, outcomes, strict=False):
            fut = req.future
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        self._observer.batch(q.spec.name, rows, waits, compute_s, replica)


def _run_isolating(run: BatchFn, payloads: list[Any]) -> tuple[list[tuple[bool, Any]], float]:
    """Run one batch on the worker thread; on failure, bisect to find the failing items."""
    start = time.perf_counter()
    outcomes = _bisect(run, payloads)
    return outcomes, time.perf_counter() - start


def _bisect(run: BatchFn, payloads: list[Any]) -> list[tuple[bool, Any]]:
    try:
        results = run(payloads)
        if len(results) != len(payloads):
            raise BatchSizeMismatch(
                f"the batch function returned {len(results)} results for {len(payloads)} requests"
            )
        return [(True, r) for r in results]
    except Exception as exc:
        if len(payloads) == 1 or isinstance(exc, BatchSizeMismatch):
            return [(False, exc)] * len(payloads)
        mid = len(payloads) // 2
        return _bisect(run, payloads[:mid]) + _bisect(run, payloads[mid:])
