"""The manifest: the JSON record of one stored version, and the hashing that backs it.

Layout of a version directory (`<root>/models/<name>/<version>/`)::

    manifest.json            this schema; written last in staging, replaced atomically by `label`
    weights.safetensors      eager modules: every parameter and buffer (ties stored once)
    structure.pkl            eager modules: the module tree with tensors replaced by references
    model.ts                 TorchScript modules
    custom_objects/<i>.*     custom objects: .json, .safetensors (tensors) or .pkl (pickled)
    .manifest.sha256         not in the manifest: sha256 of manifest.json (one a line; two only
                             while a label change is being committed)
    .stat-cache.json         not in the manifest: stat signatures of files when last hashed
    .origin.json             not in the manifest: where the version came from, and its trust

Every file listed under `files` has its sha256 and size; hashes are computed once, as bytes
enter the store. `.stat-cache.json` lets a load skip re-hashing a file whose (size, mtime_ns,
ctime_ns, inode) did not change since it was hashed, as git's index does. The manifest cannot
hold its own hash, so `.manifest.sha256` does: a changed byte in `manifest.json` that still
parses (a label, a hash) is caught too.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import IntegrityError, ManifestError

SCHEMA = 1
MANIFEST = "manifest.json"
STAT_CACHE = ".stat-cache.json"
MANIFEST_SUM = ".manifest.sha256"
ORIGIN = ".origin.json"
FORMATS = ("safetensors", "torchscript")
CHUNK = 64 << 20  # bytes per write/hash step: large enough for throughput, small for progress

Progress = Callable[[int], None]


@dataclass(frozen=True)
class FileRecord:
    """The sha256 and size of one file of a version, as hashed when it entered the store."""

    sha256: str
    size: int

    def __getitem__(self, key: str) -> Any:
        """Read access by key (`rec["sha256"]`), as when file records were plain dicts."""
        if key in ("sha256", "size"):
            return getattr(self, key)
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def of(cls, rec: FileRecord | Mapping[str, Any]) -> FileRecord:
        return rec if isinstance(rec, FileRecord) else cls(str(rec["sha256"]), int(rec["size"]))


_MAPPINGS = ("labels", "metadata", "signatures", "structure", "custom_objects")


@dataclass(frozen=True)
class Manifest:
    """Everything known about one version; serialised as `manifest.json`.

    Immutable: the mappings are read-only views of private copies, so a `Model.manifest` handed
    to user code cannot change what the store writes. Derive a changed manifest with
    `dataclasses.replace(m, labels=...)`. (Values nested inside metadata and signatures are
    copied, not frozen.)
    """

    name: str
    version: str
    creation_time: str
    format: str
    torch_version: str
    module_class: str | None
    files: Mapping[str, FileRecord]
    labels: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    signatures: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    structure: Mapping[str, Any] = field(default_factory=dict)
    custom_objects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        files = {rel: FileRecord.of(rec) for rel, rec in self.files.items()}
        object.__setattr__(self, "files", MappingProxyType(files))
        for key in _MAPPINGS:
            object.__setattr__(self, key, MappingProxyType(copy.deepcopy(dict(getattr(self, key)))))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dicts (copies): the `manifest.json` document."""
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "creation_time": self.creation_time,
            "format": self.format,
            "torch_version": self.torch_version,
            "module_class": self.module_class,
            "files": {rel: rec.to_dict() for rel, rec in self.files.items()},
            "schema": self.schema,
        }
        for key in _MAPPINGS:
            out[key] = copy.deepcopy(dict(getattr(self, key)))
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=True).encode()

    @property
    def size(self) -> int:
        """Total bytes of the version's files."""
        return sum(f.size for f in self.files.values())


_REQUIRED = {
    "name": str,
    "version": str,
    "creation_time": str,
    "format": str,
    "torch_version": str,
    "files": dict,
    "labels": dict,
    "metadata": dict,
    "signatures": dict,
    "structure": dict,
    "custom_objects": dict,
    "schema": int,
}
_OPTIONAL_NULLABLE = {"module_class": str}


def parse_manifest(data: bytes, where: str = MANIFEST) -> Manifest:
    """Parse and validate manifest bytes; any defect is a `ManifestError` naming `where`."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"{where} is not valid JSON ({exc}); the version is damaged: delete it and re-save "
            "or re-import it",
            MANIFEST,
        ) from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must hold a JSON object", MANIFEST)
    known = set(_REQUIRED) | set(_OPTIONAL_NULLABLE)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ManifestError(
            f"{where} has unknown fields {unknown}: written by a newer torchshelf?", MANIFEST
        )
    missing = sorted(set(_REQUIRED) - set(raw))
    if missing:
        raise ManifestError(f"{where} is missing fields {missing}", MANIFEST)
    for key, typ in _REQUIRED.items():
        if not isinstance(raw[key], typ) or (typ is int and isinstance(raw[key], bool)):
            raise ManifestError(f"{where}: field {key!r} must be {typ.__name__}", MANIFEST)
    if raw.get("module_class") is not None and not isinstance(raw["module_class"], str):
        raise ManifestError(f"{where}: field 'module_class' must be a string or null", MANIFEST)
    if raw["schema"] > SCHEMA:
        raise ManifestError(
            f"{where} has schema {raw['schema']}; upgrade torchshelf to read it", MANIFEST
        )
    if raw["format"] not in FORMATS:
        raise ManifestError(f"{where}: unknown format {raw['format']!r}", MANIFEST)
    for rel, rec in raw["files"].items():
        check_relpath(rel, MANIFEST)
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("sha256"), str)
            or len(rec["sha256"]) != 64
            or not isinstance(rec.get("size"), int)
            or rec["size"] < 0
        ):
            raise ManifestError(f"{where}: bad file record for {rel!r}", MANIFEST)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw["labels"].items()):
        raise ManifestError(f"{where}: labels must map strings to strings", MANIFEST)
    try:
        datetime.fromisoformat(raw["creation_time"])
    except ValueError:
        raise ManifestError(
            f"{where}: creation_time {raw['creation_time']!r} is not ISO-8601", MANIFEST
        ) from None
    if not all(isinstance(v, dict) for v in raw["signatures"].values()):
        raise ManifestError(f"{where}: every signature must be a JSON object", MANIFEST)
    _check_references(raw, where)
    raw.setdefault("module_class", None)
    return _adopt(raw)


def _adopt(raw: dict[str, Any]) -> Manifest:
    """The `Manifest` of freshly parsed JSON that nothing else holds, wrapped without the deep
    copies `__post_init__` makes of caller-owned dicts (a third of `shelf list -o json`)."""
    manifest = object.__new__(Manifest)
    for key, value in raw.items():
        object.__setattr__(manifest, key, value)
    files = {rel: FileRecord(rec["sha256"], rec["size"]) for rel, rec in raw["files"].items()}
    object.__setattr__(manifest, "files", MappingProxyType(files))
    for key in _MAPPINGS:
        object.__setattr__(manifest, key, MappingProxyType(raw[key]))
    return manifest


_MAIN_FILE = {"safetensors": "weights.safetensors", "torchscript": "model.ts"}
_OBJECT_KINDS = ("json", "tensors", "pickle")


def _check_references(raw: dict[str, Any], where: str) -> None:
    """Every file the manifest points at (weights, structure, custom objects) must be hashed in
    `files`: a reader then never opens a file that was not checked, or one outside the version."""
    files = raw["files"]

    def listed(rel: Any, what: str) -> None:
        if not isinstance(rel, str) or rel not in files:
            raise ManifestError(f"{where}: {what} {rel!r} is not among the hashed files", MANIFEST)

    listed(_MAIN_FILE[raw["format"]], f"{raw['format']} file")
    structure = raw["structure"]
    if structure.get("pickle") is not None:
        listed(structure["pickle"], "structure")
    cls = structure.get("class")
    if cls is not None and not (
        isinstance(cls, dict)
        and isinstance(cls.get("class"), str)
        and isinstance(cls.get("init_kwargs", {}), dict)
    ):
        raise ManifestError(
            f"{where}: structure.class must be {{'class': str, 'init_kwargs': {{}}}}", MANIFEST
        )
    aliases = structure.get("aliases", {})
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise ManifestError(f"{where}: structure.aliases must map strings to strings", MANIFEST)
    for key, rec in raw["custom_objects"].items():
        if not isinstance(rec, dict) or rec.get("kind") not in _OBJECT_KINDS:
            raise ManifestError(f"{where}: bad record for custom object {key!r}", MANIFEST)
        listed(rec.get("file"), f"custom object {key!r} file")
        if rec.get("tensors") is not None:
            listed(rec["tensors"], f"custom object {key!r} tensors")


def check_relpath(rel: str, where: str = MANIFEST) -> str:
    """Refuse file names that could escape the version directory or collide with ours."""
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or "\0" in rel
        or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        or rel == MANIFEST
    ):
        raise ManifestError(f"{where}: unsafe file name {rel!r}", MANIFEST)
    return rel


# --- hashing ---------------------------------------------------------------------------------


class HashingWriter:
    """Write a file while a background thread sha256-hashes the same buffers.

    `hashlib` and file writes both release the GIL on large buffers, so on two cores hashing
    costs almost nothing on top of writing + fsync. Buffers are hashed in the order written and
    are referenced (not copied) until hashed.
    """

    def __init__(self, path: Path, progress: Progress | None = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        import hashlib  # imported where used: listing and reading never hash
        import queue
        import threading

        self._sha = hashlib.sha256()
        self._size = 0
        self._progress = progress
        self._queue: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._hash_loop, name="torchshelf-hash", daemon=True)
        self._thread.start()

    def _hash_loop(self) -> None:
        try:
            while (buf := self._queue.get()) is not None:
                self._sha.update(buf)
        except BaseException as exc:  # surfaced in close()
            self._error = exc

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            chunk = view[start : start + CHUNK]
            written = 0
            while written < len(chunk):
                written += os.write(self._fd, chunk[written:])
            self._queue.put(chunk)
            self._size += len(chunk)
            if self._progress is not None:
                self._progress(len(chunk))

    def close(self, fsync: bool = True) -> FileRecord:
        """Flush to disk and return the file's record (sha256 and size)."""
        self._queue.put(None)
        try:
            if fsync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._thread.join()
        if self._error is not None:
            raise self._error
        return FileRecord(self._sha.hexdigest(), self._size)

    def abort(self) -> None:
        self._queue.put(None)
        os.close(self._fd)
        self._thread.join()


def hash_file(path: Path, progress: Progress | None = None) -> FileRecord:
    """sha256 and size of a file, read in large chunks."""
    import hashlib

    sha = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        # Sized to the file: a 64 MiB buffer for a 2 KiB structure.pkl cost tens of ms a save.
        buf = bytearray(max(1, min(CHUNK, os.fstat(fh.fileno()).st_size)))
        view = memoryview(buf)
        while n := fh.readinto(buf):
            sha.update(view[:n])
            size += n
            if progress is not None:
                progress(n)
    return FileRecord(sha.hexdigest(), size)


def stat_signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def manifest_digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def read_manifest_sums(version_dir: Path) -> set[str] | None:
    """The accepted sha256s of `manifest.json`; None when the version has no record of them
    (written by hand, or before torchshelf kept one): then there is nothing to check against."""
    try:
        text = (version_dir / MANIFEST_SUM).read_text()
    except FileNotFoundError:
        return None
    return {line.strip() for line in text.splitlines() if line.strip()}


def write_manifest_sums(version_dir: Path, digests: list[str], *, fsync: bool = True) -> None:
    """Atomically replace `.manifest.sha256` with `digests`."""
    import threading

    tmp = version_dir / f"{MANIFEST_SUM}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        tmp.write_text("".join(f"{d}\n" for d in digests))
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, version_dir / MANIFEST_SUM)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: the old sums file is untouched
        raise


def read_stat_cache(version_dir: Path) -> dict[str, list[int]]:
    try:
        data = json.loads((version_dir / STAT_CACHE).read_bytes())
        return {k: v for k, v in data.get("files", {}).items() if isinstance(v, list)}
    except (OSError, ValueError, AttributeError):
        return {}


def write_stat_cache(version_dir: Path, signatures: dict[str, list[int]]) -> None:
    """Best effort: a read-only store simply re-hashes on load."""
    tmp = version_dir / f"{STAT_CACHE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"files": signatures}))
        os.replace(tmp, version_dir / STAT_CACHE)
    except OSError:
        tmp.unlink(missing_ok=True)


def check_files(
    manifest: Manifest,
    version_dir: Path,
    *,
    full: bool = False,
    progress: Progress | None = None,
) -> None:
    """Raise `IntegrityError` naming the first file that does not match the manifest.

    With `full=False` a file is re-hashed only when its stat signature differs from the one
    recorded when it was last hashed; `full=True` (what `shelf verify` does) re-hashes all.
    """
    cache = {} if full else read_stat_cache(version_dir)
    fresh: dict[str, list[int]] = {}
    changed = False
    for rel, rec in manifest.files.items():
        path = version_dir / rel
        try:
            sig = stat_signature(path)
        except FileNotFoundError:
            raise IntegrityError(
                f"{manifest.name}:{manifest.version}: file {rel} is missing", rel
            ) from None
        if sig[0] != rec.size:
            raise IntegrityError(
                f"{manifest.name}:{manifest.version}: file {rel} has size {sig[0]}, "
                f"expected {rec.size}; the version is corrupt, delete and re-import it",
                rel,
            )
        if not full and cache.get(rel) == sig:
            fresh[rel] = sig
            if progress is not None:
                progress(rec.size)
            continue
        got = hash_file(path, progress)
        if got["sha256"] != rec.sha256:
            raise IntegrityError(
                f"{manifest.name}:{manifest.version}: file {rel} does not match its sha256 "
                "in the manifest; the version is corrupt, delete and re-import it",
                rel,
            )
        fresh[rel] = sig
        changed = True
    if changed or set(fresh) != set(cache):
        write_stat_cache(version_dir, fresh)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
