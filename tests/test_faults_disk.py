"""Full disks (issue 15): a store on a 48 MiB tmpfs, writes larger than the free space.

Each write must fail with one `StoreFull` line naming the store and the space needed (exit 1,
no traceback), leave no partial version and no staging leftovers, and leave the store usable:
list, get, load and a small save all work afterwards. Label changes and deletes on a full disk
must not corrupt a manifest, and a server whose log file's disk is full keeps serving.

Mounting a tmpfs needs root; without it every test here skips and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env, run_shelf

BIG_MODEL = """
import torch

class Big(torch.nn.Module):  # 4000 x 4000 float32: 61 MiB, more than the whole tmpfs
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4000, 4000))

class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.lin(x)
"""


@pytest.fixture
def full_store(small_fs: Path, tmp_path: Path) -> Path:
    """A store on the small filesystem holding one small version; models.py beside the test."""
    (tmp_path / "models.py").write_text(BIG_MODEL)
    store = small_fs / "store"
    proc = shelf(store, tmp_path, "save", "small", "models.py:Small", "--label", "stage=dev")
    assert proc.returncode == 0, proc.stderr
    return store


def shelf(store: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_shelf(*args, store=store, cwd=cwd, env=child_env(store, **env))


def fill(fs: Path) -> Path:
    """Fill the filesystem to the last byte with one file; returns it (delete it to free)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):  # then the tail a larger write could not take
            block = b"\0" * size
            try:
                while os.write(fd, block):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    assert shutil.disk_usage(fs).free < 4096
    return filler


def assert_one_clean_error(proc: subprocess.CompletedProcess[str], store: Path, what: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: store {store} is full: {what}"), lines[0]
    assert "free" in lines[0]


def assert_nothing_partial(store: Path) -> None:
    """Only complete versions in models/, nothing staged, and every version verifies."""
    assert not any((store / ".tmp").iterdir()) if (store / ".tmp").exists() else True
    for vdir in (store / "models").glob("*/*"):
        assert (vdir / "manifest.json").exists(), vdir
    strays = [p for p in (store / "models").rglob(".*.tmp")]
    assert strays == []


def assert_usable(store: Path, cwd: Path) -> None:
    """list, get, load and a small save all work."""
    listed = shelf(store, cwd, "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    tags = [row["tag"] for row in json.loads(listed.stdout)]
    assert tags and all(t.startswith("small:") for t in tags), tags
    assert shelf(store, cwd, "get", "small:latest").returncode == 0
    load = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, torch, torchshelf; sys.path.insert(0, '.');"
            "m = torchshelf.load_model('small:latest');"
            "print(m(torch.ones(1, 8)).shape)",
        ],
        env=child_env(store),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert load.returncode == 0 and "[1, 4]" in load.stdout, load.stderr
    again = shelf(store, cwd, "save", "small", "models.py:Small")
    assert again.returncode == 0, again.stderr
    verify = shelf(store, cwd, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_cli_save_larger_than_the_disk_fails_cleanly(full_store: Path, tmp_path: Path) -> None:
    proc = shelf(full_store, tmp_path, "save", "big", "models.py:Big")
    assert_one_clean_error(proc, full_store, "saving big needs 61.0 MiB")
    assert not (full_store / "models" / "big").exists()
    assert_nothing_partial(full_store)
    assert_usable(full_store, tmp_path)


def test_a_save_that_fills_the_disk_midway_cleans_up_at_once(
    full_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The up-front check skipped, so the kernel's ENOSPC arrives in the middle of the write."""
    import torch

    import torchshelf
    from torchshelf import lifecycle

    monkeypatch.setattr(lifecycle, "ensure_free", lambda *a, **k: None)
    before = shutil.disk_usage(full_store).free
    with pytest.raises(torchshelf.StoreFull) as info:
        torchshelf.save_model("big", torch.nn.Linear(4000, 4000), store=full_store)
    err = info.value
    assert err.root == str(full_store) and str(full_store) in str(err)
    assert err.free >= before - 64 * 1024  # measured after the staging directory was removed
    assert_nothing_partial(full_store)
    assert_usable(full_store, tmp_path)


def test_import_of_a_large_archive_fails_cleanly(full_store: Path, tmp_path: Path) -> None:
    roomy = tmp_path / "roomy"
    assert shelf(roomy, tmp_path, "save", "big", "models.py:Big").returncode == 0
    archive = tmp_path / "big.tar"
    assert shelf(roomy, tmp_path, "export", "big:latest", str(archive)).returncode == 0
    proc = shelf(full_store, tmp_path, "import", str(archive))
    assert_one_clean_error(proc, full_store, "importing big:")
    assert "61.0 MiB" in proc.stderr
    assert not (full_store / "models" / "big").exists()
    assert_nothing_partial(full_store)
    assert_usable(full_store, tmp_path)


def test_import_that_fills_the_disk_midway_cleans_up_at_once(
    full_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import torchshelf
    from torchshelf import archive
    from torchshelf.store import Store

    roomy = Store(tmp_path / "roomy")
    tag = torchshelf.save_model("big", torch.nn.Linear(4000, 4000), store=roomy)
    path = archive.export_model(roomy, tag, tmp_path / "big.tar")
    monkeypatch.setattr(archive, "ensure_free", lambda *a, **k: None)
    with pytest.raises(torchshelf.StoreFull, match=f"store {full_store} is full: importing"):
        archive.import_model(Store(full_store), path)
    assert_nothing_partial(full_store)
    assert_usable(full_store, tmp_path)


def test_label_and_delete_on_a_full_disk_keep_every_manifest_intact(
    full_store: Path, small_fs: Path, tmp_path: Path
) -> None:
    assert shelf(full_store, tmp_path, "save", "small", "models.py:Small").returncode == 0
    listed = json.loads(shelf(full_store, tmp_path, "list", "--output", "json").stdout)
    newest, oldest = listed[0]["tag"], listed[1]["tag"]
    manifests = {p: p.read_bytes() for p in (full_store / "models").rglob("manifest.json")}
    filler = fill(small_fs)
    proc = shelf(full_store, tmp_path, "label", oldest, "stage=production", "owner=" + "x" * 5000)
    assert_one_clean_error(proc, full_store, f"labelling {oldest}")
    assert {p: p.read_bytes() for p in manifests} == manifests  # untouched, byte for byte
    assert_nothing_partial(full_store)
    deleted = shelf(full_store, tmp_path, "delete", newest)
    assert deleted.returncode == 0, deleted.stderr  # a rename: it needs no free space
    assert shelf(full_store, tmp_path, "verify").returncode == 0
    filler.unlink()
    gc = shelf(full_store, tmp_path, "gc")
    assert gc.returncode == 0, gc.stderr
    assert_nothing_partial(full_store)
    assert not any((full_store / ".trash").iterdir())
    labelled = shelf(full_store, tmp_path, "label", oldest, "stage=production")
    assert labelled.returncode == 0, labelled.stderr
    assert_usable(full_store, tmp_path)


def test_a_server_whose_log_disk_is_full_keeps_serving(
    full_store: Path, small_fs: Path, tmp_path: Path
) -> None:
    """Access log and warnings go to a file on the full disk; every request is still answered."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(small_fs / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torchshelf", "serve", "small:latest", "--port", str(port)]
            + ["--access-log", "--threads", "1"],
            env=child_env(full_store),
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )
    try:
        _wait_ready(url, proc)
        filler = fill(small_fs)
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(200):
                if i % 10 == 9:  # a 4xx writes a log line too
                    assert client.post("/predict", content=b"{not json").status_code == 400
                    continue
                r = client.post("/predict", json={"inputs": [[1.0] * 8]})
                assert r.status_code == 200, r.text
                assert len(r.json()["outputs"][0]) == 4
            assert client.get("/metrics").status_code == 200
        assert proc.poll() is None
        filler.unlink()
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited {proc.returncode}"
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not become ready")
