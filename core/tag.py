"""Model names, versions and tags (`name:version`): validation, parsing and new versions.

A name or version that fails these rules is never turned into a path on disk.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from typing import Any

from .errors import InvalidName

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
LATEST = "latest"


def validate_name(name: str) -> str:
    """Return the case-folded model name, or raise `InvalidName`."""
    if not isinstance(name, str):
        raise InvalidName(f"model name must be a string, not {type(name).__name__}")
    folded = name.strip().lower()
    if not NAME_RE.match(folded) or ".." in folded:
        raise InvalidName(
            f"invalid model name {name!r}: use 1-64 characters of a-z, 0-9, '.', '_', '-', "
            "starting and ending with a letter or digit"
        )
    return folded


def validate_version(version: str) -> str:
    """Return the version unchanged, or raise `InvalidName`."""
    if not isinstance(version, str) or not VERSION_RE.match(version) or ".." in version:
        raise InvalidName(
            f"invalid version {version!r}: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', "
            "'+', '-', starting with a letter or digit"
        )
    if version == LATEST:
        raise InvalidName("'latest' is reserved: it always means the newest version")
    return version


def new_version() -> str:
    """A fresh version string that sorts by creation time and is unique across processes.

    UTC timestamp to the microsecond plus 24 random bits, e.g. `20261124T135501123456Z-a1b2c3`.
    """
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + os.urandom(3).hex()  # as secrets.token_hex


class Tag:
    """A model name and an optional version. `str(tag)` is `name:version` (or `name`).

    Built like BentoML's: `Tag("classifier")`, `Tag("classifier", "v3")`, `Tag.from_str(text)`,
    `Tag.from_taglike(tag_or_text)`. The name is checked (and case-folded) when the tag is built,
    so an invalid name never reaches the disk; a version of `None` or `"latest"` means the newest.
    Tags compare and hash by `(name, version)`, so every `Tag` subclass (a saved `Model`) equals
    the plain tag with the same name and version.
    """

    __slots__ = ("name", "version")
    name: str
    version: str | None

    def __init__(self, name: str, version: str | None = None) -> None:
        object.__setattr__(self, "name", validate_name(name))
        if version is not None and version != LATEST:
            version = validate_version(version)
        object.__setattr__(self, "version", version)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: build a new Tag instead")

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"

    def __repr__(self) -> str:
        return f"Tag(name={self.name!r}, version={self.version!r})"

    def _key(self) -> tuple[str, str]:
        return self.name, "" if self.version is None else self.version

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tag):
            return NotImplemented
        return (self.name, self.version) == (other.name, other.version)

    def __hash__(self) -> int:
        return hash((self.name, self.version))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Tag):
            return NotImplemented
        return self._key() < other._key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Tag):
            return NotImplemented
        return self._key() <= other._key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Tag):
            return NotImplemented
        return self._key() > other._key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Tag):
            return NotImplemented
        return self._key() >= other._key()

    def __reduce__(self) -> tuple[Any, ...]:
        return Tag, (self.name, self.version)

    @property
    def is_latest(self) -> bool:
        """True when the tag names no fixed version (`name` or `name:latest`)."""
        return self.version is None or self.version == LATEST

    @classmethod
    def from_str(cls, text: str) -> Tag:
        """Parse `name`, `name:latest` or `name:version` (a trailing `:` is an error)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidName(f"invalid tag {text!r}: write it as name or name:version")
        name, sep, version = text.strip().partition(":")
        if sep and not version:
            raise InvalidName(
                f"invalid tag {text!r}: nothing after ':'; did you mean {name}:latest?"
            )
        return Tag(name, version or None)

    @classmethod
    def from_taglike(cls, taglike: object) -> Tag:
        """A `Tag` as is (a saved `Model` gives its plain tag), else `from_str` of the text."""
        if isinstance(taglike, Tag):
            return Tag(taglike.name, taglike.version) if type(taglike) is not Tag else taglike
        tag_attr = getattr(taglike, "tag", None)
        if isinstance(tag_attr, Tag):
            return cls.from_taglike(tag_attr)
        if not isinstance(taglike, str):
            raise InvalidName(f"invalid tag {taglike!r}: write it as name or name:version")
        return cls.from_str(taglike)


def parse_tag(text: object) -> tuple[str, str | None]:
    """Split `name`, `name:latest` or `name:version`; version is None for the newest."""
    tag = Tag.from_taglike(text)
    return tag.name, None if tag.is_latest else tag.version
