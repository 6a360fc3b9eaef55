"""`shelf serve NAME --label stage=production --watch` as a real process under continuous load.

Every version of `clf` is `zoo.Scaled(scale=k)`, so each answer can be checked against the
version its `X-Model-Version` header names. Promotions are real `shelf label` processes (and, for
the 100 swaps, in-process label changes plus SIGHUP, which is what makes 100 swaps fast). The
same runs against a local store and against a moto S3 remote on 127.0.0.1.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import child_env
from prometheus_client.parser import text_string_to_metric_families
from s3_processes import AWS_ENV, threaded_moto

import torchshelf
from torchshelf.store import Store

psutil = pytest.importorskip("psutil")

INTERVAL = 0.5
SIGNATURES = {"__call__": {"batchable": True, "input_spec": {"shape": [-1, 4], "dtype": "float32"}}}
PAD = 1 << 21  # 8 MiB of float32 per version, so a leaked version shows in RSS
SWAPS = 100


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save_scaled(store: Store, scale: float, pad: int = PAD, **kw: Any) -> str:
    from zoo import Scaled

    model = Scaled(scale, pad)
    tag = torchshelf.save_model(
        "clf",
        model,
        signatures=kw.pop("signatures", SIGNATURES),
        init_kwargs={"scale": scale, "pad": pad},
        store=store,
        **kw,
    )
    return tag.version


def largest_file(store: Store, version: str) -> str:
    m = store.read_manifest("clf", version)
    return max(m.files, key=lambda r: m.files[r]["size"])


def tamper_local(store: Store, version: str) -> None:
    path = store.version_dir("clf", version) / largest_file(store, version)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


class Server:
    """A `shelf serve clf --label stage=production ...` child; ready once /readyz is 200."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        import tempfile

        self.url = f"http://127.0.0.1:{_free_port()}"
        # A file, not a pipe: a full pipe would block the server. Closed with the test process.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchshelf", "serve", "clf", "--label", "stage=production"]
            + [*args, "--port", self.url.rsplit(":", 1)[1]],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            text=True,
        )
        wait_for(self._ready, 90, "the server to become ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited {self.proc.returncode}: {self.read_log()}")
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def status(self) -> dict[str, Any]:
        return httpx.get(self.url + "/readyz", timeout=10).json()

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.read_log()

    def read_log(self) -> str:
        self.log.seek(0)
        return self.log.read()


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Load:
    """`clients` threads POSTing /predict nonstop; each answer is checked against its version."""

    def __init__(self, url: str, scales: dict[str, float], clients: int = 3) -> None:
        self.url, self.scales = url, scales
        self.statuses: dict[int, int] = {}
        self.first_seen: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, seed: int) -> None:
        n = seed
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                n += 7
                row = [float(n % 5), 1.0, 2.0, float(n % 3)]
                try:
                    r = client.post(self.url + "/predict", json={"inputs": [row]})
                except httpx.HTTPError as exc:
                    self._record(0, None, f"transport error {exc!r}")
                    continue
                version = r.headers.get("x-model-version")
                problem = None
                if r.status_code == 200:
                    scale = self.scales.get(version or "")
                    want = [[scale * sum(row)] * 4] if scale is not None else None
                    if r.json()["outputs"] != want:
                        problem = f"{version}: got {r.json()['outputs']} for {row}, want {want}"
                else:
                    problem = f"status {r.status_code}: {r.text}"
                self._record(r.status_code, version, problem)

    def _record(self, status: int, version: str | None, problem: str | None) -> None:
        with self._lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if version is not None:
                self.first_seen.setdefault(version, time.monotonic())
                self.counts[version] = self.counts.get(version, 0) + 1
            if problem:
                self.problems.append(problem)

    def seen(self, version: str) -> bool:
        with self._lock:
            return version in self.first_seen

    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values())


# --- the remote -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    with threaded_moto() as url:
        yield url


class Delivery:
    """Where versions are saved, promoted and tampered with: the local store, or a CI machine
    that pushes to the remote the server follows."""

    def __init__(self, tmp: Path, endpoint: str | None) -> None:
        self.store = Store(tmp / "ci" if endpoint else tmp / "store")
        self.remote: Any = None
        self.env = child_env(tmp / "store")
        self.args: list[str] = []
        if endpoint:
            import boto3

            from torchshelf.remote import Remote

            self.bucket = f"follow-{secrets.token_hex(6)}"
            self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            self.s3.create_bucket(Bucket=self.bucket)
            self.url = f"s3://{self.bucket}/team"
            self.remote = Remote(self.url, endpoint_url=endpoint)
            self.env.update(AWS_ENV, AWS_ENDPOINT_URL=endpoint)
            self.args = ["--remote", self.url]

    def save(self, scale: float, **labels: str) -> str:
        version = save_scaled(self.store, scale, labels=labels)
        if self.remote is not None:
            self.remote.push(self.store, f"clf:{version}")
        return version

    def tamper(self, version: str) -> None:
        if self.remote is None:
            tamper_local(self.store, version)
            return
        rel = largest_file(self.store, version)
        key = f"team/models/clf/{version}/{rel}"
        data = bytearray(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(data))

    def promote_cli(self, version: str) -> None:
        """`shelf label clf:V stage=production [--remote URL]`, as CI would run it."""
        result = subprocess.run(
            [sys.executable, "-m", "torchshelf", "label", f"clf:{version}", "stage=production"]
            + self.args,
            env={**self.env, "TORCHSHELF_HOME": str(self.store.root)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr

    def move_label(self, to: str, away: str) -> None:
        """`to` becomes the newest production version, `away` stops matching (one swap)."""
        target = self.remote if self.remote is not None else self.store
        # In this order no check in between can see an older production version (the tampered
        # one) as the newest match.
        target.set_labels(f"clf:{to}", {"stage": "production"})
        target.set_labels(f"clf:{away}", {"stage": "staging"})


@pytest.fixture(params=["local", "remote"])
def delivery(request: pytest.FixtureRequest, tmp_path: Path) -> Delivery:
    endpoint = request.getfixturevalue("moto_endpoint") if request.param == "remote" else None
    return Delivery(tmp_path, endpoint)


# --- the done-when test -------------------------------------------------------------------------


def _promote_and_follow(server: Server, load: Load, d: Delivery, v: str, tampered: bool) -> None:
    d.promote_cli(v)
    before = server.status()  # the label is committed: every check from the next one sees it
    if tampered:
        st = wait_for(
            lambda: (s := server.status())["primary"].get("failed", {}).get("version") == v and s,
            60,
            f"{v} to be refused",
        )
        assert st["version"] == before["version"]  # the old one keeps serving
        return
    wait_for(lambda: load.seen(v), 60, f"the header to flip to {v}")
    st = server.status()
    assert st["version"] == v
    # Within two intervals: the check that swapped it in is at most the second one after the
    # promotion returned (it may also be one that ran while `shelf label` was exiting).
    assert st["primary"]["since_check"] <= before["checks"] + 2, (before, st)


def _hundred_swaps(server: Server, _load: Load, d: Delivery, a: str, b: str) -> list[int]:
    """Flip between `a` and `b` 100 times (label move + SIGHUP); RSS after every 10th swap."""
    proc = psutil.Process(server.proc.pid)
    rss = []
    current = server.status()["version"]
    for i in range(SWAPS):
        to, away = (a, b) if current == b else (b, a)
        d.move_label(to, away)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda to=to: server.status()["version"] == to, 60, f"swap {i} to {to}")
        current = to
        if i % 10 == 9:
            rss.append(proc.memory_info().rss)
    return rss


def test_promotions_under_load_swap_with_no_failed_request_and_never_to_a_tampered_version(
    delivery: Delivery,
) -> None:
    scales = {}
    v0 = delivery.save(1.0, stage="production")
    scales[v0] = 1.0
    versions = []
    for k in range(2, 7):
        v = delivery.save(float(k))
        scales[v] = float(k)
        versions.append(v)
    bad = versions[2]
    delivery.tamper(bad)
    server = Server("--watch", "--watch-interval", str(INTERVAL), *delivery.args, env=delivery.env)
    try:
        with Load(server.url, scales) as load:
            wait_for(lambda: load.seen(v0), 30, "the first answers")
            for v in versions:
                _promote_and_follow(server, load, delivery, v, tampered=v == bad)
            before = load.total()
            wait_for(lambda: load.total() > before + 20, 30, "more answers after the last swap")
        with Load(server.url, scales, clients=1) as light:
            rss = _hundred_swaps(server, light, delivery, versions[3], versions[4])
        swaps_ok = server.metric("torchshelf_model_swaps_total", model="clf", result="ok")
        failed = server.metric(
            "torchshelf_model_swaps_total",
            result="pull_failed" if delivery.remote else "verify_failed",
        )
        info = server.metric("torchshelf_model_info", model="clf")
    finally:
        log = server.stop()
    for each in (load, light):
        assert each.problems == [], each.problems[:5]
        assert set(each.statuses) == {200}, each.statuses
    assert bad not in load.first_seen and bad in log
    assert all(v in load.first_seen for v in versions if v != bad)
    assert swaps_ok == 4 + SWAPS and failed == 1 and info == 1
    # No growth across 100 swaps: a leaked 8 MiB version per swap would add ~720 MiB.
    growth = rss[-1] - rss[0]
    assert growth < 3 * PAD * 4, [r >> 20 for r in rss]


# --- bad versions, drain swaps, canary ----------------------------------------------------------


def _save_gone_class(store: Store, tmp: Path) -> str:
    """A version whose class lives in a module the server cannot import (it was removed)."""
    name = f"gone_{secrets.token_hex(4)}"
    module_dir = tmp / "modules"
    module_dir.mkdir()
    (module_dir / f"{name}.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(4, 4, bias=False)\n"
        "    def forward(self, x):\n"
        "        return self.lin(x)\n"
    )
    sys.path.insert(0, str(module_dir))
    try:
        import importlib

        net = importlib.import_module(name).Net()
        version = torchshelf.save_model("clf", net, signatures=SIGNATURES, store=store).version
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop(name, None)
    (module_dir / f"{name}.py").unlink()
    return version


def _promote_with_sighup(server: Server, store: Store, version: str) -> dict[str, Any]:
    store.set_labels(f"clf:{version}", {"stage": "production"})
    checks = server.status()["checks"]
    server.proc.send_signal(signal.SIGHUP)
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := server.status())["checks"] > checks and s, 60, "a check after SIGHUP"
    )


def test_a_bad_version_never_goes_live_and_is_not_retried(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    v0 = save_scaled(store, 1.0, pad=0, labels={"stage": "production"})
    tampered = save_scaled(store, 2.0, pad=0)
    tamper_local(store, tampered)
    gone = _save_gone_class(store, tmp_path)
    unwarmable = save_scaled(
        store,
        3.0,
        pad=0,
        signatures={"__call__": {"batchable": True, "input_spec": {"shape": [-1, 5]}}},
    )
    good = save_scaled(store, 4.0, pad=0)
    scales = {v0: 1.0, tampered: 2.0, unwarmable: 3.0, good: 4.0}
    server = Server("--watch", "--watch-interval", "3600", env=child_env(store.root))
    try:
        with Load(server.url, scales, clients=1) as load:
            for version, stage in ((tampered, "verify"), (gone, "load"), (unwarmable, "warmup")):
                st = _promote_with_sighup(server, store, version)
                assert st["version"] == v0
                assert st["primary"]["failed"]["version"] == version
                assert server.metric("torchshelf_model_swaps_total", result=f"{stage}_failed") == 1
            st = _promote_with_sighup(server, store, unwarmable)  # the same selection: no retry
            assert server.metric("torchshelf_model_swaps_total", result="warmup_failed") == 1
            _promote_with_sighup(server, store, good)
            wait_for(lambda: load.seen(good), 30, "the good version")
        counts = {
            r: server.metric("torchshelf_model_swaps_total", result=r)
            for r in ("ok", "verify_failed", "load_failed", "warmup_failed")
        }
    finally:
        log = server.stop()
    assert load.problems == [] and set(load.statuses) == {200}, (load.problems[:3], load.statuses)
    assert set(load.first_seen) == {v0, good}
    assert counts == {"ok": 1, "verify_failed": 1, "load_failed": 1, "warmup_failed": 1}
    for version in (tampered, gone, unwarmable):
        assert f"clf:{version} failed to" in log


def test_a_drain_swap_queues_requests_and_fails_none(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    v0 = save_scaled(store, 1.0, labels={"stage": "production"})
    v1, v2 = save_scaled(store, 2.0), save_scaled(store, 3.0)
    scales = {v0: 1.0, v1: 2.0, v2: 3.0}
    server = Server("--watch", "--swap", "drain", env=child_env(store.root))
    try:
        with Load(server.url, scales) as load:
            for v in (v1, v2):
                _promote_with_sighup(server, store, v)
                wait_for(lambda v=v: load.seen(v), 60, f"the header to flip to {v}")
    finally:
        log = server.stop()
    assert load.problems == [] and set(load.statuses) == {200}, (load.problems[:3], load.statuses)
    assert "requests queue meanwhile" in log


def test_a_canary_gets_its_share_and_every_answer_names_its_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    v0 = save_scaled(store, 1.0, pad=0, labels={"stage": "production"})
    c1 = save_scaled(store, 5.0, pad=0, labels={"stage": "candidate"})
    server = Server("--canary", "stage=candidate:10", env=child_env(store.root))
    try:
        st = server.status()
        assert st["version"] == v0 and st["canary"]["version"] == c1
        assert st["canary"]["percent"] == 10
        seen: dict[str, int] = {}
        with httpx.Client(timeout=30) as client:
            for i in range(200):
                row = [float(i % 5), 1.0, 2.0, 3.0]
                r = client.post(server.url + "/predict", json={"inputs": [row]})
                assert r.status_code == 200
                version = r.headers["x-model-version"]
                scale = {v0: 1.0, c1: 5.0}[version]
                assert r.json()["outputs"] == [[scale * sum(row)] * 4]
                seen[version] = seen.get(version, 0) + 1
        assert seen == {v0: 180, c1: 20}
        v2_seen: dict[str, int] = {}
        for i in range(20):  # the Open Inference Protocol: model_version names the version too
            row = [float(i % 5), 1.0, 2.0, 3.0]
            body = {
                "inputs": [{"name": "inputs", "shape": [1, 4], "datatype": "FP32", "data": row}]
            }
            r = httpx.post(server.url + "/v2/models/clf/infer", json=body, timeout=30)
            assert r.status_code == 200, r.text
            version = r.json()["model_version"]
            assert r.headers["x-model-version"] == version
            scale = {v0: 1.0, c1: 5.0}[version]
            assert r.json()["outputs"][0]["data"] == [scale * sum(row)] * 4
            v2_seen[version] = v2_seen.get(version, 0) + 1
        assert v2_seen == {v0: 18, c1: 2}
        meta = httpx.get(server.url + "/v2/models/clf", timeout=30).json()
        assert meta["versions"] == [v0]  # the primary live version
        assert server.metric("torchshelf_model_info", model="clf", version=c1) == 1
        assert server.metric("torchshelf_model_info", model="clf", version=v0) == 1
    finally:
        server.stop()


@pytest.mark.gpu
def test_a_swap_on_cuda_gives_the_old_versions_memory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA memory: one version before, two at the peak (built beside), one after the swap."""
    import asyncio

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from torchshelf.serving.follow import parse_selection
    from torchshelf.serving.live import FollowSpec, prepare_following
    from torchshelf.serving.options import ServeOptions
    from torchshelf.serving.registry import ModelRegistry

    store = Store(tmp_path / "store")
    monkeypatch.setenv("TORCHSHELF_HOME", str(store.root))
    pad = 1 << 24  # 64 MiB per version
    save_scaled(store, 1.0, pad=pad, labels={"stage": "production"})
    b = save_scaled(store, 2.0, pad=pad)
    served, following = prepare_following(
        FollowSpec(parse_selection("clf", ["stage=production"])), "cuda"
    )
    registry = ModelRegistry([served], ServeOptions())

    async def main() -> tuple[int, int, int, Any]:
        loop = asyncio.get_running_loop()
        await registry.start()
        following.attach(registry, loop)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        store.set_labels(f"clf:{b}", {"stage": "production"})
        assert await loop.run_in_executor(None, following.follower.check) == ["primary:ok"]
        await loop.run_in_executor(registry._loader, lambda: None)  # the release has run
        peak, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        res = await registry.infer("clf", "predict", {"inputs": torch.ones(1, 4)}, 1)
        registry.close()
        return before, peak, after, res

    before, peak, after, res = asyncio.run(main())
    print(
        f"CUDA memory_allocated: before {before >> 20} MiB, peak during the swap "
        f"{peak >> 20} MiB, after {after >> 20} MiB"
    )
    assert peak >= before + pad * 4  # the new version was built beside the old one
    assert after < before + pad  # and the old one's memory went back
    assert res.version == b and res.value.tolist() == [[8.0] * 4]
