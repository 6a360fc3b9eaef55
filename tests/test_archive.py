"""Export/import round-trips; every unsafe or inconsistent archive is refused, writing nothing."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import zoo
from conftest import (
    Member,
    Shelf,
    child_env,
    file_member,
    outside_files,
    read_members,
    rewrite_manifest,
    run_shelf,
    write_tar,
)

import torchshelf


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torchshelf.Tag]:
    """One real archive of `mlp:v1` (weights, structure, JSON + tensor custom objects)."""
    base = tmp_path_factory.mktemp("export")
    tag = torchshelf.save_model(
        "mlp",
        zoo.MLP(),
        version="v1",
        labels={"stage": "dev"},
        custom_objects={"cfg": {"k": 1}, "mean": torch.ones(3)},
        store=base / "store",
    )
    return torchshelf.models.export_model(tag, base / "mlp.shelf", store=base / "store"), tag


def test_export_then_import_into_a_second_store_verifies_and_loads(
    exported: tuple[Path, torchshelf.Tag], tmp_path: Path
) -> None:
    archive, tag = exported
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "mlp/v1/manifest.json"
    assert all(n.startswith("mlp/v1/") for n in names)
    second = tmp_path / "second"
    ref = torchshelf.models.import_model(archive, store=second)
    assert ref.tag == tag and ref.labels == {"stage": "dev"}
    assert not ref.trusted
    assert torchshelf.models.verify(store=second) == [(tag, None)]
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    original = torchshelf.load_model(tag, store=archive.parent / "store")
    assert torch.equal(torchshelf.load_model(tag, store=second)(x), original(x))
    assert torch.equal(ref.custom_objects["mean"], torch.ones(3))
    with pytest.raises(torchshelf.AlreadyExists):
        torchshelf.models.import_model(archive, store=second)


def test_cli_export_import_verify(store_home: Path, shelf: Shelf, tmp_path: Path) -> None:
    tag = torchshelf.save_model("mlp", zoo.MLP())
    archive = tmp_path / "out" / "mlp.shelf"
    archive.parent.mkdir()
    proc = shelf("export", str(tag), str(archive))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in archive.parent.iterdir()) == ["mlp.shelf"]  # no temp left
    other = tmp_path / "other"
    proc = run_shelf("--store", str(other), "import", str(archive), store=store_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tag)
    proc = run_shelf("--store", str(other), "verify", store=store_home)
    assert proc.returncode == 0 and str(tag) in proc.stdout
    proc = run_shelf("--store", str(other), "import", str(archive), store=store_home)
    assert proc.returncode == 1 and "already exists" in proc.stderr


def test_compressed_archives_import(exported: tuple[Path, torchshelf.Tag], tmp_path: Path) -> None:
    archive, tag = exported
    gz = tmp_path / "mlp.shelf.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes()))
    assert torchshelf.models.import_model(gz, store=tmp_path / "s").tag == tag


# --- refusals ------------------------------------------------------------------------------------

Variant = Callable[[list[Member], Path], list[Member]]


def _symlink(
    target: str, name: str = "mlp/v1/weights.safetensors", kind: bytes = tarfile.SYMTYPE
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def _special(kind: bytes, name: str = "mlp/v1/weights.safetensors") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, b""


def _replace(members: list[Member], rel: str, member: Member) -> list[Member]:
    return [member if i.name == f"mlp/v1/{rel}" else (i, d) for i, d in members]


def _flip_data(members: list[Member], rel: str) -> list[Member]:
    out = []
    for info, data in members:
        if info.name == f"mlp/v1/{rel}":
            data = bytes([data[0] ^ 1]) + data[1:]
        out.append((copy.copy(info), data))
    return out


VARIANTS: dict[str, Variant] = {
    "dotdot member": lambda m, out: [*m, file_member("mlp/v1/../../../escape.txt", b"x")],
    "leading dotdot": lambda m, out: [*m, file_member("../escape.txt", b"x")],
    "dotdot as manifest": lambda m, out: [file_member("../../manifest.json", m[0][1]), *m[1:]],
    "absolute path": lambda m, out: [*m, file_member(str(out / "escape.txt"), b"x")],
    "absolute manifest": lambda m, out: [
        file_member(str(out / "mlp/v1/manifest.json"), m[0][1]),
        *m[1:],
    ],
    "symlink out": lambda m, out: _replace(
        m, "weights.safetensors", _symlink(str(out / "escape.txt"))
    ),
    "symlink relative": lambda m, out: _replace(
        m, "weights.safetensors", _symlink("../../../escape.txt")
    ),
    "symlink then write through it": lambda m, out: [
        *m[:1],
        _symlink(str(out), "mlp/v1/custom_objects"),
        *m[1:],
    ],
    "hardlink": lambda m, out: _replace(
        m, "weights.safetensors", _symlink("/etc/passwd", kind=tarfile.LNKTYPE)
    ),
    "char device": lambda m, out: _replace(m, "weights.safetensors", _special(tarfile.CHRTYPE)),
    "block device": lambda m, out: _replace(m, "weights.safetensors", _special(tarfile.BLKTYPE)),
    "fifo": lambda m, out: _replace(m, "weights.safetensors", _special(tarfile.FIFOTYPE)),
    "directory member": lambda m, out: [*m, _special(tarfile.DIRTYPE, "mlp/v1/custom_objects")],
    "duplicate name": lambda m, out: [*m, (copy.copy(m[1][0]), m[1][1])],
    "duplicate manifest": lambda m, out: [*m, (copy.copy(m[0][0]), m[0][1])],
    "unlisted member": lambda m, out: [*m, file_member("mlp/v1/extra.bin", b"x")],
    "hidden member": lambda m, out: [*m, file_member("mlp/v1/.stat-cache.json", b"{}")],
    "other version's member": lambda m, out: [*m, file_member("mlp/v2/weights.safetensors", b"x")],
    "manifest not first": lambda m, out: [*m[1:], m[0]],
    "missing file": lambda m, out: [x for x in m if not x[0].name.endswith("weights.safetensors")],
    "data does not match its hash": lambda m, out: _flip_data(m, "weights.safetensors"),
    "manifest hash does not match": lambda m, out: rewrite_manifest(
        m, lambda d: d["files"]["structure.pkl"].update(sha256="0" * 64)
    ),
    "size differs from manifest": lambda m, out: rewrite_manifest(
        m,
        lambda d: d["files"]["structure.pkl"].update(size=d["files"]["structure.pkl"]["size"] + 1),
    ),
    "manifest names another version": lambda m, out: rewrite_manifest(
        m, lambda d: d.update(version="v2")
    ),
    "manifest unknown field": lambda m, out: rewrite_manifest(m, lambda d: d.update(evil=True)),
    "manifest missing field": lambda m, out: rewrite_manifest(m, lambda d: d.pop("files")),
    "manifest invalid json": lambda m, out: [
        file_member("mlp/v1/manifest.json", b"{not json"),
        *m[1:],
    ],
    "manifest lists an escaping file": lambda m, out: rewrite_manifest(
        m, lambda d: d["files"].update({"../../escape.txt": {"sha256": "0" * 64, "size": 1}})
    ),
    "invalid model name": lambda m, out: [
        (file_member("Bad Name/v1/manifest.json", m[0][1])),
        *m[1:],
    ],
    "empty archive": lambda m, out: [],
}


def _snapshot(root: Path, store: Path) -> set[Path]:
    return outside_files(root, store)


def _assert_refused_cleanly(archive: Path, root: Path, store: Path, before: set[Path]) -> None:
    with pytest.raises(torchshelf.ArchiveError):
        torchshelf.models.import_model(archive, store=store)
    assert _snapshot(root, store) == before, "the import wrote outside the store"
    assert not list((store / "models").glob("*/*")), "a version appeared"
    assert not list((store / ".tmp").glob("*")), "staging was left behind"
    assert torchshelf.models.list(store=store) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_unsafe_or_inconsistent_archives_are_refused(
    exported: tuple[Path, torchshelf.Tag], tmp_path: Path, variant: str
) -> None:
    members = read_members(exported[0])
    out = tmp_path / "outside"
    out.mkdir()
    archive = write_tar(tmp_path / "bad.shelf", VARIANTS[variant](members, out))
    store = tmp_path / "store"
    before = _snapshot(tmp_path, store)
    _assert_refused_cleanly(archive, tmp_path, store, before)
    assert not (out / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    "variant", ["dotdot member", "symlink out", "data does not match its hash"]
)
def test_cli_import_of_an_unsafe_archive_exits_1(
    exported: tuple[Path, torchshelf.Tag],
    store_home: Path,
    shelf: Shelf,
    tmp_path: Path,
    variant: str,
) -> None:
    out = tmp_path / "outside"
    out.mkdir()
    archive = write_tar(tmp_path / "bad.shelf", VARIANTS[variant](read_members(exported[0]), out))
    proc = shelf("import", str(archive))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not list(out.iterdir())


def test_not_an_archive_is_refused(tmp_path: Path, shelf: Shelf) -> None:
    for name, data in [
        ("random.shelf", os.urandom(4096)),
        ("empty.shelf", b""),
        ("fake.gz", b"\x1f\x8b" + os.urandom(100)),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(torchshelf.ArchiveError):
            torchshelf.models.import_model(path, store=tmp_path / "s")
    assert shelf("import", str(tmp_path / "random.shelf")).returncode == 1
    assert shelf("import", str(tmp_path / "missing.shelf")).returncode == 1


def test_a_truncated_archive_is_refused(
    exported: tuple[Path, torchshelf.Tag], tmp_path: Path
) -> None:
    data = exported[0].read_bytes()
    for cut in (600, len(data) // 2, len(data) - 1100):
        archive = tmp_path / f"cut{cut}.shelf"
        archive.write_bytes(data[:cut])
        store = tmp_path / f"store{cut}"
        _assert_refused_cleanly(archive, tmp_path, store, _snapshot(tmp_path, store))


# --- size limits and decompression bombs ----------------------------------------------------------


def _big_zero_archive(path: Path, size: int, mode: str, manifest_size: int | None = None) -> Path:
    """A version whose weights are `size` zero bytes, written without holding them in memory."""
    data = b"\0" * 0
    digest = hashlib.sha256()
    chunk = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        digest.update(chunk)
    manifest = {
        "name": "bomb",
        "version": "v1",
        "creation_time": "2026-01-01T00:00:00+00:00",
        "format": "safetensors",
        "torch_version": torch.__version__,
        "module_class": "zoo:MLP",
        "files": {
            "weights.safetensors": {"sha256": digest.hexdigest(), "size": manifest_size or size}
        },
        "labels": {},
        "metadata": {},
        "signatures": {},
        "structure": {"class": {"class": "zoo:MLP"}},
        "custom_objects": {},
        "schema": 1,
    }

    class Zeros(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left = n

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        body = json.dumps(manifest).encode()
        info, _ = file_member("bomb/v1/manifest.json", body)
        tar.addfile(info, io.BytesIO(body))
        info, _ = file_member("bomb/v1/weights.safetensors", data)
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros(size)))
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz"])
def test_an_archive_over_the_import_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    archive = _big_zero_archive(tmp_path / "big.shelf", 64 << 20, mode)
    assert mode == "w" or archive.stat().st_size < 1 << 20  # a bomb: tiny on disk
    monkeypatch.setenv("TORCHSHELF_MAX_IMPORT_BYTES", str(8 << 20))
    store = tmp_path / "store"
    _assert_refused_cleanly(archive, tmp_path, store, _snapshot(tmp_path, store))
    monkeypatch.delenv("TORCHSHELF_MAX_IMPORT_BYTES")
    assert torchshelf.models.import_model(archive, store=store).tag == torchshelf.Tag("bomb", "v1")


def test_a_member_larger_than_its_manifest_says_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    archive = _big_zero_archive(tmp_path / "liar.shelf", 64 << 20, "w:gz", manifest_size=1024)
    store = tmp_path / "store"
    _assert_refused_cleanly(archive, tmp_path, store, _snapshot(tmp_path, store))


def test_cli_reports_the_import_limit(tmp_path: Path, store_home: Path) -> None:
    archive = _big_zero_archive(tmp_path / "big.shelf", 16 << 20, "w:gz")
    env = {
        **os.environ,
        "TORCHSHELF_HOME": str(store_home),
        "TORCHSHELF_MAX_IMPORT_BYTES": str(1 << 20),
    }
    proc = run_shelf("import", str(archive), store=store_home, env=env)
    assert proc.returncode == 1
    assert "TORCHSHELF_MAX_IMPORT_BYTES" in proc.stderr


@pytest.mark.parametrize("kind", ["pax header", "long name"])
def test_a_gzip_bomb_in_a_tar_header_is_refused_without_filling_memory(
    tmp_path: Path, kind: str
) -> None:
    """tarfile reads a pax header or GNU long name in one piece, sized by the archive itself."""
    size = 200 << 20
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        # A pax 'x' header whose one record is `size` bytes long, then an ordinary member.
        if kind == "pax header":
            record_len = size
            prefix = f"{record_len} comment=".encode()
            # The length field counts itself; settle it by construction.
            body_len = record_len - len(prefix) - 1
            header = tarfile.TarInfo("././@PaxHeader")
            header.type = tarfile.XHDTYPE
            header.size = record_len
        else:
            body_len = size
            header = tarfile.TarInfo("././@LongLink")
            header.type = tarfile.GNUTYPE_LONGNAME
            header.size = size
            prefix = b""
        gz.write(header.tobuf(tarfile.GNU_FORMAT if kind == "long name" else tarfile.USTAR_FORMAT))
        gz.write(prefix)
        zeros = b"a" * (1 << 20)
        left = body_len
        while left:
            n = min(left, len(zeros))
            gz.write(zeros[:n])
            left -= n
        gz.write(b"\n" if kind == "pax header" else b"")
        gz.write(b"\0" * (-header.size % 512))
        info, data = file_member("bomb/v1/manifest.json", b"{}")
        gz.write(info.tobuf())
        gz.write(data + b"\0" * (-len(data) % 512))
        gz.write(b"\0" * 1024)
    archive = tmp_path / "bomb.shelf"
    archive.write_bytes(raw.getvalue())
    assert archive.stat().st_size < 2 << 20
    store = tmp_path / "store"
    before = _snapshot(tmp_path, store)
    # In a fresh interpreter (import needs no torch), so its peak RSS is its own; VmHWM is per
    # address space (ru_maxrss would carry the forking pytest process's peak across exec).
    code = (
        "import re, sys, torchshelf\n"
        "try:\n    torchshelf.models.import_model(sys.argv[1], store=sys.argv[2])\n"
        "except torchshelf.ArchiveError as e:\n    print('refused:', e)\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(archive), str(store)],
        env=child_env(store),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    refused, peak_kib = proc.stdout.splitlines()
    assert refused.startswith("refused:"), proc.stdout
    assert int(peak_kib) < 120 << 10, f"the import peaked at {peak_kib} KiB"
    assert _snapshot(tmp_path, store) == before
    assert not list(store.glob("models/*/*")) and not list(store.glob(".tmp/*"))
