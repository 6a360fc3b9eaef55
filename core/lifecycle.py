"""save_model, load_model and get: the lifecycle API over the store chosen by config."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from . import dtypes, formats
from .diskspace import ensure_free, is_disk_full, store_full, translate_full
from .errors import FormatError, InvalidName, NotFound, UsageError
from .loading import load_manifest
from .manifest import FileRecord, Manifest, Progress, hash_file
from .metadata import check_labels, convert_metadata
from .model import Model
from .signature import stored_batch_dim
from .store import Store, default_store, now_iso
from .tag import LATEST, Tag, new_version, validate_version


def _check_input_spec(method: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), (list, tuple)):
        raise UsageError(
            f"signature {method!r}: input_spec must be {{'shape': [...], 'dtype': ...}}"
        )
    shape = list(spec["shape"])
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
        raise UsageError(f"signature {method!r}: input_spec shape must be ints >= -1 (-1 = free)")
    dtype = str(spec.get("dtype", "float32")).removeprefix("torch.")
    if dtypes.find(dtype) is None:
        raise UsageError(
            f"signature {method!r}: unknown input_spec dtype {dtype!r}; use one of "
            + ", ".join(dtypes.spec_names())
        )
    return {**spec, "shape": shape, "dtype": dtype}


def normalize_signatures(signatures: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Fill defaults and check types: `{method: {"batchable", "batch_dim", ["input_spec"]}}`.

    A method may be any name, as in BentoML (`__call__`, `forward`, `predict`, a name set with
    `setattr`); `shelf serve` reports a name the loaded model lacks. `batch_dim` is an int or
    BentoML's `(input, output)` pair, stored as an int when both agree.
    """
    if not signatures:
        return {"__call__": {"batchable": False, "batch_dim": 0}}
    if not isinstance(signatures, dict):
        raise UsageError("signatures must be a dict of method name to signature")
    out: dict[str, dict[str, Any]] = {}
    for method, sig in signatures.items():
        if not isinstance(method, str) or not method.strip() or "/" in method:
            raise UsageError(
                f"signature name {method!r} must be a method name (a non-empty string without '/')"
            )
        sig = _signature_dict(method, sig)
        if not isinstance(sig.get("batchable", False), bool):
            raise UsageError(f"signature {method!r}: batchable must be true or false")
        sig.setdefault("batchable", False)
        sig["batch_dim"] = stored_batch_dim(sig.get("batch_dim", 0), method)
        if "input_spec" in sig and sig["input_spec"] is not None:
            spec = sig["input_spec"]
            sig["input_spec"] = (
                [_check_input_spec(method, s) for s in spec]
                if isinstance(spec, list) and spec and isinstance(spec[0], dict)
                else _check_input_spec(method, spec)
            )
        try:
            json.dumps(sig)
        except (TypeError, ValueError):
            raise UsageError(f"signature {method!r} must be JSON-serialisable") from None
        out[method] = sig
    return out


def _signature_dict(method: str, sig: Any) -> dict[str, Any]:
    """A signature given as a dict, a `Signature` or BentoML's `ModelSignature`-like object."""
    if sig is None:
        return {}
    if isinstance(sig, dict):
        return dict(sig)
    if hasattr(sig, "batchable"):  # an attrs/dataclass ModelSignature from ported code
        found = {k: getattr(sig, k, None) for k in ("batchable", "batch_dim", "input_spec")}
        return {k: v for k, v in found.items() if v is not None}
    raise UsageError(f"signature {method!r} must be a dict such as {{'batchable': True}}")


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be JSON-serialisable: {exc}") from None


def save_model(
    name: str | Tag,
    model: Any,
    *,
    signatures: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    custom_objects: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    version: str | None = None,
    init_kwargs: dict[str, Any] | None = None,
    external_modules: Iterable[ModuleType] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Model:
    """Save an `nn.Module` (weights as safetensors) or a ScriptModule (TorchScript).

    `name` is `name` (a new version is made) or `name:version`. Returns the saved `Model`, which
    is also its `Tag`: `str()` gives `name:version`, and `.path`, `.info`, `.custom_objects`
    work as on `get()`. The version appears only once complete; a failure leaves nothing.
    `external_modules` are pickled by value (their code goes into the version), for custom
    objects and model classes defined in modules that will not be importable where it loads.

    Example:
        >>> saved = torchshelf.save_model("classifier", model, labels={"stage": "dev"},
        ...                               signatures={"__call__": {"batchable": True}})
        >>> str(saved), saved.path
        ('classifier:20261124T135501123456Z-a1b2c3', '/home/me/.torchshelf/models/...')
    """
    import torch

    name, version = _name_and_version(name, version)
    sigs = normalize_signatures(signatures)
    labels = check_labels(labels)
    metadata = convert_metadata(metadata)
    _check_json("metadata", metadata)
    if not isinstance(model, torch.nn.Module):
        raise FormatError(
            f"save_model expects a torch.nn.Module or torch.jit.ScriptModule, got {type(model).__name__}"
        )
    st = default_store(store)
    with translate_full(st.root, f"saving {name}"):
        staging = st.stage()
    needed: list[int] = []  # the weights' bytes, once known (for a full-disk message)
    try:
        with pickled_by_value(external_modules):
            files: dict[str, FileRecord] = {}
            fmt, module_class, structure = _write_module(
                st, name, staging, model, init_kwargs, files, progress, needed
            )
            objects = _save_custom_objects(staging, custom_objects or {}, files)
        manifest = Manifest(
            name=name,
            version=version or new_version(),
            creation_time=now_iso(),
            format=fmt,
            torch_version=torch.__version__,
            module_class=module_class,
            files=files,
            labels=labels,
            metadata=metadata,
            signatures=sigs,
            structure=structure,
            custom_objects=objects,
        )
        manifest = st.commit(staging, manifest, auto_version=version is None)
    except BaseException as exc:
        st.discard(staging)
        if is_disk_full(exc):  # reported after the cleanup, so the free space is real
            raise store_full(st.root, f"saving {name}", needed[0] if needed else None) from None
        raise
    return Model(st, manifest)


def _name_and_version(name: object, version: str | None) -> tuple[str, str | None]:
    """`save_model`'s name (`name` or `name:version`, or a `Tag`) and `version=`, checked."""
    if not isinstance(name, (str, Tag)):
        raise InvalidName(f"model name must be a string, not {type(name).__name__}")
    tag = Tag.from_taglike(name)
    if tag.version == LATEST:
        raise InvalidName("'latest' is reserved: it always means the newest version")
    if version is not None:
        version = validate_version(str(version))
        if tag.version is not None and tag.version != version:
            raise UsageError(f"two versions given: {str(name)!r} and version={version!r}")
    return tag.name, version or tag.version


@contextlib.contextmanager
def pickled_by_value(modules: Iterable[ModuleType] | None) -> Iterator[None]:
    """Have cloudpickle pickle `modules` by value while saving (as BentoML's `external_modules`)."""
    modules = list(modules or ())
    for mod in modules:
        if not isinstance(mod, ModuleType):
            raise UsageError(f"external_modules takes imported modules, not {mod!r}")
    if not modules:
        yield
        return
    import cloudpickle

    before = set(cloudpickle.list_registry_pickle_by_value())
    added = [m for m in modules if m.__name__ not in before]
    for mod in added:
        cloudpickle.register_pickle_by_value(mod)
    try:
        yield
    finally:
        for mod in added:
            cloudpickle.unregister_pickle_by_value(mod)


def _write_module(
    st: Store,
    name: str,
    staging: Path,
    model: Any,
    init_kwargs: dict[str, Any] | None,
    files: dict[str, FileRecord],
    progress: Progress | None,
    needed: list[int],
) -> tuple[str, str | None, dict[str, Any]]:
    """Write the module's files into `staging`: `(format, module class, structure record)`.

    The weights' size is appended to `needed` and checked against the free space before
    anything large is written.
    """
    import torch

    if formats.is_scriptmodule(model):
        torch.jit.save(model, str(staging / formats.TORCHSCRIPT))
        files[formats.TORCHSCRIPT] = hash_file(staging / formats.TORCHSCRIPT, progress)
        return "torchscript", getattr(model, "original_name", None), {}
    tensors, aliases, is_param = formats.split_ties(model)
    needed.append(sum(t.numel() * t.element_size() for t in tensors.values()))
    ensure_free(st.root, needed[0], f"saving {name}")
    names = {id(t): n for n, t in tensors.items()}
    for alias, canonical in aliases.items():
        obj = model.get_parameter(alias) if is_param[alias] else model.get_buffer(alias)
        names.setdefault(id(obj), canonical)
    data, extras = formats.dump_without_tensors(model, names, "__extra__.")
    (staging / formats.STRUCTURE).write_bytes(data)
    files[formats.STRUCTURE] = hash_file(staging / formats.STRUCTURE)
    from .weights import write_safetensors

    files[formats.WEIGHTS] = write_safetensors(
        staging / formats.WEIGHTS, {**tensors, **extras}, {"format": "pt"}, progress
    )
    structure = {
        "pickle": formats.STRUCTURE,
        "class": formats.class_structure(model, init_kwargs),
        "aliases": aliases,
        "parameters": sorted(n for n in tensors if is_param.get(n)),
    }
    return "safetensors", formats.class_path(model), structure


def _save_custom_objects(
    staging: Path, objects: dict[str, Any], files: dict[str, Any]
) -> dict[str, Any]:
    from .weights import write_safetensors

    out: dict[str, Any] = {}
    if objects:
        (staging / "custom_objects").mkdir()
    for i, (key, value) in enumerate(objects.items()):
        if not isinstance(key, str) or not key:
            raise UsageError(f"custom object keys must be non-empty strings, got {key!r}")
        kind, data, tensors = formats.encode_custom_object(value)
        ext = {"json": "json", "tensors": "json", "pickle": "pkl"}[kind]
        rel = f"custom_objects/{i}.{ext}"
        (staging / rel).write_bytes(data)
        files[rel] = hash_file(staging / rel)
        rec = {"kind": kind, "file": rel}
        if tensors:
            trel = f"custom_objects/{i}.safetensors"
            files[trel] = write_safetensors(staging / trel, tensors)
            rec["tensors"] = trel
        out[key] = rec
    return out


def load_model(
    tag: Any, device_id: str | None = None, *, store: Store | str | None = None, remote: Any = None
) -> Any:
    """Load a stored model in eval mode, weights straight onto `device_id`.

    `tag` is `name`, `name:latest`, `name:version`, a `Tag` or a `Model`. Changed files are
    detected (`IntegrityError`); unchanged ones are not re-hashed.

    With `remote` (an `s3://` URL, a `Remote`, or `True` for the configured remote), the local
    store is a cache: a version missing locally is pulled (and verified) first. A pinned
    `name:version` already in the cache needs no network; `name`/`name:latest` asks the remote
    which version is newest.

    Example:
        >>> model = torchshelf.load_model("classifier:latest", device_id="cuda:0")
        >>> model = torchshelf.load_model("classifier:3", remote="s3://models/team")
    """
    st = default_store(store)
    if remote is not None and remote is not False:
        return load_manifest(st, _cached(st, tag, remote), device_id)
    return load_manifest(st, st.resolve(tag), device_id)


def _cached(st: Store, tag: Any, remote: Any) -> Manifest:
    """The local manifest of `tag`, pulling it from `remote` when the cache lacks it."""
    from .remote import open_remote
    from .tag import parse_tag

    name, version = parse_tag(tag)
    if version is not None:
        try:
            return st.resolve(tag)  # exact, or a unique prefix of a cached version
        except NotFound:
            pass
    rem = open_remote(remote)
    transfer = rem.pull(st, tag)
    return st.resolve(transfer.tag)  # a pull always names the exact version it fetched


def get(tag: Any, *, store: Store | str | os.PathLike[str] | None = None) -> Model:
    """A `Model` reference to a stored version; loads no weights (and never imports torch)."""
    st = default_store(store)
    return Model(st, st.resolve(tag))
