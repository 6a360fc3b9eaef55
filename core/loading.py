"""Loading a stored version: the one read-and-verify of a file, and rebuilding the module.

`lifecycle` (load_model) and `model` (Model.load_model, custom objects) both call in here, so
neither imports the other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import formats
from .errors import FormatError, IntegrityError, NotFound, UntrustedError
from .manifest import MANIFEST, Manifest

if TYPE_CHECKING:
    import torch

    from .store import Store


def read_verified(manifest: Manifest, vdir: Path, rel: str) -> bytes:
    """The bytes of one file of a version, refused unless they hash to the manifest's sha256.

    Read once and checked in memory, so what is decoded is exactly what was checked.
    """
    tag = f"{manifest.name}:{manifest.version}"
    try:
        data = (vdir / rel).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{tag}: file {rel} is missing", rel) from None
    if hashlib.sha256(data).hexdigest() != manifest.files[rel].sha256:
        raise IntegrityError(
            f"{tag}: file {rel} does not match its sha256 in the manifest; the version is "
            "corrupt, delete and re-import it",
            rel,
        )
    return data


def load_manifest(store: Store, manifest: Manifest, device_id: Any = None) -> Any:
    """Check a version's files (stat-cached) and rebuild its module on the device.

    A version deleted while it loads is `NotFound` (as if it had gone a moment earlier), never
    an `IntegrityError` about its vanished files.
    """
    from .devices import resolve_device

    device = resolve_device(device_id)
    vdir = store.version_dir(manifest.name, manifest.version)
    try:
        return _load_checked(store, manifest, vdir, device)
    except Exception:
        if (vdir / MANIFEST).exists():
            raise
        raise NotFound(
            f"model {manifest.name}:{manifest.version} was deleted while loading; see "
            f"`shelf list {manifest.name}`"
        ) from None


def _load_checked(store: Store, manifest: Manifest, vdir: Path, device: torch.device) -> Any:
    store.check(manifest)
    tag = f"{manifest.name}:{manifest.version}"
    if manifest.format == "torchscript":
        return formats.torchscript_load(vdir / formats.TORCHSCRIPT, device).eval()
    from .weights import read_safetensors

    structure = manifest.structure
    trusted = store.is_trusted(manifest.name, manifest.version)
    pickle_rel = structure.get("pickle")
    if trusted and pickle_rel:
        data = read_verified(manifest, vdir, pickle_rel)
        weights = read_safetensors(vdir / formats.WEIGHTS, _st_device(device))
        try:
            model = formats.load_with_tensors(data, weights.__getitem__)
        except (ImportError, AttributeError) as exc:
            raise FormatError(
                f"cannot rebuild {tag}: {exc}; is the module that defines "
                f"{manifest.module_class} installed?"
            ) from None
    elif structure.get("class"):
        weights = read_safetensors(vdir / formats.WEIGHTS, _st_device(device))
        model = formats.build_from_class(structure["class"], weights, structure.get("aliases", {}))
    else:
        raise UntrustedError(
            f"{tag} was imported from an archive and its structure is a pickle, which runs code "
            f"when loaded; if you trust its source, run `shelf trust {tag}`"
        )
    formats.check_no_meta(model)
    return model.eval()


def _st_device(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else str(device)
