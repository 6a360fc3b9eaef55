"""`torchshelf.models`: list, get, delete, label, export, import, verify, trust, gc, push and pull."""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ManifestError, NotFound, UsageError
from .lifecycle import default_store
from .lifecycle import get as _get
from .manifest import Progress
from .model import Model
from .store import GcReport, Store
from .tag import LATEST, Tag

__all__ = [
    "list",
    "get",
    "delete",
    "set_labels",
    "export_model",
    "import_model",
    "verify",
    "trust",
    "gc",
    "push",
    "pull",
]

if TYPE_CHECKING:
    from .remote import Remote, Transfer

StoreLike = Store | str | os.PathLike[str] | None


def list(  # noqa: A001 - the seed's API name
    tag: Any = None,
    labels: dict[str, str] | Iterable[str] | None = None,
    *,
    latest: bool = False,
    store: StoreLike = None,
    name: str | None = None,
) -> builtins.list[Model]:
    """Stored versions, newest first; `labels` is `{"k": "v"}` or selector strings.

    `tag` (BentoML's argument; `name=` is the same) narrows the list: `name` gives its versions,
    `name:latest` the newest one, `name:version` that one (or `[]`). A name with no versions at
    all is `NotFound`, as in BentoML; with no `tag` an empty store lists `[]`.

    Example:
        >>> [str(m) for m in torchshelf.models.list("classifier", {"stage": "production"})]
        ['classifier:20261124T135501123456Z-a1b2c3']
    """
    st = default_store(store)
    if name is not None:
        if tag is not None and str(tag) != name:
            raise UsageError(f"give the model as tag= or name=, not both ({tag!r}, {name!r})")
        tag = name
    wanted = None if tag is None or tag == "" else Tag.from_taglike(tag)
    rows = st.list(wanted.name if wanted else None, labels, latest=latest)
    if wanted is not None:
        if not rows and not st.version_names(wanted.name):
            raise NotFound(f"no model named {wanted.name!r}; see `shelf list`")
        if wanted.version == LATEST:
            rows = rows[:1]
        elif wanted.version is not None:
            rows = [r for r in rows if r.version == wanted.version]
    out = []
    for row in rows:
        with contextlib.suppress(NotFound, ManifestError):  # deleted or broken since listed
            out.append(Model(st, st.read_manifest(row.name, row.version)))
    return out


def get(tag: Any, *, store: StoreLike = None) -> Model:
    """A reference to one version (`name`, `name:latest` or `name:version`)."""
    return _get(tag, store=store)


def delete(tag: Any, *, store: StoreLike = None) -> builtins.list[Tag]:
    """Delete `name:version`, or every version of a bare `name`; returns the deleted tags."""
    return default_store(store).delete(tag)


def set_labels(
    tag: Any, labels: dict[str, str], remove: Iterable[str] = (), *, store: StoreLike = None
) -> Model:
    """Set (and remove) labels on one version; other labels are kept."""
    st = default_store(store)
    return Model(st, st.set_labels(tag, dict(labels), remove))  # a non-str label is refused


def export_model(
    tag: Any,
    path: str | os.PathLike[str],
    *,
    store: StoreLike = None,
    progress: Progress | None = None,
) -> Path:
    """Write one version to a `.shelf` tar archive; returns the archive's path.

    A `path` without an extension gets `.shelf` (BentoML appends `.bentomodel`); an existing
    directory (or a path ending in `/`) gets `<name>-<version>.shelf` inside it.

    Example:
        >>> torchshelf.models.export_model("classifier:latest", "exports/")
        PosixPath('exports/classifier-20261124T135501123456Z-a1b2c3.shelf')
    """
    from . import archive

    return archive.export_model(default_store(store), tag, path, progress)


def import_model(
    path: str | os.PathLike[str],
    trust: bool = False,
    *,
    store: StoreLike = None,
    progress: Progress | None = None,
) -> Model:
    """Import an archive; pickled parts stay locked until `trust=True` or `trust(tag)`."""
    from . import archive

    st = default_store(store)
    return Model(st, archive.import_model(st, Path(path), trust=trust, progress=progress))


def verify(
    tags: Iterable[Any] = (), *, store: StoreLike = None
) -> builtins.list[tuple[Tag, Exception | None]]:
    """Re-hash every file of the given versions (all when none): `[(tag, error or None)]`."""
    return builtins.list(default_store(store).verify(tags))


def trust(tag: Any, *, store: StoreLike = None) -> Model:
    """Mark an imported version as trusted, allowing its pickled parts to load."""
    st = default_store(store)
    return Model(st, st.set_trusted(tag))


def gc(*, store: StoreLike = None) -> GcReport:
    """Remove leftovers of interrupted saves, imports and deletes."""
    return default_store(store).gc()


def push(
    tags: Any,
    *,
    remote: Remote | str | None = None,
    store: StoreLike = None,
    progress: Progress | None = None,
) -> builtins.list[Transfer]:
    """Upload versions to the remote store (default: the configured one).

    `tags` is one tag or a list; each is `name`, `name:latest` or `name:version`. A version
    already there with the same files is `unchanged`; with different files, `AlreadyExists`.

    Example:
        >>> torchshelf.models.push("classifier:latest", remote="s3://models/team")
        [Transfer(tag=Tag(name='classifier', version='...'), status='pushed', ...)]
    """
    from .remote import open_remote

    st, rem = default_store(store), open_remote(remote)
    return [rem.push(st, tag, progress) for tag in _tag_list(tags)]


def pull(
    tags: Any,
    *,
    remote: Remote | str | None = None,
    store: StoreLike = None,
    progress: Progress | None = None,
) -> builtins.list[Transfer]:
    """Download versions from the remote store; each appears locally only once fully verified.

    Pulled versions are trusted like locally saved ones (you chose the remote).

    Example:
        >>> torchshelf.models.pull("classifier")     # the newest version on the remote
    """
    from .remote import open_remote

    st, rem = default_store(store), open_remote(remote)
    return [rem.pull(st, tag, progress) for tag in _tag_list(tags)]


def _tag_list(tags: Any) -> builtins.list[Any]:
    return builtins.list(tags) if isinstance(tags, (builtins.list, tuple)) else [tags]
