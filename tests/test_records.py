"""One immutable record type: frozen manifests with `FileRecord`s, `ModelInfo` for local and
remote alike, and one `ModelStore` protocol that `Store` and `Remote` both follow."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import zoo
from conftest import run_shelf

import torchshelf
from torchshelf.manifest import FileRecord, Manifest
from torchshelf.model import ModelInfo
from torchshelf.records import ModelStore
from torchshelf.remote import Remote
from torchshelf.store import Store


def test_manifests_are_frozen_all_the_way_to_their_mappings(store_home: Path) -> None:
    ref = torchshelf.save_model("f", zoo.MLP(), labels={"stage": "dev"})
    m = torchshelf.get(ref).manifest
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.version = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.labels["stage"] = "prod"  # type: ignore[index]
    with pytest.raises(TypeError):
        m.files["weights.safetensors"] = FileRecord("0" * 64, 1)  # type: ignore[index]
    rec = m.files["weights.safetensors"]
    assert isinstance(rec, FileRecord) and rec["sha256"] == rec.sha256 and rec.size > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.size = 0  # type: ignore[misc]
    changed = torchshelf.models.set_labels(ref, {"stage": "prod"}).manifest
    assert m.labels == {"stage": "dev"}, "a manifest already handed out never changes"
    assert changed.labels == {"stage": "prod"} and changed is not m


def test_a_manifest_copies_what_it_is_built_from() -> None:
    labels = {"a": "1"}
    meta = {"nested": {"x": 1}}
    files = {"model.ts": {"sha256": "0" * 64, "size": 3}}
    m = Manifest("n", "v", "2026-01-01T00:00:00+00:00", "torchscript", "2", None, files,
                 labels=labels, metadata=meta)  # fmt: skip
    labels["a"] = "2"
    meta["nested"]["x"] = 2
    assert m.labels == {"a": "1"} and m.metadata == {"nested": {"x": 1}}
    assert json.loads(m.to_json())["files"] == {"model.ts": {"sha256": "0" * 64, "size": 3}}
    again = dataclasses.replace(m, labels={"b": "2"})
    assert again.labels == {"b": "2"} and again.files == m.files


def test_shelf_get_json_is_exactly_the_model_info_record(store_home: Path) -> None:
    ref = torchshelf.save_model("g", zoo.MLP(), labels={"k": "v"}, metadata={"acc": 0.9})
    out = run_shelf("get", str(ref), "--output", "json", store=store_home)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    info = Store(store_home).get(str(ref))
    assert printed == json.loads(json.dumps(info.to_dict()))
    assert printed == json.loads(json.dumps(torchshelf.get(ref).info.to_dict()))
    assert set(printed) == {f.name for f in dataclasses.fields(ModelInfo)}
    listed = json.loads(run_shelf("list", "-o", "json", store=store_home).stdout)
    assert listed == [printed]


@pytest.mark.parametrize("cls", [Store, Remote])
def test_store_and_remote_follow_one_protocol_with_the_same_option_names(cls: type) -> None:
    for name, member in inspect.getmembers(ModelStore, inspect.isfunction):
        if name.startswith("_"):
            continue
        want = [(p.name, p.kind) for p in inspect.signature(member).parameters.values()]
        got = [(p.name, p.kind) for p in inspect.signature(getattr(cls, name)).parameters.values()]
        if name == "gc":  # Remote.gc has an extra optional age
            got = got[: len(want)]
        assert got == want, f"{cls.__name__}.{name}"


def test_labels_are_checked_by_the_one_rule(store_home: Path) -> None:
    ref = torchshelf.save_model("l", zoo.MLP())
    with pytest.raises(torchshelf.UsageError, match="keys and values are strings"):
        Store(store_home).set_labels(str(ref), {"k": 1})  # type: ignore[dict-item]
    assert torchshelf.get(ref).labels == {}
