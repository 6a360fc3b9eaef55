"""Many processes saving, reading and deleting one model name never see or leave a broken store."""

from __future__ import annotations

import collections
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
import workers
import zoo
from conftest import child_env

import torchshelf

FORK = multiprocessing.get_context("fork")  # real processes that start with torch already imported


@pytest.mark.slow
def test_four_processes_saving_one_name_get_four_distinct_versions(store_home: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torchshelf", "save", "same", "zoo:make_mlp"],
            env=child_env(store_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    tags = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        tags.append(out.strip())
    assert len(set(tags)) == 4
    assert sorted(str(m.tag) for m in torchshelf.models.list("same")) == sorted(tags)
    results = torchshelf.models.verify(["same"])
    assert len(results) == 4 and all(error is None for _, error in results)


def test_an_auto_version_taken_meanwhile_is_replaced_by_a_fresh_one(
    store_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    api = importlib.import_module("torchshelf.lifecycle")
    monkeypatch.setattr(api, "new_version", lambda: "20260101T000000000000Z-000000")
    first = torchshelf.save_model("m", zoo.MLP())
    second = torchshelf.save_model("m", zoo.MLP())
    assert first.version == "20260101T000000000000Z-000000"
    assert second.version != first.version
    assert {m.tag for m in torchshelf.models.list("m")} == {first, second}
    with pytest.raises(torchshelf.AlreadyExists):  # an explicit version is never replaced
        torchshelf.save_model("m", zoo.MLP(), version=first.version)


@pytest.mark.slow
def test_eight_savers_with_readers_and_a_deleter_lose_and_corrupt_nothing(tmp_path: Path) -> None:
    savers, per_saver = 8, 25
    store = tmp_path / "store"
    go, stop = tmp_path / "go", tmp_path / "stop"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        FORK.Process(target=workers.saver, args=(store, i, per_saver, logs / f"saver{i}", go))
        for i in range(savers)
    ]
    readers = [
        FORK.Process(target=workers.reader, args=(store, logs / f"reader{i}", go, stop))
        for i in range(3)
    ]
    deleter = FORK.Process(target=workers.deleter, args=(store, logs / "deleter", go, stop, 20, 40))
    labeler = FORK.Process(target=workers.labeler, args=(store, logs / "labeler", go, stop))
    for p in [*procs, *readers, deleter, labeler]:
        p.start()
    started = time.monotonic()
    go.touch()
    # CLI readers too, as a CI job would run them, while the savers work.
    cli_runs = collections.Counter()
    while any(p.is_alive() for p in procs):
        for args in (["list", "conc", "-o", "json"], ["get", "conc", "-o", "json"]):
            proc = subprocess.run(
                [sys.executable, "-m", "torchshelf", *args],
                env=child_env(store),
                capture_output=True,
                text=True,
                timeout=60,
            )
            ok = proc.returncode == 0 or (proc.returncode == 1 and "not found" in proc.stderr)
            assert ok, proc.stderr
            cli_runs[proc.returncode] += 1
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"a saver failed with exit code {p.exitcode}"
    stop.touch()
    for p in [*readers, deleter, labeler]:
        p.join(timeout=60)
        assert p.exitcode == 0
    elapsed = time.monotonic() - started

    saved = [e["tag"] for i in range(savers) for e in workers.read_log(logs / f"saver{i}")]
    deleted = [e["deleted"] for e in workers.read_log(logs / "deleter") if "deleted" in e]
    assert len(saved) == savers * per_saver
    assert len(set(saved)) == len(saved), "two saves got the same version"
    remaining = {str(m.tag) for m in torchshelf.models.list("conc", store=store)}
    assert set(deleted) <= set(saved)
    assert remaining == set(saved) - set(deleted), (
        "a version was lost (or one appeared from nowhere)"
    )
    assert not set(deleted) & remaining

    results = torchshelf.models.verify(["conc"], store=store)
    assert len(results) == len(remaining)
    assert [str(t) for t, e in results if e is not None] == []
    newest = max(
        torchshelf.models.list("conc", store=store), key=lambda m: m.manifest.creation_time
    )
    assert torchshelf.get("conc", store=store).tag == newest.tag
    # Each reader saw only valid results or a clean NotFound.
    # `latest` always exists once the first save is in (the deleter spares the newest 20), so a
    # NotFound for it after that would be a reader seeing the store half-way through a change.
    first_saved = min(e["t"] for i in range(savers) for e in workers.read_log(logs / f"saver{i}"))
    outcomes = collections.Counter()
    for i in range(3):
        for event in workers.read_log(logs / f"reader{i}"):
            outcomes[f"{event['op']} {event['result']}"] += 1
            assert event["result"] != "error", event.get("trace") or event
            if event["result"] == "notfound" and event["op"] in ("get", "latest"):
                assert event["started"] < first_saved, f"spurious NotFound: {event}"
    assert sum(n for k, n in outcomes.items() if k.endswith(" ok")) > 50, outcomes
    assert all(e.get("result") != "error" for e in workers.read_log(logs / "deleter"))
    relabels = workers.read_log(logs / "labeler")
    assert [e for e in relabels if e["result"] == "error"] == []
    assert not list((store / ".tmp").glob("*")) and not list((store / ".trash").glob("*"))
    print(
        f"\nconcurrency: {len(saved)} versions saved, {len(deleted)} deleted on purpose, "
        f"{len(remaining)} verified; reader ops {dict(outcomes)}; {len(relabels)} relabels; "
        f"CLI runs {dict(cli_runs)}; "
        f"{elapsed:.1f} s"
    )


def test_a_version_deleted_while_it_loads_is_not_found_not_corrupt(
    store_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic version of a race the concurrent test can hit: resolve, then delete, then
    the file check finds nothing. That is a clean NotFound, never an IntegrityError."""
    from torchshelf.store import Store

    tag = torchshelf.save_model("m", zoo.MLP())
    real_check = Store.check

    def delete_first(self: Store, manifest: object, **kwargs: object) -> None:
        torchshelf.models.delete(tag)
        real_check(self, manifest, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "check", delete_first)
    with pytest.raises(torchshelf.NotFound, match="deleted while loading"):
        torchshelf.load_model(tag)
