"""`Model`: a reference to one stored version. Reading it loads no weights.

A `Model` is also a `Tag` (its `str()` is `name:version` and it compares and hashes like the
tag), so `save_model` can return one object that serves both the code that prints the tag and
the code that reads `.path`, `.info` or `.custom_objects` as BentoML's `bentoml.Model` offers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .manifest import Manifest
from .signature import Signature
from .tag import Tag

if TYPE_CHECKING:
    from .store import Store


MODULES = {"safetensors": "torchshelf.pytorch", "torchscript": "torchshelf.torchscript"}


class ModelPath(str):
    """A version's directory as a `str` (BentoML's type for `Model.path`) that also acts as a path.

    `os.path.join(p, ...)`, `open(...)`, `Path(p)` and `os.fspath(p)` work as with any `str`;
    `p / "weights.safetensors"` gives a `Path`, and `Path`'s methods (`exists()`, `name`,
    `iterdir()`, ...) are answered by `Path(p)`.
    """

    __slots__ = ()

    def __fspath__(self) -> str:
        return str.__str__(self)

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return Path(self) / other

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(Path(str.__str__(self)), name)


@dataclass(frozen=True)
class ModelInfo:
    """Everything the manifest says about a version, plus where it is and whether it is trusted."""

    tag: Tag
    name: str
    version: str
    path: str  # a `ModelPath` for a local version, the URL for a remote one
    creation_time: datetime
    format: str
    labels: dict[str, str]
    metadata: dict[str, Any]
    signatures: dict[str, Signature]
    torch_version: str
    module_class: str | None
    size: int
    files: dict[str, dict[str, Any]]
    custom_objects: tuple[str, ...]
    trusted: bool

    @classmethod
    def from_manifest(cls, manifest: Manifest, path: Path | str, trusted: bool) -> ModelInfo:
        """The record of a version, local (`path` its directory) or remote (`path` its URL)."""
        m = manifest
        return cls(
            tag=Tag(m.name, m.version),
            name=m.name,
            version=m.version,
            path=path if isinstance(path, str) and "://" in path else ModelPath(path),
            creation_time=datetime.fromisoformat(m.creation_time),
            format=m.format,
            labels=dict(m.labels),
            metadata=dict(m.metadata),
            signatures={k: Signature(v) for k, v in m.signatures.items()},
            torch_version=m.torch_version,
            module_class=m.module_class,
            size=m.size,
            files={k: v.to_dict() for k, v in m.files.items()},
            custom_objects=tuple(m.custom_objects),
            trusted=trusted,
        )

    @property
    def module(self) -> str:
        """The torchshelf module that loads this format (BentoML's `info.module`)."""
        return MODULES.get(self.format, "torchshelf.pytorch")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what `shelf get --output json` prints)."""
        return {
            "tag": str(self.tag),
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "creation_time": self.creation_time.isoformat(),
            "format": self.format,
            "labels": self.labels,
            "metadata": self.metadata,
            "signatures": self.signatures,
            "torch_version": self.torch_version,
            "module_class": self.module_class,
            "size": self.size,
            "files": self.files,
            "custom_objects": list(self.custom_objects),
            "trusted": self.trusted,
        }


class CustomObjects(Mapping[str, Any]):
    """The custom objects of a version, each decoded (and hash-checked) on first access.

    A read-only mapping with the dict API that reading code uses (`[]`, `get`, `in`, `keys`,
    `items`, `==` with a dict, `copy()`); decoding per key means a JSON object reads even when a
    pickled neighbour is locked (untrusted import).
    """

    def __init__(self, store: Store, manifest: Manifest, trusted: bool) -> None:
        self._store = store
        self._manifest = manifest
        self._trusted = trusted
        self._cache: dict[str, Any] = {}

    def _read_checked(self, rel: str) -> bytes:
        from .loading import read_verified

        vdir = self._store.version_dir(self._manifest.name, self._manifest.version)
        return read_verified(self._manifest, vdir, rel)

    def __getitem__(self, key: str) -> Any:
        if key in self._cache:
            return self._cache[key]
        rec = self._manifest.custom_objects[key]  # KeyError for unknown keys, as a dict
        from .formats import decode_custom_object
        from .weights import read_safetensors_bytes

        tag = f"{self._manifest.name}:{self._manifest.version}"
        if rec["kind"] == "pickle" and not self._trusted:
            decode_custom_object("pickle", b"", {}, trusted=False, key=key, tag=tag)  # raises
        data = self._read_checked(rec["file"])
        tensors = (
            read_safetensors_bytes(self._read_checked(rec["tensors"])) if rec.get("tensors") else {}
        )
        value = decode_custom_object(
            rec["kind"], data, tensors, trusted=self._trusted, key=key, tag=tag
        )
        self._cache[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._manifest.custom_objects)

    def __len__(self) -> int:
        return len(self._manifest.custom_objects)

    def copy(self) -> dict[str, Any]:
        """A plain `dict` of every custom object (each decoded now)."""
        return dict(self.items())

    def __repr__(self) -> str:
        return f"<CustomObjects {list(self._manifest.custom_objects)}>"


class Model(Tag):
    """A stored version: a `Tag` with its store behind it; weights load on demand.

    `str(model)` is `name:version` and `model == Tag(name, version)`, so a `Model` goes wherever
    a tag does (`load_model(model)`, f-strings, dict keys). Its attributes are BentoML's:
    `.tag`, `.path` (a `str`), `.path_of(...)`, `.info`, `.custom_objects`, `.labels`, ...
    """

    version: str  # a stored version always has one

    def __init__(self, store: Store, manifest: Manifest) -> None:
        super().__init__(manifest.name, manifest.version)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_manifest", manifest)
        object.__setattr__(self, "_custom", None)

    _store: Store
    _manifest: Manifest
    _custom: CustomObjects | None

    @property
    def tag(self) -> Tag:
        """The plain `Tag` (name and version) of this version."""
        return Tag(self._manifest.name, self._manifest.version)

    @property
    def path(self) -> ModelPath:
        """The version's directory: a `str` that also works as a path (see `ModelPath`)."""
        return ModelPath(self._store.version_dir(self._manifest.name, self._manifest.version))

    def path_of(self, item: str) -> ModelPath:
        """The path of `item` inside the version directory (BentoML's `Model.path_of`)."""
        return ModelPath(os.path.join(self.path, item.lstrip("/")))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._manifest.labels)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._manifest.metadata)

    @property
    def signatures(self) -> dict[str, Signature]:
        """Each method's signature: a dict of its stored JSON with attribute access too."""
        return {k: Signature(v) for k, v in self._manifest.signatures.items()}

    @property
    def creation_time(self) -> datetime:
        return datetime.fromisoformat(self._manifest.creation_time)

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def trusted(self) -> bool:
        return self._store.is_trusted(self._manifest.name, self._manifest.version)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_manifest(self._manifest, self.path, self.trusted)

    @property
    def custom_objects(self) -> CustomObjects:
        """Custom objects, decoded on first access; pickled ones need a trusted version."""
        if self._custom is None:
            object.__setattr__(
                self, "_custom", CustomObjects(self._store, self._manifest, self.trusted)
            )
        assert self._custom is not None
        return self._custom

    def load_model(self, device_id: str | None = None) -> Any:
        """Load this version's module onto `device_id` (see `torchshelf.load_model`)."""
        from .loading import load_manifest

        return load_manifest(self._store, self._manifest, device_id)

    def __repr__(self) -> str:
        return f'Model(tag="{self.tag}", path="{self.path}")'

    def __reduce__(self) -> tuple[Any, ...]:
        return Model, (self._store, self._manifest)
