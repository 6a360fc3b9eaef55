"""Export and import: one version as a POSIX (pax) tar holding `<name>/<version>/...`.

Export verifies what it streams. Import never calls `tarfile.extract`: it reads the manifest
(which must come first), then copies each member that the manifest lists into a staging
directory while hashing it, and commits only when every file matches. Anything else (links,
devices, directories, unlisted or duplicate names, `..`, absolute paths, sizes that differ from
the manifest, more bytes than the limit) refuses the whole archive and writes nothing.
Compressed archives (gzip, bzip2, xz) are read too, through `_Bounded`, which caps both the
decompressed bytes and any single read, so neither a decompression bomb nor a giant pax header
can exhaust disk, time or memory.
Imported versions are untrusted: nothing in them is unpickled until `shelf trust`.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import secrets
import tarfile
import time
import zlib
from pathlib import Path
from typing import IO, Any

from .config import ENV_MAX_IMPORT, max_import_bytes
from .diskspace import ensure_free, is_disk_full, store_full
from .errors import AlreadyExists, ArchiveError, IntegrityError, ManifestError, UsageError
from .manifest import (
    MANIFEST,
    FileRecord,
    HashingWriter,
    Manifest,
    Progress,
    check_relpath,
    parse_manifest,
)
from .store import Store, now_iso
from .tag import Tag, validate_name, validate_version

MAX_MANIFEST_BYTES = 16 << 20
_COPY = 8 << 20
_HEADER_SLACK = 1 << 20  # tar headers and padding on top of the files' own bytes
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


class _Bounded:
    """A read-only stream over the (decompressed) tar that refuses to go past `limit` bytes or to
    hand out more than `max_read` bytes at once. tarfile reads a pax or GNU long-name header in
    one call, sized by the archive itself; this is what keeps such a header from filling memory."""

    def __init__(
        self, fh: IO[bytes], raw: IO[bytes], limit: int, max_read: int, path: Path
    ) -> None:
        self._fh = fh
        self._raw = raw
        self._limit = limit
        self._max_read = max_read
        self._path = path

    def _refuse(self, what: str) -> ArchiveError:
        return ArchiveError(
            f"{self._path}: refused: {what} (a decompression bomb, or raise {ENV_MAX_IMPORT})"
        )

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._max_read:
            raise self._refuse(f"a single header or read of {n} bytes")
        if self._fh.tell() + n > self._limit:
            raise self._refuse(f"the archive expands past {self._limit} bytes")
        return self._fh.read(n)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET and offset > self._limit:
            raise self._refuse(f"the archive expands past {self._limit} bytes")
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()
        self._raw.close()


def _open_decompressed(raw: IO[bytes]) -> IO[bytes]:
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    return raw


def _open_archive(path: Path) -> tarfile.TarFile:
    """Open `path` as a tar (plain or compressed) behind the size bounds of `_Bounded`.

    The caller closes `tar.fileobj` (tarfile leaves a stream it was given open)."""
    raw = open(path, "rb")  # noqa: SIM115 - owned by the returned TarFile's stream
    try:
        stream = _Bounded(
            _open_decompressed(raw),
            raw,
            limit=max_import_bytes() + MAX_MANIFEST_BYTES + _HEADER_SLACK,
            max_read=max(MAX_MANIFEST_BYTES, _COPY) + tarfile.BLOCKSIZE,
            path=path,
        )
        return tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]
    except BaseException:
        raw.close()
        raise


class _HashingReader:
    """A file object for tarfile that hashes what it hands out."""

    def __init__(self, fh: IO[bytes], progress: Progress | None) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.sha.update(data)
        if self._progress is not None and data:
            self._progress(len(data))
        return data


ARCHIVE_SUFFIX = ".shelf"


def archive_path(path: str | os.PathLike[str], name: str, version: str) -> Path:
    """Where `export` writes: into a directory as `<name>-<version>.shelf`, else `path`, with
    `.shelf` added when it has no extension (BentoML's rules, with its `.bentomodel`)."""
    text = os.fspath(path)
    if not text:
        raise UsageError("export needs a file or directory to write to")
    target = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or target.is_dir():
        if not target.is_dir():
            raise UsageError(f"directory {text!r} does not exist; create it first")
        return target / f"{name}-{version}{ARCHIVE_SUFFIX}"
    if not target.suffix:
        target = target.with_name(target.name + ARCHIVE_SUFFIX)
    if not target.parent.is_dir():
        raise UsageError(f"directory {str(target.parent)!r} does not exist; create it first")
    return target


def export_model(
    store: Store, tag: object, path: str | os.PathLike[str], progress: Progress | None = None
) -> Path:
    """Write one version to `path` as a tar; the file appears only when complete and verified."""
    manifest = store.resolve(tag)
    vdir = store.version_dir(manifest.name, manifest.version)
    store.check(manifest)
    path = archive_path(path, manifest.name, manifest.version)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    prefix = f"{manifest.name}/{manifest.version}"
    try:
        with (
            open(tmp, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.copybufsize = _COPY  # type: ignore[attr-defined]  # private, read by addfile
            data = manifest.to_json()
            info = _member(f"{prefix}/{MANIFEST}", len(data))
            import io

            tar.addfile(info, io.BytesIO(data))
            for rel, rec in manifest.files.items():
                with open(vdir / rel, "rb") as fh:
                    reader = _HashingReader(fh, progress)
                    tar.addfile(_member(f"{prefix}/{rel}", rec["size"]), reader)  # type: ignore[arg-type]
                if reader.sha.hexdigest() != rec["sha256"]:
                    raise IntegrityError(
                        f"{manifest.name}:{manifest.version}: file {rel} changed while exporting",
                        rel,
                    )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    info.type = tarfile.REGTYPE
    return info


def import_model(
    store: Store, path: Path, *, trust: bool = False, progress: Progress | None = None
) -> Manifest:
    """Import a version exported by `export_model`; refuse anything unsafe. Returns its manifest."""
    path = Path(path)
    try:
        tar = _open_archive(path)
    except (*_READ_ERRORS, OSError) as exc:
        raise ArchiveError(f"{path} is not a readable tar archive: {exc}") from None
    staging: Path | None = None
    needed: int | None = None
    try:
        with tar:
            members = iter(tar)
            manifest = _read_first_manifest(tar, next(members, None), path)
            name, version = manifest.name, manifest.version
            needed = manifest.size
            ensure_free(store.root, needed, f"importing {name}:{version} from {path.name}")
            if store.version_dir(name, version).exists():
                raise AlreadyExists(f"model {name}:{version} already exists in {store.root}")
            staging = store.stage()
            seen: set[str] = set()
            for member in members:
                rel, rec = _listed_member(member, manifest, seen, path)
                seen.add(rel)
                _copy_member(tar, member, staging, rel, rec, path, progress)
            missing = sorted(set(manifest.files) - seen)
            if missing:
                raise ArchiveError(f"{path}: files listed in the manifest are missing: {missing}")
            origin: dict[str, Any] = {
                "source": "import",
                "archive": str(path.resolve()),
                "imported_at": now_iso(),
                "trusted": bool(trust),
            }
            result = store.commit(staging, manifest, auto_version=False, origin=origin)
            staging = None
            return result
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{path}: corrupt archive: {exc}") from None
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        if staging is not None:  # cleaned first, so the message reports the real free space
            store.discard(staging)
            staging = None
        raise store_full(store.root, f"importing {path.name}", needed) from None
    finally:
        tar.fileobj.close()  # type: ignore[union-attr]
        if staging is not None:
            store.discard(staging)


def _read_first_manifest(
    tar: tarfile.TarFile, first: tarfile.TarInfo | None, path: Path
) -> Manifest:
    """The archive's first member, which must be its version's manifest, parsed and checked
    against its member path and the import size limit before anything is written."""
    if first is None:
        raise ArchiveError(f"{path} is empty")
    name, version, rel = _split_member(first)
    if rel != MANIFEST or not first.isreg() or first.size > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{path}: the first member must be <name>/<version>/{MANIFEST}")
    fh = tar.extractfile(first)
    assert fh is not None
    try:
        manifest = parse_manifest(fh.read(), f"{path.name}:{MANIFEST}")
    except ManifestError as exc:
        raise ArchiveError(f"{path}: {exc}") from None
    if (manifest.name, manifest.version) != (name, version):
        raise ArchiveError(f"{path}: member path {name}/{version} does not match its manifest")
    if manifest.size > max_import_bytes():
        raise ArchiveError(
            f"{path}: the version holds {manifest.size} bytes, over the import limit "
            f"({ENV_MAX_IMPORT}={max_import_bytes()})"
        )
    return manifest


def _listed_member(
    member: tarfile.TarInfo, manifest: Manifest, seen: set[str], path: Path
) -> tuple[str, FileRecord]:
    """A later member's path inside the version and its manifest record; a member outside the
    version, not a regular file, repeated, unlisted or of the wrong size is refused."""
    mname, mversion, mrel = _split_member(member)
    if (mname, mversion) != (manifest.name, manifest.version):
        raise ArchiveError(
            f"{path}: member {member.name!r} is outside {manifest.name}/{manifest.version}"
        )
    if not member.isreg():
        raise ArchiveError(
            f"{path}: member {member.name!r} is not a regular file (links and devices are refused)"
        )
    if mrel in seen or mrel == MANIFEST:
        raise ArchiveError(f"{path}: duplicate member {member.name!r}")
    rec = manifest.files.get(mrel)
    if rec is None:
        raise ArchiveError(f"{path}: member {member.name!r} is not listed in the manifest")
    if member.size != rec.size:
        raise ArchiveError(
            f"{path}: member {member.name!r} has {member.size} bytes, manifest says {rec.size}"
        )
    return mrel, rec


def _copy_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    staging: Path,
    rel: str,
    rec: FileRecord,
    path: Path,
    progress: Progress | None,
) -> None:
    """Copy one member into staging, hashing as it goes; a short or mismatching copy fails."""
    target = staging / check_relpath(rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    assert src is not None
    writer = HashingWriter(target, progress)
    try:
        remaining = member.size
        while remaining > 0:
            chunk = src.read(min(_COPY, remaining))
            if not chunk:
                raise ArchiveError(f"{path}: member {member.name!r} is truncated")
            writer.write(chunk)
            remaining -= len(chunk)
    except BaseException:
        writer.abort()
        raise
    got = writer.close()
    if got["sha256"] != rec.sha256:
        raise ArchiveError(f"{path}: {rel} does not match the sha256 in its manifest")


def _split_member(member: tarfile.TarInfo) -> tuple[str, str, str]:
    """`name/version/rel` with every part checked; anything else is an ArchiveError."""
    raw = member.name
    if raw.startswith("/") or "\\" in raw or "\0" in raw:
        raise ArchiveError(f"unsafe member name {raw!r} (absolute path)")
    parts = raw.split("/")
    if any(p in ("", ".", "..") for p in parts) or len(parts) < 3:
        raise ArchiveError(f"unsafe member name {raw!r}")
    try:
        name = validate_name(parts[0])
        version = validate_version(parts[1])
        rel = "/".join(parts[2:])
        if rel != MANIFEST:
            check_relpath(rel)
    except (ManifestError, Exception) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"unsafe member name {raw!r}: {exc}") from None
    if name != parts[0]:
        raise ArchiveError(f"unsafe member name {raw!r}")
    return name, version, rel


def exported_tag(manifest: Manifest) -> Tag:
    return Tag(manifest.name, manifest.version)
