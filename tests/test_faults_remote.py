"""The remote dies, stalls or crawls mid-transfer (issue 15); and a pull into a full disk.

moto runs in its own process; a TCP proxy process stands in front of it (tests/tcp_proxy.py).
Killing moto loses its data, so the tests that need the data to survive kill the proxy: every
connection drops at once and nothing answers on the port until it is started again, while the
objects moto already stored stay, as with a real S3 endpoint that goes away and comes back.
The full figures (10 + 10 kills of a 256 MiB version at random points) come from
benchmarks/remote_faults.py; these tests are the small, fast version of the same properties.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

import s3_processes as sp  # noqa: E402
from conftest import child_env  # noqa: E402
from test_remote import make_version  # noqa: E402

from torchshelf import RemoteError, StoreFull  # noqa: E402
from torchshelf import remote as remote_mod  # noqa: E402
from torchshelf.remote import Remote  # noqa: E402
from torchshelf.store import Store  # noqa: E402

MIB = 1 << 20
BOUND_S = 120  # a transfer still running after this long counts as a hang


@pytest.fixture(scope="module")
def moto_proc() -> Iterator[sp.Process]:
    saved = {k: os.environ.get(k) for k in sp.AWS_ENV}
    os.environ.update(sp.AWS_ENV)
    server = sp.moto().start()
    yield server
    server.kill()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(moto_proc: sp.Process) -> str:
    name = f"faults-{secrets.token_hex(6)}"
    sp.create_bucket(f"http://127.0.0.1:{moto_proc.port}", name)
    return name


@pytest.fixture
def link(moto_proc: sp.Process) -> Iterator[sp.Process]:
    """A proxy in front of moto: the network path that the tests cut."""
    proxy = sp.proxy(moto_proc.port).start()
    yield proxy
    proxy.kill()


def s3_objects(moto_proc: sp.Process, bucket: str) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_proc.port}")
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}


def two_file_version(store: Store, name: str = "m") -> None:
    make_version(
        store,
        name,
        "v1",
        {"weights.safetensors": os.urandom(6 * MIB), "structure.pkl": os.urandom(6 * MIB)},
    )


def run_bounded(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """Run `fn` in a thread; fail the test if it is still running after BOUND_S."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"still running after {BOUND_S} s: no timeout fired"
    return out.get("value"), out.get("error")


def kill_after(proc: sp.Process, nbytes: int) -> Callable[[int], None]:
    """A progress callback that SIGKILLs `proc` once `nbytes` have moved."""
    moved = [0]

    def progress(n: int) -> None:
        moved[0] += n
        if moved[0] >= nbytes:
            proc.kill()

    return progress


def test_push_cut_midway_fails_with_remote_error_and_resumes_reusing_uploaded_files(
    tmp_path: Path, moto_proc: sp.Process, bucket: str, link: sp.Process,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(remote_mod, "FILES_AT_ONCE", 1)  # files one after another: a cut between
    store = Store(tmp_path / "a")
    two_file_version(store)
    remote = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{link.port}")
    _, err = run_bounded(lambda: remote.push(store, "m:v1", progress=kill_after(link, 6 * MIB)))
    assert isinstance(err, RemoteError), err
    assert "run the same command again" in str(err)
    before = s3_objects(moto_proc, bucket)
    assert not any(k.endswith("manifest.json") for k in before)  # nothing visible
    assert (
        Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{moto_proc.port}").list() == []
    )
    uploaded = {k: v for k, v in before.items() if k.endswith((".safetensors", ".pkl"))}
    assert len(uploaded) == 1  # the first file made it before the cut
    link.start()  # the endpoint comes back
    again = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{link.port}")
    assert again.push(store, "m:v1").status == "pushed"
    after = s3_objects(moto_proc, bucket)
    for key, stamp in uploaded.items():
        assert after[key] == stamp  # reused, not uploaded again
    assert [str(m.tag) for m in again.list()] == ["m:v1"]


def test_push_to_a_killed_server_fails_in_bounded_time_then_completes_after_restart(
    tmp_path: Path,
) -> None:
    server = sp.moto().start()
    try:
        name = f"faults-{secrets.token_hex(6)}"
        endpoint = f"http://127.0.0.1:{server.port}"
        sp.create_bucket(endpoint, name)
        store = Store(tmp_path / "a")
        two_file_version(store)
        remote = Remote(f"s3://{name}/t", endpoint_url=endpoint)
        _, err = run_bounded(lambda: remote.push(store, "m:v1", progress=kill_after(server, 1)))
        assert isinstance(err, RemoteError), err
        server.start()  # moto keeps nothing in memory across a kill: a new, empty server
        sp.create_bucket(endpoint, name)
        assert remote.push(store, "m:v1").status == "pushed"
        assert [str(m.tag) for m in remote.list()] == ["m:v1"]
    finally:
        server.kill()


def test_pull_cut_midway_leaves_nothing_and_the_same_pull_then_completes(
    tmp_path: Path, moto_proc: sp.Process, bucket: str, link: sp.Process,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # 256 KiB ranged GETs, 6 in flight per file: most of the 12 MiB is still unfetched at the cut
    monkeypatch.setattr(remote_mod, "RANGE_CHUNK", 256 * 1024)
    direct = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{moto_proc.port}")
    two_file_version(Store(tmp_path / "a"))
    direct.push(Store(tmp_path / "a"), "m:v1")
    target = Store(tmp_path / "b")
    remote = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{link.port}")
    _, err = run_bounded(lambda: remote.pull(target, "m:v1", progress=kill_after(link, MIB)))
    assert isinstance(err, RemoteError), err
    assert target.list() == []
    assert list((target.root / ".tmp").iterdir()) == []  # staging removed at once
    link.start()
    assert remote.pull(target, "m:v1").status == "pulled"
    assert [str(m.tag) for m in target.list()] == ["m:v1"]
    assert all(err is None for _, err in target.verify())


def test_a_stalled_link_trips_the_stall_timeout_for_push_and_pull(
    tmp_path: Path, moto_proc: sp.Process, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy forwards 1 MiB, then holds every socket open and forwards nothing."""
    monkeypatch.setattr(remote_mod, "RANGE_CHUNK", MIB)
    store = Store(tmp_path / "a")
    two_file_version(store)
    proxy = sp.proxy(moto_proc.port, stall_after=MIB).start()
    try:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        remote = Remote(f"s3://{bucket}/t", endpoint_url=endpoint, stall_timeout=2)
        _, err = run_bounded(lambda: remote.push(store, "m:v1"))
        assert isinstance(err, RemoteError) and "stalled" in str(err), err
    finally:
        proxy.kill()
    direct = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{moto_proc.port}")
    direct.push(store, "m:v1")
    proxy = sp.proxy(moto_proc.port, stall_after=4096).start()  # requests pass, bodies stall
    try:
        remote = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{proxy.port}")
        remote.stall_timeout = 2
        target = Store(tmp_path / "b")
        _, err = run_bounded(lambda: remote.pull(target, "m:v1"))
        assert isinstance(err, RemoteError), err
        assert target.list() == []
    finally:
        proxy.kill()


def test_a_slow_link_is_slow_but_correct(
    tmp_path: Path, moto_proc: sp.Process, bucket: str
) -> None:
    """20 ms per 64 KiB chunk each way: far below every timeout, so nothing may fire."""
    store = Store(tmp_path / "a")
    make_version(store, "m", "v1", {"weights.safetensors": os.urandom(MIB)})
    proxy = sp.proxy(moto_proc.port, delay_ms=20).start()
    try:
        remote = Remote(f"s3://{bucket}/t", endpoint_url=f"http://127.0.0.1:{proxy.port}")
        assert remote.push(store, "m:v1").status == "pushed"
        target = Store(tmp_path / "b")
        assert remote.pull(target, "m:v1").status == "pulled"
        assert all(err is None for _, err in target.verify())
    finally:
        proxy.kill()


def test_cli_against_a_dead_endpoint_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    store = Store(tmp_path / "a")
    make_version(store, "m", "v1", {"weights.safetensors": b"x" * 1000})
    env = child_env(
        store.root,
        **sp.AWS_ENV,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{sp.free_port()}",  # nothing listens there
        TORCHSHELF_REMOTE="s3://faults-dead/t",
    )
    for args in (["push", "m:v1"], ["pull", "m:v1"]):
        proc = subprocess.run(
            [sys.executable, "-m", "torchshelf", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=BOUND_S,
        )
        assert proc.returncode == 1, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: s3://faults-dead/t: cannot reach")
        assert "Traceback" not in proc.stderr


def test_pull_larger_than_the_local_disk_fails_cleanly(
    tmp_path: Path,
    small_fs: Path,
    moto_proc: sp.Process,
    bucket: str,
) -> None:
    endpoint = f"http://127.0.0.1:{moto_proc.port}"
    make_version(Store(tmp_path / "a"), "big", "v1", {"weights.safetensors": os.urandom(60 * MIB)})
    Remote(f"s3://{bucket}/t", endpoint_url=endpoint).push(Store(tmp_path / "a"), "big:v1")
    target = small_fs / "store"
    make_version(Store(target), "small", "v1", {"weights.safetensors": b"y" * 100})
    env = child_env(target, **sp.AWS_ENV, AWS_ENDPOINT_URL=endpoint)
    proc = subprocess.run(
        [sys.executable, "-m", "torchshelf", "pull", "big:v1", "--remote", f"s3://{bucket}/t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=BOUND_S,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: store {target} is full: pulling big:v1")
    assert "60.0 MiB" in lines[0]
    listed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "torchshelf", "list", "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=BOUND_S,
        ).stdout
    )
    assert [row["tag"] for row in listed] == ["small:v1"]
    # Mid-write: the up-front check skipped, so ENOSPC arrives while the file is written.
    remote = Remote(f"s3://{bucket}/t", endpoint_url=endpoint)
    original = remote_mod.ensure_free
    remote_mod.ensure_free = lambda *a, **k: None  # type: ignore[assignment]
    try:
        with pytest.raises(StoreFull, match=f"store {target} is full: pulling big:v1"):
            remote.pull(Store(target), "big:v1")
    finally:
        remote_mod.ensure_free = original
    assert [str(m.tag) for m in Store(target).list()] == ["small:v1"]
    assert list((target / ".tmp").iterdir()) == []
