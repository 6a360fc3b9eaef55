"""The exception hierarchy: every error torchshelf raises on purpose is a `ShelfError`.

Messages are one line and say what to do next. `exit_code` is what the `shelf` command exits
with: 1 when an operation failed, 2 when the request itself was wrong (bad usage).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ShelfError",
    "NotFound",
    "AmbiguousTag",
    "InvalidName",
    "AlreadyExists",
    "IntegrityError",
    "ManifestError",
    "UntrustedError",
    "FormatError",
    "DeviceError",
    "ArchiveError",
    "UsageError",
    "RemoteError",
    "StoreFull",
]


class ShelfError(Exception):
    """Base class of every torchshelf error."""

    exit_code: int = 1


class NotFound(ShelfError, LookupError):
    """A model, version or file that was asked for does not exist."""


class AmbiguousTag(ShelfError, LookupError):
    """A version prefix matches several versions; `candidates` are their tags."""

    exit_code = 2

    def __init__(self, message: str, candidates: list[Any] | None = None) -> None:
        super().__init__(message)
        self.candidates = list(candidates or [])


class InvalidName(ShelfError, ValueError):
    """A model name, version or tag does not follow the naming rules."""

    exit_code = 2


class UsageError(ShelfError, ValueError):
    """An argument combination or value that cannot work."""

    exit_code = 2


class AlreadyExists(ShelfError):
    """A version with this name already exists and versions are immutable."""


class IntegrityError(ShelfError):
    """A stored file does not match the hash or size recorded in its manifest.

    `path` names the offending file when there is one.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ManifestError(IntegrityError):
    """A manifest is missing, not valid JSON, or does not follow the schema."""


class UntrustedError(ShelfError):
    """Loading would unpickle data from an archive the user has not trusted."""


class FormatError(ShelfError):
    """The object cannot be stored, or a stored model cannot be rebuilt."""


class DeviceError(ShelfError, ValueError):
    """A device string is malformed or names a device this machine does not have."""

    exit_code = 2


class ArchiveError(ShelfError):
    """An export archive is malformed or unsafe and was refused."""


class RemoteError(ShelfError):
    """The remote store is not configured, not reachable, or refused the request."""


class StoreFull(ShelfError):
    """The store's filesystem has too little free space for a write; nothing was committed.

    `root` is the store, `needed` the bytes the operation needed (None when unknown) and `free`
    the bytes free once the failed write had been cleaned up.
    """

    def __init__(self, message: str, root: str, needed: int | None, free: int) -> None:
        super().__init__(message)
        self.root = root
        self.needed = needed
        self.free = free
