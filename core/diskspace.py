"""Full disks: one clear `StoreFull` error, naming the store and the space needed.

Every write into the store (save, import, pull, label changes, deletes) can hit ENOSPC or a
quota (EDQUOT). Writes check the free space up front when they know their size, and translate
a disk-full `OSError` raised midway into `StoreFull` once their staging directory has been
removed, so the free space the message reports is what the user really has.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreFull

__all__ = ["DISK_FULL_ERRNOS", "is_disk_full", "free_bytes", "ensure_free", "translate_full"]

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Room a commit needs beyond the data: manifest, its sums, the stat cache, origin, directories.
COMMIT_OVERHEAD = 64 * 1024


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from, is a disk-full `OSError`."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def free_bytes(root: Path) -> int:
    """Bytes free for an unprivileged writer on the filesystem holding `root` (or its parent)."""
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def human_size(size: int) -> str:
    """Bytes as people read them: 512 B, 1.5 KiB, 3.2 GiB (messages and `shelf list`)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def store_full(root: Path, what: str, needed: int | None) -> StoreFull:
    free = free_bytes(root)
    need = f"needs {human_size(needed)}" if needed is not None else "needs more space"
    return StoreFull(
        f"store {root} is full: {what} {need}, {human_size(free)} free; free some space "
        "(`shelf gc` removes leftovers of interrupted writes) and try again",
        str(root),
        needed,
        free,
    )


def ensure_free(root: Path, needed: int, what: str) -> None:
    """Refuse before writing anything when `needed` bytes (plus commit overhead) do not fit."""
    if needed + COMMIT_OVERHEAD > free_bytes(root):
        raise store_full(root, what, needed)


@contextlib.contextmanager
def translate_full(root: Path, what: str, needed: int | None = None) -> Iterator[None]:
    """Turn a disk-full error raised inside the block into `StoreFull`; others pass through.

    Put it outside the block that discards the staging directory, so that the free space the
    message reports is measured after the cleanup.
    """
    try:
        yield
    except StoreFull:
        raise
    except BaseException as exc:
        if not is_disk_full(exc):
            raise
        raise store_full(root, what, needed) from None


def remove_quietly(path: Path) -> None:
    """Unlink a temp file left by a failed write; gone already is fine."""
    with contextlib.suppress(OSError):
        os.unlink(path)
