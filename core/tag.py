"""Model names, versions and tags (`name:version`): validation, parsing and new versions.

A name or version that fails these rules is never turned into a path on disk.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

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
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True, order=True)
class Tag:
    """A model name and version. `str(tag)` is `name:version`."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def from_str(cls, text: str) -> Tag:
        """Parse an exact `name:version` tag (no `latest`)."""
        name, version = parse_tag(text)
        if version is None:
            raise InvalidName(f"tag {text!r} has no version: write it as name:version")
        return cls(name, version)


def parse_tag(text: object) -> tuple[str, str | None]:
    """Split `name`, `name:latest` or `name:version`; version is None for the newest."""
    if isinstance(text, Tag):
        return text.name, text.version
    tag_attr = getattr(text, "tag", None)
    if isinstance(tag_attr, Tag):  # a Model reference
        return tag_attr.name, tag_attr.version
    if not isinstance(text, str) or not text.strip():
        raise InvalidName(f"invalid tag {text!r}: write it as name or name:version")
    name, sep, version = text.strip().partition(":")
    name = validate_name(name)
    if not sep or version == LATEST:
        return name, None
    if not version:
        raise InvalidName(f"invalid tag {text!r}: the version after ':' is empty")
    return name, validate_version(version)
