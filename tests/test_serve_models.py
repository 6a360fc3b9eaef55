"""Several models in one `shelf serve`: routes, outputs, versions, fairness and `--max-loaded`.

Real servers on 127.0.0.1, real HTTP; every output is checked against the model run directly.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from servers import Server, metric

import torchshelf

SPEC = {"batchable": True, "batch_dim": 0, "input_spec": {"shape": [-1, 8], "dtype": "float32"}}


def _mlp(seed: int, out: int, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out)
    ).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("models-store")
    models = {"a": _mlp(1, 4), "b1": _mlp(2, 3), "b2": _mlp(3, 3), "c": _mlp(4, 5)}
    tags = {
        key: torchshelf.save_model(key[0], model, signatures={"__call__": SPEC}, store=root)
        for key, model in models.items()
    }
    return {"root": str(root), "models": models, "tags": tags}


@pytest.fixture(scope="module")
def three(store: dict[str, object]) -> Iterator[Server]:
    tags = store["tags"]
    assert isinstance(tags, dict)
    server = Server("a:latest", str(tags["b1"]), "c", env={"TORCHSHELF_HOME": str(store["root"])})
    yield server
    server.stop()


async def _post_all(url: str, jobs: list[tuple[str, list[list[float]]]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post(path, json={"inputs": x}) for path, x in jobs))


def test_each_model_answers_on_its_route_with_its_own_outputs_and_version(
    three: Server, store: dict[str, object]
) -> None:
    models, tags = store["models"], store["tags"]
    assert isinstance(models, dict) and isinstance(tags, dict)
    torch.manual_seed(7)
    jobs = []
    for i in range(48):  # interleaved, all in flight at once: the queues batch side by side
        name = "abc"[i % 3]
        jobs.append((f"/models/{name}/predict", torch.randn(1 + i % 3, 8).tolist()))
    responses = asyncio.run(_post_all(three.url, jobs))
    want_model = {"a": models["a"], "b": models["b1"], "c": models["c"]}
    want_version = {"a": tags["a"].version, "b": tags["b1"].version, "c": tags["c"].version}
    for (path, x), r in zip(jobs, responses, strict=True):
        name = path.split("/")[2]
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == want_version[name]
        with torch.inference_mode():
            expected = want_model[name](torch.tensor(x))
        assert torch.allclose(torch.tensor(r.json()["outputs"]), expected, atol=1e-5)
    for name in "abc":
        assert metric(three.url, "torchshelf_requests_total", model=name, api="predict") >= 16


def test_with_several_models_the_single_model_routes_are_gone_and_unknown_names_404(
    three: Server,
) -> None:
    assert httpx.post(three.url + "/predict", json={"inputs": [[0.0] * 8]}).status_code == 404
    r = httpx.post(three.url + "/models/zzz/predict", json={"inputs": [[0.0] * 8]})
    assert r.status_code == 404 and "error" in r.json()
    schema = httpx.get(three.url + "/schema").json()
    assert [m["name"] for m in schema["models"]] == ["a", "b", "c"]
    assert {a["path"] for a in schema["apis"]} == {f"/models/{n}/predict" for n in "abc"}
    paths = httpx.get(three.url + "/openapi.json").json()["paths"]
    assert {"/models/a/predict", "/models/b/predict", "/models/c/predict"} <= set(paths)
    assert metric(three.url, "torchshelf_model_info", model="b") == 1
    bad = httpx.post(three.url + "/models/a/predict", json={"inputs": [[0.0] * 7]})
    assert bad.status_code == 422 and "shape" in bad.json()["error"]
    assert (
        bad.headers["x-model-version"]
        == httpx.get(three.url + "/schema").json()["models"][0]["version"]
    )


def test_the_python_client_chooses_a_model_by_name(three: Server, store: dict[str, object]) -> None:
    models = store["models"]
    assert isinstance(models, dict)
    x = torch.randn(3, 8)
    with torchshelf.Client(three.url) as client:
        assert client.models == ["a", "b", "c"]
        assert client.apis == ["predict"]  # one name, three owners
        with pytest.raises(torchshelf.UsageError, match=r"several served models .*model="):
            client.predict(x)
    for name, key in (("a", "a"), ("b", "b1"), ("c", "c")):
        with torchshelf.Client(three.url, model=name, binary=name != "b") as client:
            assert client.apis == ["predict"]
            with torch.inference_mode():
                expected = models[key](x)
            assert torch.allclose(torch.as_tensor(client.predict(x)), expected, atol=1e-5)
    with (
        torchshelf.Client(three.url, model="zzz") as client,
        pytest.raises(torchshelf.UsageError, match="serves: a, b, c"),
    ):
        client.predict(x)


def test_the_client_takes_the_name_of_a_single_served_model(store: dict[str, object]) -> None:
    server = Server("c", env={"TORCHSHELF_HOME": str(store["root"])})
    try:
        assert torchshelf.Client(server.url).models == ["c"]
        x = torch.randn(2, 8)
        assert torchshelf.Client(server.url, model="c").predict(x).shape == (2, 5)
        with pytest.raises(torchshelf.UsageError, match="serves: c"):
            torchshelf.Client(server.url, model="a").predict(x)
    finally:
        server.stop()


def test_serving_one_name_twice_is_a_usage_error(store: dict[str, object]) -> None:
    tags = store["tags"]
    assert isinstance(tags, dict)
    server = Server(
        str(tags["b1"]), str(tags["b2"]), env={"TORCHSHELF_HOME": str(store["root"])}, wait=False
    )
    _, err = server.proc.communicate(timeout=60)
    assert server.proc.returncode == 2 and "serve each model name once" in err


SLOW = textwrap.dedent(
    """
    import time
    import torchshelf.serving as ts

    @ts.service(name="slow")
    class Slow:
        @ts.api
        def work(self, i: int) -> dict:
            time.sleep(0.05)
            return {"i": i}
    """
)
FAST = textwrap.dedent(
    """
    import torchshelf.serving as ts

    @ts.service(name="fast")
    class Fast:
        @ts.api
        def ping(self, i: int) -> dict:
            return {"pong": i}
    """
)


def test_one_models_backlog_does_not_starve_another(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    (tmp_path / "fast.py").write_text(FAST)
    server = Server(f"{tmp_path}/slow.py:Slow", f"{tmp_path}/fast.py:Fast")
    try:
        done: list[str] = []

        async def run() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

                async def call(path: str, i: int, tag: str) -> None:
                    r = await client.post(path, json={"i": i})
                    assert r.status_code == 200, r.text
                    done.append(tag)

                slow = [
                    asyncio.ensure_future(call("/models/slow/work", i, "slow")) for i in range(20)
                ]
                # Wait until the slow backlog is queued (the server says so), then ask fast.
                depth = ("torchshelf_queue_depth",)
                while await asyncio.to_thread(metric, server.url, *depth, model="slow") < 10:
                    await asyncio.sleep(0.01)
                sent.append(len(done))
                await call("/models/fast/ping", 0, "fast")
                await asyncio.gather(*slow)

        sent: list[int] = []
        asyncio.run(run())
        # Queues take turns: fast waits for the slow call running, not for the slow backlog
        # (served oldest-first, it would come after all of the 10+ queued before it).
        assert done.index("fast") - sent[0] <= 2, (sent, done)
    finally:
        server.stop()


def test_max_loaded_loads_on_first_use_and_evicts_the_least_recently_used(
    three: Server, store: dict[str, object]
) -> None:
    models = store["models"]
    assert isinstance(models, dict)
    server = Server("a", "b", "c", "--max-loaded", "2", env={"TORCHSHELF_HOME": str(store["root"])})
    try:
        x = torch.randn(2, 8)
        live = lambda: {  # noqa: E731
            n for n in "abc" if metric(server.url, "torchshelf_model_info", model=n) == 1
        }
        assert live() == {"a", "b"}  # the first two load at start
        for name in ["c", "a", "b", "c"]:
            r = httpx.post(f"{server.url}/models/{name}/predict", json={"inputs": x.tolist()})
            assert r.status_code == 200, r.text
            want = models["b2" if name == "b" else name]
            with torch.inference_mode():
                assert torch.allclose(torch.tensor(r.json()["outputs"]), want(x), atol=1e-5)
            assert name in live() and len(live()) == 2
        assert live() == {"b", "c"}  # a was the least recently used when c came back
    finally:
        server.stop()


def test_100_load_evict_cycles_do_not_grow_memory(tmp_path: Path) -> None:
    """Two 1 MiB models, at most one loaded: every request evicts the other. A leak of one
    model per cycle would add 100 MiB; the server's RSS must stay flat."""
    for name, seed in (("x", 1), ("y", 2)):
        torch.manual_seed(seed)
        big = torch.nn.Sequential(torch.nn.Linear(8, 1024), torch.nn.Linear(1024, 256)).eval()
        torchshelf.save_model(name, big, signatures={"__call__": SPEC}, store=tmp_path)
    server = Server("x", "y", "--max-loaded", "1", env={"TORCHSHELF_HOME": str(tmp_path)})
    try:
        process = psutil.Process(server.proc.pid)
        body = {"inputs": [[0.5] * 8]}
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def cycles(n: int) -> None:
                for _ in range(n):
                    for name in "xy":
                        r = client.post(f"/models/{name}/predict", json=body)
                        assert r.status_code == 200, r.text

            cycles(10)  # allocator and caches settle
            before = process.memory_info().rss
            cycles(100)
            after = process.memory_info().rss
        assert metric(server.url, "torchshelf_model_info") == 1  # one model loaded at a time
        assert after - before < 16 * 2**20, f"RSS grew {(after - before) / 2**20:.1f} MiB"
    finally:
        server.stop()
