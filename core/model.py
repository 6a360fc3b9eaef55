"""`Model`: a reference to one stored version. Reading it loads no weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .manifest import Manifest
from .tag import Tag

if TYPE_CHECKING:
    from .store import Store


@dataclass(frozen=True)
class ModelInfo:
    """Everything the manifest says about a version, plus where it is and whether it is trusted."""

    tag: Tag
    name: str
    version: str
    path: Path
    creation_time: datetime
    format: str
    labels: dict[str, str]
    metadata: dict[str, Any]
    signatures: dict[str, dict[str, Any]]
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
            path=Path(path) if not isinstance(path, str) or "://" not in path else path,  # type: ignore[arg-type]
            creation_time=datetime.fromisoformat(m.creation_time),
            format=m.format,
            labels=dict(m.labels),
            metadata=dict(m.metadata),
            signatures={k: dict(v) for k, v in m.signatures.items()},
            torch_version=m.torch_version,
            module_class=m.module_class,
            size=m.size,
            files={k: dict(v) for k, v in m.files.items()},
            custom_objects=tuple(m.custom_objects),
            trusted=trusted,
        )

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
    """The custom objects of a version, each decoded (and hash-checked) on first access."""

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

    def __repr__(self) -> str:
        return f"<CustomObjects {list(self._manifest.custom_objects)}>"


class Model:
    """A stored version: its tag, path, labels, metadata and signatures; weights load on demand."""

    def __init__(self, store: Store, manifest: Manifest) -> None:
        self._store = store
        self._manifest = manifest
        self._custom: CustomObjects | None = None

    @property
    def tag(self) -> Tag:
        return Tag(self._manifest.name, self._manifest.version)

    @property
    def name(self) -> str:
        return self._manifest.name

    @property
    def version(self) -> str:
        return self._manifest.version

    @property
    def path(self) -> Path:
        return self._store.version_dir(self._manifest.name, self._manifest.version)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._manifest.labels)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._manifest.metadata)

    @property
    def signatures(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._manifest.signatures.items()}

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
            self._custom = CustomObjects(self._store, self._manifest, self.trusted)
        return self._custom

    def load_model(self, device_id: str | None = None) -> Any:
        """Load this version's module onto `device_id` (see `torchshelf.load_model`)."""
        from .loading import load_manifest

        return load_manifest(self._store, self._manifest, device_id)

    def __repr__(self) -> str:
        return f"Model(tag={str(self.tag)!r}, path={str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and (self.tag, self.path) == (other.tag, other.path)

    def __hash__(self) -> int:
        return hash((self.tag, self.path))
