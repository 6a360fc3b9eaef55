"""SIGKILL at any moment of a save, an import or a delete leaves no partial version visible;
`shelf gc` removes what is left, and every complete version still verifies."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import workers
import zoo
from conftest import child_env, run_shelf

import torchshelf

FORK = multiprocessing.get_context("fork")
TRIALS = 20
BIG = {"n": 4, "dim": 4096}  # 4 x 64 MiB float32 = 256 MiB of weights


@pytest.fixture(scope="module")
def big_model() -> zoo.Big:
    return zoo.Big(**BIG)


def _visible_versions(store: Path) -> list[str]:
    """What a reader would see: every version directory under models/, broken or not."""
    return sorted(str(p.relative_to(store / "models")) for p in (store / "models").glob("*/*"))


def _leftovers(store: Path) -> list[str]:
    return sorted(
        str(p.relative_to(store)) for base in (".tmp", ".trash") for p in (store / base).glob("*")
    )


def _run_and_kill(
    target: Callable[..., None],
    args: tuple[Any, ...],
    ready: Path,
    trigger: Callable[[], bool] = lambda: True,
    delay: float = 0.0,
) -> bool:
    """Start `target` in a child; SIGKILL it `delay` s after `trigger()` first holds once it has
    started working. True if it was still running when killed."""
    ready.unlink(missing_ok=True)
    proc = FORK.Process(target=target, args=(*args, ready))
    proc.start()
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0005)
    while proc.is_alive() and not trigger() and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(delay)
    alive = proc.is_alive()
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode in (0, -signal.SIGKILL), f"child exited with {proc.exitcode}"
    return alive and proc.exitcode == -signal.SIGKILL


def _staged_at_least(store: Path, nbytes: int) -> Callable[[], bool]:
    """True once a new staging directory (not an earlier trial's) holds a weights file of at
    least `nbytes`."""
    earlier = set((store / ".tmp").glob("*"))

    def check() -> bool:
        for path in (store / ".tmp").glob("*/weights.safetensors"):
            if path.parent in earlier:
                continue
            try:
                if path.stat().st_size >= nbytes:
                    return True
            except FileNotFoundError:
                pass
        return False

    return check


def _random_point(rng: random.Random, store: Path, total: int) -> dict[str, Any]:
    """A random moment of a write: before any weights, part-way through them (most trials),
    while fsyncing and committing after the last byte, or (sometimes) too late: it completed."""
    phase = rng.random()
    if phase < 0.1:
        return {"delay": rng.uniform(0, 0.02)}
    if phase < 0.8:
        return {"trigger": _staged_at_least(store, int(total * rng.uniform(0, 1)))}
    return {"trigger": _staged_at_least(store, total), "delay": rng.uniform(0, 2.0)}


def _assert_only_complete_versions(store: Path) -> list[str]:
    """Every visible version has a valid manifest and verifies; returns them."""
    visible = _visible_versions(store)
    listed = sorted(str(m.tag).replace(":", "/") for m in torchshelf.models.list(store=store))
    assert visible == listed, f"partial version visible: {sorted(set(visible) - set(listed))}"
    bad = [(str(t), str(e)) for t, e in torchshelf.models.verify(store=store) if e is not None]
    assert bad == [], f"a visible version does not verify: {bad}"
    return visible


def _gc(store: Path) -> tuple[int, int]:
    proc = run_shelf("gc", store=store)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"\((\d+) bytes\) in (\d+) entries", proc.stdout)
    assert match, proc.stdout
    assert _leftovers(store) == [], "gc left leftovers behind"
    return int(match.group(1)), int(match.group(2))


def _timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def _report(
    kind: str, killed: int, leftovers_seen: int, freed: tuple[int, int], complete: int
) -> None:
    # Leftovers of a killed save or import are also collected by the next save or import (its
    # writer is dead), so the final gc frees only what the last trials left.
    print(
        f"\ncrash/{kind}: {TRIALS} trials, {killed} killed mid-operation, {leftovers_seen} left "
        f"leftovers, 0 partial versions visible, {complete} complete versions verified, "
        f"final gc freed {freed[0]} bytes in {freed[1]} entries"
    )


@pytest.mark.slow
def test_sigkill_during_save_leaves_no_partial_version(tmp_path: Path, big_model: zoo.Big) -> None:
    store = tmp_path / "store"
    tag = torchshelf.save_model("big", big_model, store=store)
    total = torchshelf.get(tag, store=store).manifest.files["weights.safetensors"]["size"]
    torchshelf.models.delete("big", store=store)
    rng = random.Random(1234)
    killed = leftovers_seen = 0
    complete = 0
    for _ in range(TRIALS):
        before = set(_leftovers(store))
        killed += _run_and_kill(
            workers.save_big,
            (store, big_model),
            tmp_path / "ready",
            **_random_point(rng, store, total),
        )
        leftovers_seen += bool(set(_leftovers(store)) - before)
        versions = _assert_only_complete_versions(store)
        complete += len(versions)
        for v in versions:  # keep the disk bounded; each was verified above
            torchshelf.models.delete(v.replace("/", ":"), store=store)
    freed = _gc(store)
    assert killed >= TRIALS // 2, f"only {killed} trials were killed mid-save; the timing is off"
    _report("save", killed, leftovers_seen, freed, complete)


@pytest.mark.slow
def test_sigkill_during_import_leaves_no_partial_version(
    tmp_path: Path, big_model: zoo.Big
) -> None:
    source = tmp_path / "source"
    tag = torchshelf.save_model("big", big_model, store=source, version="v1")
    archive = torchshelf.models.export_model(tag, tmp_path / "big.shelf", store=source)
    shutil.rmtree(source)
    store = tmp_path / "store"
    total = torchshelf.models.import_model(archive, store=store).manifest.files[
        "weights.safetensors"
    ]["size"]
    rng = random.Random(5678)
    killed = leftovers_seen = complete = 0
    for _ in range(TRIALS):
        torchshelf.models.delete("big", store=store) if _visible_versions(store) else None
        before = set(_leftovers(store))
        killed += _run_and_kill(
            workers.import_big,
            (store, archive),
            tmp_path / "ready",
            **_random_point(rng, store, total),
        )
        leftovers_seen += bool(set(_leftovers(store)) - before)
        complete += len(_assert_only_complete_versions(store))
    freed = _gc(store)
    assert killed >= TRIALS // 2, f"only {killed} trials were killed mid-import"
    _report("import", killed, leftovers_seen, freed, complete)


def _clone_version(store: Path, template: Path, version: str) -> str:
    """A full copy of a stored version under a new version name (cheaper than a durable save)."""
    import json

    staging = store / "clone-staging"
    shutil.copytree(template, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    data = json.dumps(manifest).encode()
    (staging / "manifest.json").write_bytes(data)
    (staging / ".manifest.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    (staging / ".stat-cache.json").unlink(missing_ok=True)
    os.rename(staging, store / "models" / "big" / version)
    return f"big:{version}"


@pytest.mark.slow
def test_sigkill_during_delete_leaves_no_partial_version(
    tmp_path: Path, big_model: zoo.Big
) -> None:
    store = tmp_path / "store"
    objects = {f"obj{i}": {"i": i} for i in range(100)}  # many files: a longer delete to interrupt
    tag = torchshelf.save_model(
        "big", big_model, store=store, version="keep", custom_objects=objects
    )
    template = torchshelf.get(tag, store=store).path
    victim = _clone_version(store, template, "probe")
    assert torchshelf.models.verify([victim], store=store)[0][1] is None  # a faithful clone
    duration = _timed(lambda: torchshelf.models.delete(victim, store=store))
    rng = random.Random(91011)
    killed = leftovers_seen = complete = 0
    for trial in range(TRIALS):
        victim = _clone_version(store, template, f"t{trial}")
        before = set(_leftovers(store))
        moved = store / "models" / "big" / f"t{trial}"
        point: dict[str, Any] = (
            {"delay": rng.uniform(0, duration)}
            if rng.random() < 0.3  # any moment
            else {
                "trigger": lambda moved=moved: not moved.exists(),
                "delay": rng.uniform(0, duration / 2),
            }  # mid-rmtree
        )
        killed += _run_and_kill(workers.delete_big, (store, victim), tmp_path / "ready", **point)
        leftovers_seen += bool(set(_leftovers(store)) - before)
        # The victim is either whole (and verifies) or gone; nothing in between is visible.
        visible = _visible_versions(store)
        listed = sorted(str(m.tag).replace(":", "/") for m in torchshelf.models.list(store=store))
        assert visible == listed and set(visible) <= {"big/keep", f"big/t{trial}"}
        if f"big/t{trial}" in visible:
            assert torchshelf.models.verify([victim], store=store)[0][1] is None
            complete += 1
            torchshelf.models.delete(victim, store=store)
    complete += len(_assert_only_complete_versions(store))
    freed = _gc(store)
    assert _visible_versions(store) == ["big/keep"]
    _report("delete", killed, leftovers_seen, freed, complete)


def test_a_cli_save_killed_part_way_leaves_no_visible_version(tmp_path: Path) -> None:
    """The issue-2 check with the real CLI: kill `shelf save` once its weights file is growing."""
    store = tmp_path / "store"
    script = tmp_path / "bigmodel.py"
    script.write_text(f"import zoo\nmodel = zoo.Big(n={BIG['n']}, dim={BIG['dim']})\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchshelf", "save", "big", f"{script}:model"],
        env=child_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            staged = list((store / ".tmp").glob("*/weights.safetensors"))
            if staged and staged[0].stat().st_size > 0:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the save finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _visible_versions(store) == []
    assert torchshelf.models.list(store=store) == []
    assert run_shelf("list", "-o", "tags", store=store).stdout == ""
    assert _leftovers(store), "expected the killed save's staging directory"
    freed, entries = _gc(store)
    assert entries == 1 and freed > 0
