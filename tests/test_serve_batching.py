"""The batching loop on its own: plain asyncio futures, no HTTP, no torch.

A `threading.Event` gate holds the worker inside a batch so that what queues meanwhile is known
exactly; nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from torchshelf.serving.batching import Batcher, DeadlineExceeded, Overloaded, QueueSpec


class Recorder:
    """A batch function that records each batch and can be held at a gate."""

    def __init__(self, fail_on: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, payloads: list[Any]) -> Sequence[Any]:
        self.batches.append(list(payloads))
        self.entered.set()
        self.gate.wait(10)
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError(f"cannot handle {self.fail_on!r}")
        return [p * 10 for p in payloads]


async def _until(event: threading.Event) -> None:
    await asyncio.get_running_loop().run_in_executor(None, event.wait, 10)


def test_a_lone_request_is_dispatched_at_once_without_waiting_max_latency() -> None:
    async def main() -> None:
        rec = Recorder()
        batcher = Batcher([QueueSpec("q", rec, max_batch_size=32, max_latency_ms=60_000)])
        # If the loop waited max_latency_ms (a minute) this would time out.
        assert await asyncio.wait_for(batcher.submit("q", 4), 10) == 40
        assert rec.batches == [[4]]
        batcher.close()

    asyncio.run(main())


def test_requests_queued_during_a_batch_are_merged_into_the_next_one() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        batcher = Batcher([QueueSpec("q", rec, max_batch_size=32, max_latency_ms=0)])
        first = batcher.submit("q", 1)
        await _until(rec.entered)
        rest = [batcher.submit("q", i) for i in range(2, 12)]
        assert batcher.depth("q") == 10
        rec.gate.set()
        results = await asyncio.gather(first, *rest)
        assert results == [i * 10 for i in range(1, 12)]
        assert [len(b) for b in rec.batches] == [1, 10]
        batcher.close()

    asyncio.run(main())


def test_a_request_with_k_rows_counts_as_k_against_max_batch_size() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        batcher = Batcher([QueueSpec("q", rec, max_batch_size=4, max_latency_ms=0)])
        first = batcher.submit("q", 0)
        await _until(rec.entered)
        futs = [batcher.submit("q", i, rows=3) for i in (1, 2, 3)]
        rec.gate.set()
        await asyncio.gather(first, *futs)
        assert [len(b) for b in rec.batches] == [1, 1, 1, 1]
        batcher.close()

    asyncio.run(main())


def test_a_failing_item_gets_its_own_error_and_the_rest_of_its_batch_succeeds() -> None:
    async def main() -> None:
        rec = Recorder(fail_on=7)
        rec.gate.clear()
        batcher = Batcher([QueueSpec("q", rec, max_batch_size=32, max_latency_ms=0)])
        first = batcher.submit("q", 1)
        await _until(rec.entered)
        futs = [batcher.submit("q", i) for i in (5, 6, 7, 8, 9)]
        rec.gate.set()
        results = await asyncio.gather(first, *futs, return_exceptions=True)
        assert results[:3] == [10, 50, 60]
        assert isinstance(results[3], ValueError) and "7" in str(results[3])
        assert results[4:] == [80, 90]
        batcher.close()

    asyncio.run(main())


def test_a_full_queue_answers_overloaded_instead_of_growing() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        batcher = Batcher([QueueSpec("q", rec, max_batch_size=2, max_queue=3)])
        running = batcher.submit("q", 0)
        await _until(rec.entered)
        queued = [batcher.submit("q", i) for i in range(3)]
        refused = batcher.submit("q", 99)
        with pytest.raises(Overloaded) as info:
            await refused
        assert info.value.retry_after >= 1
        rec.gate.set()
        assert await asyncio.gather(running, *queued) == [0, 0, 10, 20]
        batcher.close()

    asyncio.run(main())


def test_a_request_past_its_deadline_is_answered_instead_of_run() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        batcher = Batcher([QueueSpec("q", rec, max_batch_size=8, max_latency_ms=0)])
        running = batcher.submit("q", 1)
        await _until(rec.entered)
        late = batcher.submit("q", 2, timeout=0.0)
        ok = batcher.submit("q", 3, timeout=60.0)
        rec.gate.set()
        assert await running == 10
        with pytest.raises(DeadlineExceeded):
            await late
        assert await ok == 30
        assert [2] not in rec.batches and all(2 not in b for b in rec.batches)
        batcher.close()

    asyncio.run(main())


def test_drain_answers_everything_queued_and_then_refuses_new_work() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        batcher = Batcher([QueueSpec("q", rec, max_batch_size=4, max_latency_ms=0)])
        futs = [batcher.submit("q", i) for i in range(6)]
        await _until(rec.entered)
        drained = asyncio.ensure_future(batcher.drain())
        await asyncio.sleep(0)
        assert not drained.done()
        rec.gate.set()
        await asyncio.wait_for(drained, 10)
        assert [f.result() for f in futs] == [i * 10 for i in range(6)]
        with pytest.raises(Overloaded):
            await batcher.submit("q", 1)
        batcher.close()

    asyncio.run(main())


def test_apis_share_one_worker_with_one_batch_in_flight() -> None:
    async def main() -> None:
        active = 0
        peak = 0
        lock = threading.Lock()

        def run(payloads: list[Any]) -> list[Any]:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            threading.Event().wait(0.002)
            with lock:
                active -= 1
            return payloads

        batcher = Batcher([QueueSpec("a", run), QueueSpec("b", run, batchable=False)])
        futs = [batcher.submit("a" if i % 2 else "b", i) for i in range(20)]
        assert await asyncio.gather(*futs) == list(range(20))
        assert peak == 1
        batcher.close()

    asyncio.run(main())


def test_queues_take_turns_so_one_backlog_does_not_starve_another() -> None:
    async def main() -> None:
        order: list[str] = []
        gate = threading.Event()
        entered = threading.Event()

        def run(tag: str) -> Any:
            def batch(payloads: list[Any]) -> list[Any]:
                order.append(tag)
                entered.set()
                gate.wait(10)
                return payloads

            return batch

        batcher = Batcher(
            [QueueSpec("a", run("a"), batchable=False), QueueSpec("b", run("b"), batchable=False)]
        )
        backlog = [batcher.submit("a", i) for i in range(10)]
        await _until(entered)  # a's first request is running; nine more of a's wait
        late = batcher.submit("b", 99)
        gate.set()
        await asyncio.gather(late, *backlog)
        assert order[:3] == ["a", "b", "a"]  # b goes next, not after a's whole backlog
        batcher.close()

    asyncio.run(main())


def test_a_queue_measured_cheaper_than_the_handoff_runs_on_the_loop_and_a_slow_one_never_does() -> (
    None
):
    async def main() -> None:
        threads: dict[str, list[str]] = {"tiny": [], "slow": []}

        def run(tag: str, seconds: float) -> Any:
            def batch(payloads: list[Any]) -> list[Any]:
                threads[tag].append(threading.current_thread().name)
                if seconds:
                    threading.Event().wait(seconds)
                return payloads

            return batch

        batcher = Batcher(
            [QueueSpec("tiny", run("tiny", 0)), QueueSpec("slow", run("slow", 0.02))],
            inline_max_s=0.01,
        )
        for i in range(4):
            assert await batcher.submit("tiny", i) == i
            assert await batcher.submit("slow", i) == i
        loop_thread = threading.current_thread().name
        # The first tiny batch is measured on the worker; after that it runs on the loop.
        assert threads["tiny"][0] != loop_thread
        assert threads["tiny"][1:] == [loop_thread] * 3
        assert loop_thread not in threads["slow"]
        batcher.close()

    asyncio.run(main())


def test_after_running_waits_for_the_batch_in_flight() -> None:
    async def main() -> None:
        rec = Recorder()
        rec.gate.clear()
        batcher = Batcher([QueueSpec("q", rec)])
        calls: list[str] = []
        batcher.after_running(lambda: calls.append("idle"))  # nothing running: at once
        assert calls == ["idle"]
        fut = batcher.submit("q", 1)
        await _until(rec.entered)
        batcher.after_running(lambda: calls.append("after"))
        assert calls == ["idle"]
        rec.gate.set()
        assert await fut == 10
        assert calls == ["idle", "after"]
        batcher.close()

    asyncio.run(main())


def test_a_lone_cheap_request_arriving_after_a_pause_is_answered_inside_submit() -> None:
    async def main() -> None:
        batcher = Batcher([QueueSpec("q", lambda xs: [x + 1 for x in xs])], inline_max_s=0.01)
        for i in range(3):  # measured: first on the worker, then inline
            assert await batcher.submit("q", i) == i + 1
            await asyncio.sleep(0.01)
        fut = batcher.submit("q", 41)  # the 4th request: not a probe
        assert fut.done() and fut.result() == 42  # no loop turn needed
        # A burst: within 8 requests one takes the deferred path, the rest of the burst joins
        # its batch, and from then on the burst is batched instead of run one by one.
        futs = [batcher.submit("q", i) for i in range(32)]
        assert not futs[-1].done()
        assert await asyncio.gather(*futs) == list(range(1, 33))
        batcher.close()

    asyncio.run(main())
