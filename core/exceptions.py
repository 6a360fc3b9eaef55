"""`torchshelf.exceptions`: the error types under BentoML's module name.

`from bentoml.exceptions import NotFound` becomes `from torchshelf.exceptions import NotFound`.
BentoML's base class name is kept as an alias of `ShelfError`, and its `InvalidArgument` and
`BadInput` as aliases of `UsageError`, so `except` clauses in ported code keep catching.
"""

from __future__ import annotations

from .errors import (
    AlreadyExists,
    ArchiveError,
    DeviceError,
    FormatError,
    IntegrityError,
    InvalidName,
    ManifestError,
    NotFound,
    RemoteError,
    ShelfError,
    UntrustedError,
    UsageError,
)

BentoMLException = ShelfError
InvalidArgument = UsageError
BadInput = UsageError

__all__ = [
    "AlreadyExists",
    "ArchiveError",
    "BadInput",
    "BentoMLException",
    "DeviceError",
    "FormatError",
    "IntegrityError",
    "InvalidArgument",
    "InvalidName",
    "ManifestError",
    "NotFound",
    "RemoteError",
    "ShelfError",
    "UntrustedError",
    "UsageError",
]
