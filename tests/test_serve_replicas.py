"""One replica per `--device` entry: batches go to whichever replica is free.

No GPU here, so the multi-replica path is exercised with repeated CPU devices (`cpu,cpu`), the
same code a `cuda:0,cuda:1` server runs; the CUDA variant is marked `gpu` and skips.
A gate (`threading.Event`) holds one replica inside a batch, so what the other one runs
meanwhile is known exactly; nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import textwrap
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from servers import Server, metric

from torchshelf.serving.batching import Batcher, QueueSpec
from torchshelf.serving.metrics import ServeMetrics


class Replicas:
    """`run_on(replica, payloads)`: records who ran what; replica `stuck` waits at a gate."""

    def __init__(self, stuck: int | None = None) -> None:
        self.ran: list[tuple[int, list[Any]]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.stuck = stuck
        self.lock = threading.Lock()
        self.active = 0
        self.most_active = 0

    def __call__(self, replica: int, payloads: list[Any]) -> Sequence[Any]:
        with self.lock:
            self.ran.append((replica, list(payloads)))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if replica == self.stuck:
                self.entered.set()
                self.gate.wait(30)
            else:
                self.gate.wait(0.05)  # long enough that a second batch overlaps the first
            return [(replica, p) for p in payloads]
        finally:
            with self.lock:
                self.active -= 1


def _two_replicas() -> list[ThreadPoolExecutor]:
    return [ThreadPoolExecutor(1, thread_name_prefix=f"replica{i}") for i in range(2)]


def test_a_stuck_replica_holds_no_request_that_the_other_could_run() -> None:
    async def main() -> None:
        rec = Replicas(stuck=0)
        metrics = ServeMetrics()
        metrics.add_series("q", ("q",), devices=("cpu", "cpu"))
        pools = _two_replicas()
        spec = QueueSpec("q", lambda p: rec(0, p), run_on=rec, batchable=False)
        batcher = Batcher([spec], executors=pools, observer=metrics)
        first = batcher.submit("q", "first")  # the lowest free replica, 0, takes it and sticks
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        # Static sharding would hand every other request to replica 0 and they would hang here
        # (wait_for only guards against that hang; it measures nothing).
        for i in range(20):
            assert await asyncio.wait_for(batcher.submit("q", i), 20) == (1, i)
        assert not first.done()
        rec.gate.set()
        assert await asyncio.wait_for(first, 20) == (0, "first")
        assert [r for r, _ in rec.ran] == [0] + [1] * 20
        assert [h.total for h in metrics.batch_size["q"]] == [1, 20]  # rows per replica
        batcher.close()
        for pool in pools:
            pool.shutdown()

    asyncio.run(main())


def test_free_replicas_run_batches_at_the_same_time_and_after_running_waits_for_all() -> None:
    async def main() -> None:
        rec = Replicas()
        pools = _two_replicas()
        spec = QueueSpec("q", lambda p: rec(0, p), run_on=rec, max_batch_size=1)
        batcher = Batcher([spec], executors=pools)
        futures = [batcher.submit("q", i) for i in range(8)]
        await asyncio.sleep(0)  # let the deferred dispatch happen: both replicas get a batch
        released: list[str] = []
        batcher.after_running(lambda: released.append("now"))
        assert batcher.running and not released  # two batches run; it waits for both
        results = await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert sorted(p for _, p in results) == list(range(8))
        assert {r for r, _ in results} == {0, 1}
        assert rec.most_active == 2
        assert released == ["now"]
        await batcher.drain()
        assert not batcher.running
        batcher.close()
        for pool in pools:
            pool.shutdown()

    asyncio.run(main())


def test_batch_metrics_carry_device_and_replica_labels() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    metrics = ServeMetrics()
    metrics.add_series("predict", ("predict",), devices=("cuda:0", "cuda:1"))
    metrics.batch("predict", 8, [0.001] * 8, 0.01, replica=1)
    metrics.request("predict", 200, 0.01)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in fam.samples
    }
    one = (("api", "predict"), ("device", "cuda:1"), ("replica", "1"))
    zero = (("api", "predict"), ("device", "cuda:0"), ("replica", "0"))
    assert samples[("torchshelf_batch_size_sum", one)] == 8
    assert samples[("torchshelf_batch_size_count", zero)] == 0
    assert samples[("torchshelf_compute_seconds_count", one)] == 1
    assert samples[("torchshelf_queue_wait_seconds_count", one)] == 8
    # request metrics are per api: a request is not on a replica until its batch is formed
    assert samples[("torchshelf_requests_total", (("api", "predict"), ("status", "200")))] == 1


SERVICE = textwrap.dedent(
    """
    import threading
    import time

    import torch
    import torchshelf


    @torchshelf.service
    class Who:
        @torchshelf.api(batch=True, max_batch_size=4, max_latency_ms=1)
        def who(self, items: list[torch.Tensor]) -> list[dict]:
            time.sleep(0.02)  # concurrent callers queue, so both replicas get work
            name = threading.current_thread().name
            return [{"thread": name, "torch_threads": torch.get_num_threads()} for _ in items]
    """
)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("replicas") / "who.py"
    path.write_text(SERVICE)
    server = Server(f"{path}:Who", "--device", "cpu,cpu", "--threads", "4")
    try:
        yield server
    finally:
        server.stop()


def test_cpu_cpu_serves_from_two_replicas_with_split_threads_and_labelled_metrics(
    replicated: Server,
) -> None:
    def call(i: int) -> dict[str, Any]:
        r = httpx.post(replicated.url + "/who", json={"items": [[float(i)]]}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(96)))
    threads = {a["thread"].rsplit("_", 1)[0] for a in answers}
    assert threads == {"torchshelf-cpu-r0", "torchshelf-cpu-r1"}
    assert {a["torch_threads"] for a in answers} == {2}  # --threads 4 split over 2 replicas
    per_replica = [
        metric(replicated.url, "torchshelf_batch_size_sum", device="cpu", replica=str(r))
        for r in (0, 1)
    ]
    assert all(n > 0 for n in per_replica) and sum(per_replica) == 96


@pytest.mark.parametrize(
    ("device", "message"),
    [("cpu,,cpu", "an entry is empty"), ("all,cpu", "stands alone"), ("cpu,gpu", "'gpu'")],
)
def test_bad_device_lists_exit_2(tmp_path: Path, device: str, message: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "torchshelf", "serve", "x", "--device", device],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_a_cuda_replica_on_a_machine_without_cuda_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "torchshelf", "serve", "x", "--device", "cpu,cuda:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "no CUDA device" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_all_puts_one_replica_on_every_gpu(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("gpu") / "who.py"
    path.write_text(SERVICE)
    server = Server(f"{path}:Who", "--device", "all")
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: httpx.post(server.url + "/who", json={"items": [[1.0]]}), range(64)
                )
            )
        for i in range(torch.cuda.device_count()):
            assert metric(server.url, "torchshelf_batch_size_count", device=f"cuda:{i}") > 0
    finally:
        server.stop()


def test_a_version_built_by_follow_is_loaded_on_every_replica(store_home: Path) -> None:
    import torchshelf
    from torchshelf.serving.launch import resolve_targets
    from torchshelf.serving.live import build_version
    from torchshelf.serving.target import Call
    from torchshelf.store import default_store

    sig = {"__call__": {"batchable": True, "batch_dim": 0}}
    tag = torchshelf.save_model("lin", torch.nn.Linear(4, 2), signatures=sig)
    (served,) = resolve_targets(["lin"], "cpu,cpu")
    assert served.devices == ["cpu", "cpu"]
    store = default_store()
    loaded = build_version(store, store.read_manifest("lin", tag.version), served, served.endpoints)
    call = Call({"inputs": torch.ones(1, 4)}, 1)
    first, second = (loaded.run("predict", [call], r)[0] for r in (0, 1))
    assert torch.equal(first.value, second.value) and first.version == tag.version
    loaded.release()
