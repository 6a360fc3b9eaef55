"""The listing index: a per-name cache of the summary rows `shelf list` prints.

It is a cache, never the truth: the version directories and their manifests are. Layout::

    .index/<name>.json   {"schema": 1, "gen": TOKEN, "labels": [{k: v}, ...], "rows":
                          [[version, created, format, size, labels_i], ...] (newest first),
                          "broken": [version, ...]}; rows share their label sets
    .index/<name>.gen    the name's generation: a random TOKEN, or "dirty-TOKEN" while a
                          writer is changing the name

Every change of a name (commit, delete, label change) happens under the name's filelock and
brackets itself: `gen := dirty-…` (fsynced) -> change -> write the index with a fresh TOKEN
-> `gen := TOKEN`. A reader trusts `<name>.json` only when, read in this order,

1. the index parses and names generation G,
2. the set of version directories (one `listdir`) is exactly the index's versions, and
3. the generation file, read last, says G (not dirty).

Because a writer marks the name dirty before it touches anything, a reader that sees a clean G
equal to the index's after reading the index and the directory saw a state no writer had begun
to change. A writer killed mid-change leaves the name dirty: readers then scan the manifests
(always correct) and repair the index under the lock once no writer holds it. The directory
check also catches writers that do not know about the index (an older torchshelf, `rm -r`).

Shared filesystems: correctness needs what the store's locks already need (working `flock`,
e.g. NFSv4) and close-to-open consistency. A client whose attribute cache is stale (NFS
`actimeo`) can list a version late, exactly as a plain directory scan on that client would.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .diskspace import is_disk_full

SCHEMA = 1
DIRTY = "dirty-"


class ModelSummary(NamedTuple):
    """One version as a listing shows it (an index row): cheap to read for 10,000 versions."""

    name: str
    version: str
    creation_time: str
    format: str
    size: int
    labels: Mapping[str, str]

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


NEWEST = operator.itemgetter(2, 1)  # sort key of a ModelSummary: (creation_time, version)

# name -> version -> its summary, or None when its manifest is broken (listings skip it)
Rows = dict[str, ModelSummary | None]
Scan = Callable[[str], Rows]


def _write_atomic(path: Path, data: str, *, durable: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StoreIndex:
    """The index of one store; `scan(name)` reads the truth (every manifest of `name`)."""

    def __init__(self, root: Path, models_dir: Path, scan: Scan) -> None:
        self.dir = root / ".index"
        self.models_dir = models_dir
        self._scan = scan

    def _gen(self, name: str) -> str | None:
        try:
            return (self.dir / f"{name}.gen").read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _entries(self, name: str) -> set[str]:
        try:
            return {e for e in os.listdir(self.models_dir / name) if not e.startswith(".")}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def read(self, name: str) -> Rows | None:
        """The cached rows of `name` when they are provably current, else None."""
        try:
            doc = json.loads((self.dir / f"{name}.json").read_bytes())
            gen = doc["gen"]
            sets = doc["labels"]
            make = tuple.__new__  # the namedtuple's own __new__ is Python code: 2x slower
            rows: Rows = {
                v: make(ModelSummary, (name, v, created, fmt, size, sets[i]))
                for v, created, fmt, size, i in doc["rows"]
            }
            rows.update(dict.fromkeys(doc["broken"]))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        if doc.get("schema") != SCHEMA or rows.keys() != self._entries(name):
            return None
        if self._gen(name) != gen or gen.startswith(DIRTY):
            return None
        return rows

    def _write(self, name: str, rows: Rows, gen: str) -> None:
        live = sorted((r for r in rows.values() if r is not None), key=NEWEST, reverse=True)
        sets: dict[str, int] = {}  # label sets by their JSON: most versions share a few
        table = []
        for r in live:
            key = json.dumps(dict(r.labels), sort_keys=True)
            table.append(
                [r.version, r.creation_time, r.format, r.size, sets.setdefault(key, len(sets))]
            )
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "gen": gen,
            "labels": [json.loads(k) for k in sets],
            "rows": table,
            "broken": sorted(v for v, r in rows.items() if r is None),
        }
        _write_atomic(self.dir / f"{name}.json", json.dumps(doc, separators=(",", ":")))

    def rows(self, name: str, lock: Callable[[], Any]) -> Rows:
        """The rows of `name`: from the index when current, else scanned (and the index repaired
        when the name lock is free; `lock()` returns a non-blocking FileLock)."""
        cached = self.read(name)
        if cached is not None:
            return cached
        if not (self.models_dir / name).is_dir():
            return {}  # no such name: nothing to cache, and a listing never creates files
        from filelock import Timeout

        try:
            with lock():
                rows = self._scan(name)
                with contextlib.suppress(OSError):  # a read-only store still lists
                    self._commit(name, rows)
                return rows
        except (Timeout, OSError):
            return self._scan(name)  # a writer is busy (it will write the index) or read-only

    def _commit(self, name: str, rows: Rows) -> None:
        """Write `rows` as the current index of `name`, then publish its generation. Lock held."""
        self.dir.mkdir(parents=True, exist_ok=True)
        gen = os.urandom(8).hex()
        self._write(name, rows, gen)
        _write_atomic(self.dir / f"{name}.gen", gen)

    @contextlib.contextmanager
    def changing(self, name: str) -> Iterator[Rows]:
        """Bracket a change of `name` (call with the name lock held).

        Yields the current rows for the caller to update in place to the state after its change;
        on success they become the index. On an exception the name is rescanned instead; if that
        fails too, the name stays dirty and the next reader rescans.
        """
        rows = self.read(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._mark_dirty(name)
        if rows is None:
            rows = self._scan(name)
        try:
            yield rows
        except BaseException:
            with contextlib.suppress(Exception):
                self._commit(name, self._scan(name))
            raise
        try:
            self._commit(name, rows)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # The change itself is done; the name stays dirty (or unmarked), so readers rescan
            # until a writer with room rewrites the index.

    def _mark_dirty(self, name: str) -> None:
        gen = self.dir / f"{name}.gen"
        try:
            _write_atomic(gen, DIRTY + os.urandom(8).hex(), durable=True)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # A full disk has no room for the mark; no generation file at all makes every
            # reader rescan just as surely, and removing one needs no space.
            gen.unlink(missing_ok=True)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def leftovers(self, names: set[str], alive: Callable[[int], bool]) -> list[Path]:
        """Index files `gc` may remove: those of names no longer in the store, and temp files
        of writers that died (`.<file>.<pid>.<rand>.tmp`). Removing any index file is safe: the
        next reader rebuilds it."""
        try:
            entries = os.listdir(self.dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for entry in entries:
            if entry.endswith(".tmp"):
                parts = entry.split(".")
                pid = parts[-3] if len(parts) >= 4 else ""
                if not (pid.isdigit() and alive(int(pid))):
                    out.append(self.dir / entry)
            elif entry.endswith((".json", ".gen")) and entry.rsplit(".", 1)[0] not in names:
                out.append(self.dir / entry)
        return out
