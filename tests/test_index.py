"""The listing index is a cache, never the truth: rebuilt when missing or damaged, and never
wrong after another process saves, deletes or relabels, or after a writer is killed mid-change.
Version prefixes resolve as in git."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zoo
from conftest import child_env, run_shelf

import torchshelf
from torchshelf.store import Store

# A child that adds a version of NAME by copying SRC's files and committing them through the
# store's real commit path (no torch: the child starts in a fraction of a second).
# argv: root name src_version new_version [kill_on]; kill_on ("json" or "gen") SIGKILLs the
# child as the commit writes that index file: the version is in place, the index not updated.
CLONE = r"""
import dataclasses, os, shutil, signal, sys
from pathlib import Path
import torchshelf.index as index
from torchshelf.store import Store, now_iso

root, name, src, new = sys.argv[1:5]
kill_on = sys.argv[5] if len(sys.argv) > 5 else None
if kill_on:
    real = index._write_atomic
    def dying(path, data, *, durable=False):
        if path.suffix == "." + kill_on and not data.startswith(index.DIRTY):
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, data, durable=durable)
    index._write_atomic = dying
st = Store(Path(root))
m = st.read_manifest(name, src)
staging = st.stage()
for rel in m.files:
    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(st.version_dir(name, src) / rel, staging / rel)
st.commit(staging, dataclasses.replace(m, version=new, creation_time=now_iso()), auto_version=False)
"""


def clone(root: Path, name: str, src: str, new: str, kill_on: str | None = None) -> int:
    args = [sys.executable, "-c", CLONE, str(root), name, src, new, *([kill_on] if kill_on else [])]
    proc = subprocess.run(args, env=child_env(root), capture_output=True, text=True, timeout=60)
    assert kill_on or proc.returncode == 0, proc.stderr
    return proc.returncode


def listed(root: Path, name: str | None = None) -> list[str]:
    """What a fresh `Store` lists (as a new `shelf list` process would see it)."""
    return [m.tag for m in Store(root).list(name)]


def scanned(root: Path, name: str) -> list[str]:
    """The truth: every manifest read, newest first."""
    rows = [r for r in Store(root)._scan_rows(name).values() if r is not None]
    return [r.tag for r in sorted(rows, key=lambda r: (r.creation_time, r.version), reverse=True)]


@pytest.fixture
def three(store_home: Path) -> list[str]:
    """Three versions of `m`, oldest first."""
    return [torchshelf.save_model("m", zoo.MLP(), version=f"v{i}").version for i in (1, 2, 3)]


def test_list_reads_the_index_and_rebuilds_it_when_deleted(
    store_home: Path, three: list[str]
) -> None:
    assert listed(store_home) == ["m:v3", "m:v2", "m:v1"]
    index = store_home / ".index"
    assert (index / "m.json").is_file() and (index / "m.gen").is_file()
    shutil.rmtree(index)
    assert listed(store_home) == ["m:v3", "m:v2", "m:v1"]
    assert (index / "m.json").is_file(), "the index is rebuilt on the next listing"
    doc = json.loads((index / "m.json").read_text())
    assert [r[0] for r in doc["rows"]] == ["v3", "v2", "v1"]


@pytest.mark.parametrize("damage", ["garbage", "empty", "wrong-gen", "dirty"])
def test_a_damaged_or_lying_index_is_never_believed(
    store_home: Path, three: list[str], damage: str
) -> None:
    listed(store_home)
    path = store_home / ".index" / "m.json"
    doc = json.loads(path.read_text())
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "empty":
        path.write_text("")
    elif damage == "wrong-gen":
        doc["gen"] = "0123456789abcdef"
        doc["rows"] = doc["rows"][:1]
        doc["broken"] = ["v1", "v2"]  # same version set, stale content: only the gen tells
        path.write_text(json.dumps(doc))
    else:  # stale labels, the name marked dirty: what a writer killed mid-relabel leaves
        doc["labels"].append({"stage": "forged"})
        doc["rows"][0][4] = len(doc["labels"]) - 1
        path.write_text(json.dumps(doc))
        (store_home / ".index" / "m.gen").write_text("dirty-" + doc["gen"])
    assert listed(store_home) == ["m:v3", "m:v2", "m:v1"]
    assert all(not m.labels for m in Store(store_home).list("m"))


def test_saves_deletes_and_labels_by_other_processes_show_at_once(
    store_home: Path, three: list[str]
) -> None:
    store = Store(store_home)  # one long-lived reader, its index warm
    assert [m.tag for m in store.list("m")] == ["m:v3", "m:v2", "m:v1"]
    clone(store_home, "m", "v1", "v4")
    assert [m.tag for m in store.list("m")] == ["m:v4", "m:v3", "m:v2", "m:v1"]
    assert store.resolve("m").version == "v4"
    assert run_shelf("delete", "m:v3", "--yes", store=store_home).returncode == 0
    assert [m.tag for m in store.list("m")] == ["m:v4", "m:v2", "m:v1"]
    assert run_shelf("label", "m:v2", "stage=prod", store=store_home).returncode == 0
    assert [m.tag for m in store.list("m", ["stage=prod"])] == ["m:v2"]
    out = run_shelf("list", "--latest", "-o", "tags", store=store_home)
    assert out.stdout.split() == ["m:v4"]


def test_writers_that_bypass_the_index_are_still_seen(store_home: Path, three: list[str]) -> None:
    """An older torchshelf or a hand edit changes the directories without touching the index."""
    listed(store_home)
    shutil.rmtree(store_home / "models" / "m" / "v2")
    assert listed(store_home) == ["m:v3", "m:v1"]
    shutil.copytree(store_home / "models" / "m" / "v1", store_home / "models" / "m" / "v9")
    (store_home / "models" / "m" / "v9" / "manifest.json").write_text("{broken")
    assert listed(store_home) == ["m:v3", "m:v1"], "a broken version is skipped, as before"


@pytest.mark.parametrize("kill_on", ["json", "gen"])
def test_a_writer_killed_mid_update_leaves_a_correct_listing(
    store_home: Path, three: list[str], kill_on: str
) -> None:
    listed(store_home)
    code = clone(store_home, "m", "v1", "v5", kill_on=kill_on)
    assert code == -9, "the child must die by SIGKILL inside the commit"
    assert (store_home / "models" / "m" / "v5").is_dir(), "the version was renamed in"
    assert (store_home / ".index" / "m.gen").read_text().startswith("dirty-")
    assert listed(store_home) == ["m:v5", "m:v3", "m:v2", "m:v1"]
    gen = (store_home / ".index" / "m.gen").read_text()
    assert not gen.startswith("dirty-"), "the first reader repairs the index (lock is free)"
    assert json.loads((store_home / ".index" / "m.json").read_text())["gen"] == gen


def test_a_killed_label_change_is_listed_as_committed(store_home: Path, three: list[str]) -> None:
    listed(store_home)
    code = (
        "import os, signal, torchshelf.index as ix\n"
        "real = ix._write_atomic\n"
        "def dying(path, data, *, durable=False):\n"
        "    if path.suffix == '.json' and not data.startswith(ix.DIRTY):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(path, data, durable=durable)\n"
        "ix._write_atomic = dying\n"
        "import torchshelf\n"
        "torchshelf.models.set_labels('m:v1', {'stage': 'prod'})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(store_home), timeout=60)
    assert proc.returncode == -9
    assert [m.tag for m in Store(store_home).list("m", ["stage=prod"])] == ["m:v1"]


@pytest.mark.slow
def test_listing_during_another_process_saving_and_deleting_is_never_wrong(
    store_home: Path, three: list[str]
) -> None:
    """A child commits v10.. and deletes every other one, logging each after it returns. Every
    listing holds every version committed before it began and not deleted by its end, and
    nothing that was never committed."""
    log = store_home.parent / "writer.log"
    code = (
        CLONE.split("root, name, src, new")[0]
        + "st = Store(Path(sys.argv[1]))\n"
        + "import torchshelf\n"
        + "for i in range(10, 40):\n"
        + "    m = st.read_manifest('m', 'v1'); staging = st.stage()\n"
        + "    for rel in m.files:\n"
        + "        (staging / rel).parent.mkdir(parents=True, exist_ok=True)\n"
        + "        shutil.copy2(st.version_dir('m', 'v1') / rel, staging / rel)\n"
        + "    st.commit(staging, dataclasses.replace(m, version=f'v{i}', creation_time=now_iso()), auto_version=False)\n"
        + "    open(sys.argv[2], 'a').write(f'+v{i}\\n')\n"
        + "    if i % 2:\n"
        + "        st.delete(f'm:v{i}'); open(sys.argv[2], 'a').write(f'-v{i}\\n')\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(store_home), str(log)], env=child_env(store_home)
    )

    def events() -> tuple[set[str], set[str]]:
        lines = log.read_text().split() if log.exists() else []
        return {x[1:] for x in lines if x[0] == "+"}, {x[1:] for x in lines if x[0] == "-"}

    checks = 0
    try:
        while child.poll() is None or checks == 0:
            added_before, _ = events()
            seen = {m.version for m in Store(store_home).list("m")}
            added_after, deleted_after = events()
            deleting = {v for v in added_after if int(v[1:]) % 2} - deleted_after  # <= 1
            must = ({"v1", "v2", "v3"} | added_before) - deleted_after - deleting
            assert must <= seen, f"missing {must - seen}"
            extra = seen - {"v1", "v2", "v3"} - added_after
            assert len(extra) <= 1, f"listed versions never committed: {extra}"  # one in flight
            checks += 1
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0
    assert listed(store_home, "m") == scanned(store_home, "m")
    assert checks > 1


def test_a_unique_version_prefix_resolves_as_in_git(store_home: Path) -> None:
    for version in ("abcd123", "abcd456", "abcx", "abcx9", "v10"):
        torchshelf.save_model("p", zoo.MLP(), version=version)
    assert torchshelf.get("p:abcd1").version == "abcd123"
    assert torchshelf.get("p:abcx").version == "abcx", "an exact match wins over a prefix"
    assert torchshelf.load_model("p:abcd45") is not None
    with pytest.raises(torchshelf.NotFound):
        torchshelf.get("p:v1")  # shorter than 4 characters: never a prefix (v1 is not v10)
    with pytest.raises(torchshelf.AmbiguousTag) as info:
        torchshelf.get("p:abcd")
    assert [str(t) for t in info.value.candidates] == ["p:abcd123", "p:abcd456"]
    assert "p:abcd123" in str(info.value) and "p:abcd456" in str(info.value)
    with pytest.raises(torchshelf.NotFound):
        torchshelf.get("p:zzzz")
    out = run_shelf("get", "p:abcd", store=store_home)
    assert out.returncode == 2 and "ambiguous" in out.stderr and "p:abcd456" in out.stderr
    out = run_shelf("get", "p:abcd4", "-o", "json", store=store_home)
    assert out.returncode == 0 and json.loads(out.stdout)["version"] == "abcd456"


def test_a_store_where_the_index_cannot_be_written_still_lists(
    store_home: Path, three: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only store (or a full disk): the listing scans and says the same."""
    import torchshelf.index as index

    shutil.rmtree(store_home / ".index", ignore_errors=True)

    def refuse(path: Path, data: str, *, durable: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(index, "_write_atomic", refuse)
    assert listed(store_home) == ["m:v3", "m:v2", "m:v1"]
    assert not (store_home / ".index" / "m.json").exists()


def test_a_listing_with_a_valid_index_opens_no_manifest(store_home: Path) -> None:
    """Not a timing: the work done. Resolving the newest version reads exactly one manifest."""
    for i in range(3):
        torchshelf.save_model("w", zoo.MLP(), version=f"v{i}")
    listed(store_home)
    opened: list[str] = []
    real_read = Store.read_manifest

    def spy(self: Store, name: str, version: str):  # type: ignore[no-untyped-def]
        opened.append(version)
        return real_read(self, name, version)

    Store.read_manifest = spy  # type: ignore[method-assign]
    try:
        assert len(Store(store_home).list()) == 3
        assert opened == []
        assert Store(store_home).resolve("w").version == "v2" and opened == ["v2"]
    finally:
        Store.read_manifest = real_read  # type: ignore[method-assign]


def test_gc_removes_index_files_of_gone_names_and_dead_writers(
    store_home: Path, three: list[str]
) -> None:
    torchshelf.save_model("gone", zoo.MLP())
    listed(store_home)
    assert run_shelf("delete", "gone", "--yes", store=store_home).returncode == 0
    index = store_home / ".index"
    (index / ".m.json.999999999.abcd.tmp").write_text("{")  # a writer that died mid-write
    mine = index / f".m.json.{os.getpid()}.abcd.tmp"  # a live writer's: kept
    mine.write_text("{")
    removed = set(Store(store_home).gc().removed)
    assert {".index/gone.json", ".index/gone.gen", ".index/.m.json.999999999.abcd.tmp"} <= removed
    assert mine.exists() and (index / "m.json").exists()
    assert listed(store_home) == ["m:v3", "m:v2", "m:v1"]
