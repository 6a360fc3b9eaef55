"""A changed, truncated or missing file is caught by `verify` and by `load_model`, naming it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import zoo
from conftest import Shelf

import torchshelf
from torchshelf import manifest as manifest_mod


def _save_everything(name: str = "mlp") -> torchshelf.Model:
    """A version with every kind of file: weights, structure, and each kind of custom object."""
    tag = torchshelf.save_model(
        name,
        zoo.MLP(),
        custom_objects={"cfg": {"a": 1}, "mean": torch.ones(3), "blob": b"\x00\x01raw bytes"},
    )
    return torchshelf.get(tag)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(max(0, path.stat().st_size - 1))


def _delete(path: Path) -> None:
    path.unlink()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding `good` (mlp) and then `everything` (mlp, newer), saved once per module."""
    root = tmp_path_factory.mktemp("template") / "store"
    torchshelf.save_model("mlp", zoo.MLP(), store=root)
    torchshelf.save_model(
        "mlp",
        zoo.MLP(),
        store=root,
        custom_objects={"cfg": {"a": 1}, "mean": torch.ones(3), "blob": b"\x00\x01raw bytes"},
    )
    return root


@pytest.fixture
def two_versions(template: Path, store_home: Path) -> tuple[torchshelf.Tag, torchshelf.Model]:
    """A private copy of the template store: (the good tag, the version with every file)."""
    shutil.copytree(template, store_home)
    everything, good = torchshelf.models.list("mlp")
    return good.tag, everything


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flip": _flip,
    "truncate": _truncate,
    "delete": _delete,
}
FILES = [
    "weights.safetensors",
    "structure.pkl",
    "custom_objects/0.json",
    "custom_objects/1.json",
    "custom_objects/1.safetensors",
    "custom_objects/2.pkl",
]


def test_a_saved_version_has_the_files_these_tests_damage(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model],
) -> None:
    assert set(two_versions[1].manifest.files) == set(FILES)


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("rel", FILES)
def test_load_and_verify_refuse_a_damaged_file_naming_it(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model], rel: str, damage: str
) -> None:
    _, ref = two_versions
    torchshelf.load_model(ref.tag)  # the stat cache now records every file as good
    DAMAGE[damage](ref.path / rel)

    with pytest.raises(torchshelf.IntegrityError, match=rel) as info:
        torchshelf.load_model(ref.tag)
    assert info.value.path == rel
    [(tag, error)] = torchshelf.models.verify([ref.tag])
    assert tag == ref.tag
    assert isinstance(error, torchshelf.IntegrityError) and error.path == rel
    with pytest.raises(torchshelf.IntegrityError, match=rel):
        torchshelf.load_model(ref.tag)  # still refused: a failed check caches nothing


def test_shelf_verify_exits_1_naming_the_tampered_file(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model], shelf: Shelf
) -> None:
    good, ref = two_versions
    _flip(ref.path / "weights.safetensors")
    proc = shelf("verify")
    assert proc.returncode == 1
    assert "weights.safetensors" in proc.stdout
    assert f"ok      {good}" in proc.stdout
    assert shelf("verify", str(good)).returncode == 0
    proc = shelf("verify", str(ref.tag))
    assert proc.returncode == 1 and "weights.safetensors" in proc.stdout


def test_a_tampered_file_with_its_mtime_restored_is_still_caught(store_home: Path) -> None:
    """The stat signature includes ctime, which no user-level write can restore."""
    ref = _save_everything()
    torchshelf.load_model(ref.tag)
    path = ref.path / "weights.safetensors"
    st = path.stat()
    _flip(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    with pytest.raises(torchshelf.IntegrityError, match="weights.safetensors"):
        torchshelf.load_model(ref.tag)


def test_a_damaged_pickled_custom_object_is_refused_before_unpickling(store_home: Path) -> None:
    tag = torchshelf.save_model("mlp", zoo.MLP(), custom_objects={"tok": zoo.MLP})
    ref = torchshelf.get(tag)
    rel = ref.manifest.custom_objects["tok"]["file"]
    _flip(ref.path / rel)
    with pytest.raises(torchshelf.IntegrityError, match=rel):
        torchshelf.get(tag).custom_objects["tok"]


def test_load_does_not_rehash_unchanged_files(
    store_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _save_everything()
    hashed: list[str] = []
    real = manifest_mod.hash_file

    def counting(path: Path, progress: object = None) -> dict[str, object]:
        hashed.append(Path(path).name)
        return real(path, progress)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest_mod, "hash_file", counting)
    torchshelf.load_model(ref.tag)
    torchshelf.load_model(ref.tag)
    assert hashed == [], "a freshly saved version was re-hashed on load"
    (
        ref.path / "weights.safetensors"
    ).touch()  # same bytes, new signature: hashed once, then cached
    torchshelf.load_model(ref.tag)
    torchshelf.load_model(ref.tag)
    assert hashed == ["weights.safetensors"]
    torchshelf.models.verify([ref.tag])  # verify always re-hashes everything
    assert len(hashed) == 1 + len(ref.manifest.files)


# --- manifests ---------------------------------------------------------------------------------


def _rewrite_manifest(ref: torchshelf.Model, edit: Callable[[dict[str, object]], object]) -> None:
    path = ref.path / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


MANIFEST_DAMAGE: dict[str, Callable[[torchshelf.Model], None]] = {
    "invalid json": lambda ref: (ref.path / "manifest.json").write_text('{"name": "mlp", '),
    "not an object": lambda ref: (ref.path / "manifest.json").write_text("[1, 2]"),
    "empty": lambda ref: (ref.path / "manifest.json").write_bytes(b""),
    "binary": lambda ref: (ref.path / "manifest.json").write_bytes(b"\xff\xfe\x00garbage"),
    "unknown field": lambda ref: _rewrite_manifest(ref, lambda m: m.update(surprise=1)),
    "missing field": lambda ref: _rewrite_manifest(ref, lambda m: m.pop("files")),
    "wrong type": lambda ref: _rewrite_manifest(ref, lambda m: m.update(labels=["x"])),
    "bad file record": lambda ref: _rewrite_manifest(
        ref, lambda m: m["files"].update({"weights.safetensors": {"sha256": "00", "size": 1}})
    ),
    "escaping file name": lambda ref: _rewrite_manifest(
        ref, lambda m: m["files"].update({"../../x": {"sha256": "0" * 64, "size": 1}})
    ),
    "custom object outside files": lambda ref: _rewrite_manifest(
        ref,
        lambda m: m["custom_objects"].update({"x": {"kind": "json", "file": "../../etc/passwd"}}),
    ),
    "structure pickle outside files": lambda ref: _rewrite_manifest(
        ref, lambda m: m["structure"].update(pickle="../../elsewhere.pkl")
    ),
    "creation time not ISO": lambda ref: _rewrite_manifest(
        ref, lambda m: m.update(creation_time="yesterday")
    ),
    "signature not an object": lambda ref: _rewrite_manifest(
        ref, lambda m: m.update(signatures={"f": 1})
    ),
    "names another version": lambda ref: _rewrite_manifest(
        ref, lambda m: m.update(version="other")
    ),
}


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE)
def test_a_broken_manifest_is_a_clear_error_and_the_store_keeps_working(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model], damage: str
) -> None:
    good, ref = two_versions
    MANIFEST_DAMAGE[damage](ref)

    with pytest.raises(torchshelf.ManifestError, match="manifest.json"):
        torchshelf.get(ref.tag)
    with pytest.raises(torchshelf.ManifestError):
        torchshelf.load_model(ref.tag)
    # Listing skips the broken version; `latest` falls back to the newest readable one.
    assert [m.tag for m in torchshelf.models.list()] == [good]
    assert torchshelf.get("mlp").tag == good
    results = dict(torchshelf.models.verify())
    assert results[good] is None
    assert isinstance(results[ref.tag], torchshelf.ManifestError)
    assert dict(torchshelf.models.verify(["mlp"]))[good] is None  # a bare name checks the rest


@pytest.mark.parametrize("damage", ["invalid json", "unknown field", "missing field"])
def test_the_cli_reports_a_broken_manifest_without_crashing(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model], shelf: Shelf, damage: str
) -> None:
    good, ref = two_versions
    MANIFEST_DAMAGE[damage](ref)
    listed = shelf("list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert [m["tag"] for m in json.loads(listed.stdout)] == [str(good)]
    verified = shelf("verify")
    assert verified.returncode == 1
    assert "manifest.json" in verified.stdout
    assert "Traceback" not in verified.stderr + verified.stdout
    got = shelf("get", str(ref.tag))
    assert got.returncode == 1 and "manifest.json" in got.stderr
    assert "Traceback" not in got.stderr
    assert shelf("gc").returncode == 0


@pytest.mark.parametrize("where", ["label value", "middle", "a file hash"])
def test_one_changed_byte_in_the_manifest_is_caught_naming_it(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model], where: str
) -> None:
    """The manifest cannot hold its own hash; `.manifest.sha256` does."""
    _, ref = two_versions
    torchshelf.models.set_labels(ref.tag, {"stage": "production"})
    path = ref.path / "manifest.json"
    data = bytearray(path.read_bytes())
    if where == "label value":
        at = data.index(b'"production"') + 1  # p -> q: still valid JSON, a different label
    elif where == "a file hash":
        at = data.index(b'"sha256": "') + len(b'"sha256": "')
        data[at] = ord("0") if data[at] != ord("0") else ord("1")
        at = None
    else:
        at = len(data) // 2
    if at is not None:
        data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(torchshelf.IntegrityError) as info:
        torchshelf.load_model(ref.tag)
    assert info.value.path == "manifest.json"
    [(_, error)] = torchshelf.models.verify([ref.tag])
    assert isinstance(error, torchshelf.IntegrityError) and error.path == "manifest.json"


def test_a_label_change_interrupted_between_its_two_writes_still_checks(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model],
) -> None:
    _, ref = two_versions
    sums = ref.path / ".manifest.sha256"
    old = sums.read_text()
    torchshelf.models.set_labels(ref.tag, {"stage": "production"})
    new = sums.read_text()
    assert new != old and len(new.split()) == 1
    sums.write_text(old + new)  # the state after a crash between the sums and the manifest swap
    torchshelf.load_model(ref.tag)
    assert torchshelf.models.verify([ref.tag])[0][1] is None


def test_a_version_without_a_manifest_sum_still_loads(
    two_versions: tuple[torchshelf.Tag, torchshelf.Model],
) -> None:
    """Versions copied by hand (or written before the sum existed) have nothing to check against."""
    _, ref = two_versions
    (ref.path / ".manifest.sha256").unlink()
    torchshelf.load_model(ref.tag)
    torchshelf.models.set_labels(ref.tag, {"k": "v"})
    assert torchshelf.models.verify([ref.tag])[0][1] is None
