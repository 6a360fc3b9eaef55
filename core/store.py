"""The local store: layout on disk, atomic commits, locks, listing, labels, deletion and gc.

Layout under the root (see `config.store_root`)::

    models/<name>/<version>/   one complete version (see `manifest` for its files)
    .tmp/<host>.<pid>.<rand>/  a version being written; renamed into models/ when complete
    .trash/<rand>/             a version being deleted; renamed out of models/ first
    .locks/<name>.lock         one filelock per model name
    .index/<name>.json, .gen   the listing cache of each name (see `index`; never the truth)

A version appears by one `rename(2)` of a fully written and fsynced staging directory, and
disappears by one rename into `.trash/`, so readers see it whole or not at all. The name lock
serialises commits, deletes and label changes of one name; reads take no lock. A crashed writer
leaves only `.tmp/` or `.trash/` entries, which `gc()` (and every save, for dead writers) removes.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from . import selectors
from .diskspace import remove_quietly, translate_full
from .errors import (
    AlreadyExists,
    IntegrityError,
    InvalidName,
    ManifestError,
    NotFound,
)
from .index import NEWEST, ModelSummary, Rows, StoreIndex
from .records import Labels, check_labels, merge_labels, pick_prefix
from .tag import NAME_RE, Tag, new_version, parse_tag, validate_name, validate_version

if TYPE_CHECKING:
    from filelock import FileLock

    from .manifest import Manifest
    from .model import ModelInfo

# `.manifest` (and with it dataclasses and inspect, ~8 ms of start-up) is imported inside the
# methods that read or write manifests: a `shelf list` answered from the index never needs it.

LOCK_TIMEOUT = 60.0
FOREIGN_STALE_SECONDS = 24 * 3600  # gc removes another host's staging after a day untouched


class GcReport(NamedTuple):
    """What `gc` removed: entries and bytes freed."""

    removed: tuple[str, ...]
    bytes_freed: int


def _dir_size(path: Path) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, f)).st_size
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def summary_of(m: Manifest) -> ModelSummary:
    return ModelSummary(m.name, m.version, m.creation_time, m.format, m.size, dict(m.labels))


def _rename_new(staging: Path, target: Path) -> bool:
    """Rename `staging` to `target`; True when `target` already existed (nothing moved)."""
    try:
        os.rename(staging, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        return True
    return False


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def default_store(store: Store | str | os.PathLike[str] | None = None) -> Store:
    """The store to use: an explicit `Store` or path, else `config.store_root()`."""
    if isinstance(store, Store):
        return store
    from . import config

    return Store(config.store_root(store))


def _origin_at(vdir: Path) -> dict[str, Any]:
    """`.origin.json` of a version directory; none means saved here, and so trusted."""
    from .manifest import ORIGIN

    try:
        data = json.loads((vdir / ORIGIN).read_bytes())
        return data if isinstance(data, dict) else {"trusted": False}
    except FileNotFoundError:
        return {"source": "local", "trusted": True}
    except ValueError:
        return {"trusted": False}


class Store:
    """A model store rooted at `root`. Cheap to construct; creates directories on first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / ".tmp"
        self.trash_dir = self.root / ".trash"
        self.locks_dir = self.root / ".locks"
        self.index = StoreIndex(self.root, self.models_dir, self._scan_rows)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # --- paths and locks --------------------------------------------------------------------

    def version_dir(self, name: str, version: str) -> Path:
        return self.models_dir / validate_name(name) / validate_version(version)

    def lock(self, name: str, timeout: float = LOCK_TIMEOUT) -> FileLock:
        from filelock import FileLock  # imported here: most commands never take a lock

        self.locks_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks_dir / f"{validate_name(name)}.lock"), timeout=timeout)

    # --- reading ----------------------------------------------------------------------------

    def read_manifest(self, name: str, version: str) -> Manifest:
        from .manifest import MANIFEST, parse_manifest

        path = self.version_dir(name, version) / MANIFEST
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"model {name}:{version} not found; see `shelf list {name}`") from None
        manifest = parse_manifest(data, f"{name}:{version}/{MANIFEST}")
        if manifest.name != name or manifest.version != version:
            raise ManifestError(
                f"{name}:{version}/{MANIFEST} names {manifest.name}:{manifest.version}", MANIFEST
            )
        return manifest

    def names(self) -> list[str]:
        try:
            entries = os.scandir(self.models_dir)
        except FileNotFoundError:
            return []
        with entries:
            return sorted(
                e.name
                for e in entries
                if e.is_dir() and not e.name.startswith(".") and NAME_RE.match(e.name)
            )

    def _scan_rows(self, name: str) -> Rows:
        """The truth the index caches: every version directory of `name`, its manifest read."""
        rows: Rows = {}
        for version in self.version_names(name):
            try:
                m = self.read_manifest(name, version)
            except NotFound:
                continue  # deleted while we looked
            except (ManifestError, InvalidName):
                rows[version] = None  # broken, or not a version directory: listings skip it
            else:
                rows[version] = summary_of(m)
        return rows

    def summaries(self, name: str) -> builtins.list[ModelSummary]:
        """Every readable version of `name`, newest first, from the index (see `index`)."""
        name = validate_name(name)
        rows = self.index.rows(name, lambda: self.lock(name, timeout=0))
        found = [r for r in rows.values() if r is not None]
        found.sort(key=NEWEST, reverse=True)  # linear: the index keeps them in this order
        return found

    def manifests(self, name: str) -> builtins.list[Manifest]:
        """Every readable version of `name`, newest first. Vanishing versions are skipped."""
        found = []
        for row in self.summaries(name):
            with contextlib.suppress(NotFound, ManifestError):
                found.append(self.read_manifest(row.name, row.version))
        return found

    def resolve(self, tag: object) -> Manifest:
        """`name`, `name:latest`, `name:version` or a unique version prefix -> its manifest.

        A version that is not an exact match is looked up as a prefix, as git does: one
        match resolves, several are `AmbiguousTag` naming them, none is `NotFound`.
        """
        name, version = parse_tag(tag)
        if version is None:
            # Newest first; one deleted since the index was read, or whose manifest was damaged
            # by hand (the index cannot know), is passed over as a directory scan would.
            for row in self.summaries(name):
                with contextlib.suppress(NotFound, ManifestError):
                    return self.read_manifest(name, row.version)
            raise NotFound(f"model {name!r} not found; see `shelf list`")
        try:
            return self.read_manifest(name, version)
        except NotFound:
            return self.read_manifest(name, pick_prefix(name, version, self.version_names(name)))

    def list(
        self,
        name: str | None = None,
        labels: Labels = None,
        *,
        latest: bool = False,
    ) -> builtins.list[ModelSummary]:
        """Versions newest first, filtered by label selectors (ANDed); read from the index."""
        sels = selectors.parse_selectors(labels)
        names = [validate_name(name)] if name else self.names()
        out: builtins.list[ModelSummary] = []
        for n in names:
            versions = self.summaries(n)
            if sels:
                versions = [r for r in versions if selectors.matches(r.labels, sels)]
            out.extend(versions[:1] if latest else versions)
        if len(names) > 1:
            out.sort(key=NEWEST, reverse=True)
        return out

    def list_info(
        self, name: str | None = None, labels: Labels = None, *, latest: bool = False
    ) -> builtins.list[ModelInfo]:
        """`list`, each version's whole record (reads every listed manifest)."""
        out = []
        for row in self.list(name, labels, latest=latest):
            with contextlib.suppress(NotFound, ManifestError):  # deleted or broken since listed
                out.append(self._info(self.read_manifest(row.name, row.version)))
        return out

    def get(self, tag: object) -> ModelInfo:
        """The record of one version (what `shelf get` shows)."""
        return self._info(self.resolve(tag))

    def _info(self, m: Manifest) -> ModelInfo:
        from .model import ModelInfo

        vdir = self.version_dir(m.name, m.version)
        return ModelInfo.from_manifest(m, vdir, _origin_at(vdir).get("trusted") is True)

    def origin(self, name: str, version: str) -> dict[str, Any]:
        """Where a version came from; locally saved versions have no origin file and are trusted."""
        return _origin_at(self.version_dir(name, version))

    def is_trusted(self, name: str, version: str) -> bool:
        return self.origin(name, version).get("trusted") is True

    def check(self, manifest: Manifest, *, full: bool = False, progress: Any = None) -> None:
        """Integrity check of a version's manifest and files (stat-cached unless `full`)."""
        from .manifest import check_files

        vdir = self.version_dir(manifest.name, manifest.version)
        self._check_manifest_bytes(manifest, vdir)
        check_files(manifest, vdir, full=full, progress=progress)

    def _check_manifest_bytes(self, manifest: Manifest, vdir: Path) -> None:
        """`manifest.json` must hash to a digest in `.manifest.sha256`.

        Lock-free first; a mismatch is re-checked under the name lock, because a label change
        replaces the two files one after the other.
        """
        from .manifest import MANIFEST, MANIFEST_SUM, manifest_digest, read_manifest_sums

        def matches() -> bool:
            sums = read_manifest_sums(vdir)
            try:
                data = (vdir / MANIFEST).read_bytes()
            except FileNotFoundError:
                raise IntegrityError(
                    f"{manifest.name}:{manifest.version}: file {MANIFEST} is missing", MANIFEST
                ) from None
            return sums is None or manifest_digest(data) in sums

        if matches():
            return
        with self.lock(manifest.name):
            if matches():
                return
        raise IntegrityError(
            f"{manifest.name}:{manifest.version}: file {MANIFEST} does not match its sha256 in "
            f"{MANIFEST_SUM}; the version is corrupt, delete and re-import it",
            MANIFEST,
        )

    # --- writing ----------------------------------------------------------------------------

    def stage(self) -> Path:
        """A fresh staging directory on the store's filesystem; cleans dead writers' leftovers."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # made now, while there is room: a delete on a full disk needs it (a mkdir takes a block)
        self.trash_dir.mkdir(exist_ok=True)
        self._collect_dead_staging()
        import socket

        path = self.tmp_dir / f"{socket.gethostname()}.{os.getpid()}.{os.urandom(6).hex()}"
        path.mkdir()
        return path

    def commit(
        self,
        staging: Path,
        manifest: Manifest,
        *,
        auto_version: bool,
        origin: dict[str, Any] | None = None,
    ) -> Manifest:
        """Write the manifest, fsync, and rename `staging` into place as one complete version.

        With `auto_version`, a version that another process took meanwhile is replaced by a
        fresh one; otherwise an existing version is `AlreadyExists`.
        """
        import dataclasses

        from .manifest import (
            MANIFEST,
            MANIFEST_SUM,
            ORIGIN,
            fsync_dir,
            manifest_digest,
            stat_signature,
            write_manifest_sums,
            write_stat_cache,
        )

        if origin is not None:
            (staging / ORIGIN).write_text(json.dumps(origin))
        while True:
            data = manifest.to_json()
            (staging / MANIFEST).write_bytes(data)
            write_manifest_sums(staging, [manifest_digest(data)], fsync=False)
            for rel in [MANIFEST, MANIFEST_SUM, *manifest.files]:
                fd = os.open(staging / rel, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for sub in {(staging / rel).parent for rel in manifest.files} | {staging}:
                fsync_dir(sub)
            name_dir = self.models_dir / manifest.name
            target = name_dir / manifest.version
            with self.lock(manifest.name), self.index.changing(manifest.name) as rows:
                name_dir.mkdir(parents=True, exist_ok=True)
                taken = _rename_new(staging, target)
                if not taken:
                    fsync_dir(name_dir)
                    rows[manifest.version] = summary_of(manifest)
            if not taken:
                break
            if not auto_version:
                raise AlreadyExists(
                    f"model {manifest.name}:{manifest.version} already exists; versions "
                    "are immutable, pick another --version"
                )
            manifest = dataclasses.replace(manifest, version=new_version())
        write_stat_cache(target, {rel: stat_signature(target / rel) for rel in manifest.files})
        return manifest

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def write_manifest(self, manifest: Manifest) -> None:
        """Atomically replace a committed version's manifest (labels change; files do not).

        Call under the name lock. `.manifest.sha256` accepts both the old and the new manifest
        while the manifest is swapped, so a crash at any point leaves a version that checks.
        """
        from .manifest import (
            MANIFEST,
            fsync_dir,
            manifest_digest,
            read_manifest_sums,
            write_manifest_sums,
        )

        vdir = self.version_dir(manifest.name, manifest.version)
        data = manifest.to_json()
        tmp = vdir / f".{MANIFEST}.{os.urandom(4).hex()}.tmp"
        try:
            tmp.write_bytes(data)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            remove_quietly(tmp)  # e.g. a full disk: the old manifest is untouched
            raise
        new = manifest_digest(data)
        old = read_manifest_sums(vdir)
        if old is not None:
            write_manifest_sums(vdir, [*sorted(old), new])
        os.replace(tmp, vdir / MANIFEST)
        write_manifest_sums(vdir, [new])
        fsync_dir(vdir)

    def set_labels(
        self, tag: object, labels: dict[str, str], remove: Iterable[str] = ()
    ) -> Manifest:
        """Add/overwrite `labels` and drop `remove` keys on one version, under the name lock."""
        import dataclasses

        check_labels(labels)
        target = self.resolve(tag)
        with (
            self.lock(target.name),
            translate_full(self.root, f"labelling {target.name}:{target.version}"),
            self.index.changing(target.name) as rows,
        ):
            current = self.read_manifest(target.name, target.version)
            manifest = dataclasses.replace(current, labels=merge_labels(current, labels, remove))
            self.write_manifest(manifest)
            rows[manifest.version] = summary_of(manifest)
        return manifest

    def set_trusted(self, tag: object) -> Manifest:
        from .manifest import ORIGIN

        manifest = self.resolve(tag)
        with self.lock(manifest.name):
            vdir = self.version_dir(manifest.name, manifest.version)
            origin = self.origin(manifest.name, manifest.version)
            origin.update(trusted=True, trusted_at=now_iso())
            tmp = vdir / f"{ORIGIN}.{os.urandom(4).hex()}.tmp"
            with translate_full(self.root, f"trusting {manifest.name}:{manifest.version}"):
                try:
                    tmp.write_text(json.dumps(origin))
                    os.replace(tmp, vdir / ORIGIN)
                except BaseException:
                    remove_quietly(tmp)
                    raise
        return manifest

    def delete(self, tag: object) -> builtins.list[Tag]:
        """`name:version` deletes that version; a bare `name` (or `name:latest`?) all versions.

        Each version leaves `models/` by one rename into `.trash/`, then is removed.
        """
        name, version = parse_tag(tag)
        explicit_latest = isinstance(tag, str) and tag.strip().endswith(":latest")
        if version is None and explicit_latest:
            version = self.resolve(tag).version
        removed: builtins.list[Tag] = []
        with self.lock(name), self.index.changing(name) as rows:
            if version is not None:
                versions = [version]
                if not (self.models_dir / name / version).is_dir():
                    raise NotFound(f"model {name}:{version} not found; see `shelf list {name}`")
            else:
                try:
                    versions = [
                        v for v in os.listdir(self.models_dir / name) if not v.startswith(".")
                    ]
                except FileNotFoundError:
                    raise NotFound(f"model {name!r} not found; see `shelf list`") from None
            with translate_full(self.root, f"deleting {tag}"):
                self.trash_dir.mkdir(parents=True, exist_ok=True)
            doomed = []
            for v in versions:
                dest = self.trash_dir / f"{name}.{v}.{os.urandom(6).hex()}"
                try:
                    os.rename(self.models_dir / name / v, dest)
                except FileNotFoundError:
                    continue
                doomed.append(dest)
                removed.append(Tag(name, v))
                rows.pop(v, None)
            with contextlib.suppress(OSError):
                (self.models_dir / name).rmdir()  # only if empty
        for dest in doomed:
            shutil.rmtree(dest, ignore_errors=True)
        return removed

    # --- maintenance ------------------------------------------------------------------------

    def _staging_owner_alive(self, entry: str, *, stale_after: float | None = None) -> bool:
        """Whether the writer of `.tmp/<entry>` may still be running.

        On this host the pid says. Another host's writer (a store on shared storage) cannot be
        checked: saves skip its entries, and `gc` (`stale_after` seconds) removes them only once
        they have not changed for that long.
        """
        import socket

        parts = entry.split(".")
        if len(parts) < 3:
            return False
        host, pid = ".".join(parts[:-2]), parts[-2]
        if host != socket.gethostname() or not pid.isdigit():
            if stale_after is None:
                return True
            try:
                age = time.time() - os.lstat(self.tmp_dir / entry).st_mtime
            except FileNotFoundError:
                return False
            return age < stale_after
        return _pid_alive(int(pid))

    def _collect_dead_staging(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.tmp_dir):
                if not self._staging_owner_alive(entry):
                    shutil.rmtree(self.tmp_dir / entry, ignore_errors=True)

    def gc(self) -> GcReport:
        """Remove leftovers of interrupted writes and deletes; report what was freed."""
        removed: builtins.list[str] = []
        freed = 0
        for base, alive_check in ((self.tmp_dir, True), (self.trash_dir, False)):
            try:
                entries = os.listdir(base)
            except FileNotFoundError:
                continue
            for entry in entries:
                if alive_check and self._staging_owner_alive(
                    entry, stale_after=FOREIGN_STALE_SECONDS
                ):
                    continue
                path = base / entry
                size = _dir_size(path)
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    removed.append(str(path.relative_to(self.root)))
                    freed += size
        # Stray temp files of interrupted label/trust writes inside versions.
        for name in self.names():
            for version in self.version_names(name):
                vdir = self.models_dir / name / version
                try:
                    strays = [
                        f
                        for f in vdir.iterdir()
                        if f.name.startswith(".") and f.name.endswith(".tmp")
                    ]
                except (FileNotFoundError, NotADirectoryError):
                    continue  # deleted meanwhile
                for f in strays:
                    try:
                        size = f.stat().st_size
                        f.unlink()
                    except FileNotFoundError:
                        continue
                    removed.append(str(f.relative_to(self.root)))
                    freed += size
        for path in self.index.leftovers(set(self.names()), _pid_alive):
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(str(path.relative_to(self.root)))
            freed += size
        return GcReport(tuple(removed), freed)

    def version_names(self, name: str) -> builtins.list[str]:
        """Every version directory of `name`, readable or not (sorted; none if the name is unknown)."""
        try:
            return sorted(
                v
                for v in os.listdir(self.models_dir / validate_name(name))
                if not v.startswith(".")
            )
        except (FileNotFoundError, NotADirectoryError):
            return []

    def verify(self, tags: Iterable[object] = ()) -> Iterator[tuple[Tag, Exception | None]]:
        """Re-hash every file of the given versions (all versions when none are given).

        A bare name means all its versions. A version whose manifest is broken is reported with
        its `ManifestError` like any other failure; the others are still checked.
        """
        targets: builtins.list[tuple[str, str]] = []
        tags = list(tags)
        if tags:
            for tag in tags:
                name, version = parse_tag(tag)
                if version is None and not (isinstance(tag, str) and tag.endswith(":latest")):
                    found = [(name, v) for v in self.version_names(name)]
                    if not found:
                        raise NotFound(f"model {name!r} not found; see `shelf list`")
                    targets += found
                elif version is None:
                    m = self.resolve(tag)
                    targets.append((m.name, m.version))
                else:
                    targets.append((name, version))
        else:
            for name in self.names():
                targets += [(name, v) for v in self.version_names(name)]
        for name, version in targets:
            try:
                manifest = self.read_manifest(name, version)
                self.check(manifest, full=True)
            except (IntegrityError, NotFound) as exc:
                yield Tag(name, version), exc
            else:
                yield Tag(name, version), None
