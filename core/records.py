"""What the local `Store` and the S3 `Remote` share: one protocol, and the rules both apply.

Both answer the same questions with the same record types: `list` gives `ModelSummary` rows
(cheap: the local store reads them from its index), `list_info` and `get` give `ModelInfo`
records (everything a manifest says; `shelf get --output json` prints `to_dict()`), `resolve`
gives the `Manifest`. A version prefix resolves as in git (`pick_prefix`), and labels are
checked by one function (`check_labels`) wherever they are set.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .errors import AmbiguousTag, NotFound, UsageError
from .tag import Tag

if TYPE_CHECKING:
    from .index import ModelSummary
    from .manifest import Manifest
    from .model import ModelInfo
    from .store import GcReport

Labels = Iterable[str] | dict[str, str] | None


class ModelStore(Protocol):
    """The operations `Store` and `Remote` both offer, with the same names and options."""

    def list(
        self, name: str | None = None, labels: Labels = None, *, latest: bool = False
    ) -> builtins.list[ModelSummary]: ...

    def list_info(
        self, name: str | None = None, labels: Labels = None, *, latest: bool = False
    ) -> builtins.list[ModelInfo]: ...

    def read_manifest(self, name: str, version: str) -> Manifest: ...

    def resolve(self, tag: object) -> Manifest: ...

    def get(self, tag: object) -> ModelInfo: ...

    def set_labels(
        self, tag: object, labels: dict[str, str], remove: Iterable[str] = ()
    ) -> Manifest: ...

    def gc(self) -> GcReport: ...


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels map non-empty strings to strings; anything else is refused before a write."""
    for key, value in labels.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise UsageError(f"invalid label {key!r}={value!r}: keys and values are strings")
    return labels


MIN_PREFIX = 4  # as git: shorter abbreviations never resolve (`m:v1` must not find `m:v10`)


def merge_labels(
    manifest: Manifest, labels: dict[str, str], remove: Iterable[str] = ()
) -> dict[str, str]:
    """The labels a label change leaves: `remove` keys dropped, then `labels` set."""
    gone = set(remove)
    return {**{k: v for k, v in manifest.labels.items() if k not in gone}, **labels}


def pick_prefix(name: str, prefix: str, versions: Iterable[str], where: str = "") -> str:
    """The one version of `name` that starts with `prefix` (git's rule for short hashes).

    Called only after an exact match failed. Prefixes shorter than `MIN_PREFIX` match nothing,
    so a pinned short version that was deleted is `NotFound`, not a longer namesake.
    """
    found = sorted(v for v in versions if v.startswith(prefix)) if len(prefix) >= MIN_PREFIX else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound(f"model {name}:{prefix} not found{where}; see `shelf list {name}`")
    shown = ", ".join(f"{name}:{v}" for v in found[:10]) + (" ..." if len(found) > 10 else "")
    raise AmbiguousTag(
        f"version prefix {name}:{prefix} is ambiguous{where}: {len(found)} versions match "
        f"({shown}); give more characters",
        [Tag(name, v) for v in found],
    )
