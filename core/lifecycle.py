"""save_model, load_model and get: the lifecycle API over the store chosen by config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import formats
from .errors import FormatError, NotFound, UsageError
from .loading import load_manifest
from .manifest import Manifest, Progress, hash_file
from .model import Model
from .store import Store, default_store, now_iso
from .tag import Tag, new_version, validate_name, validate_version

if TYPE_CHECKING:
    pass

_DTYPE_NAMES = {
    "float32",
    "float",
    "float64",
    "double",
    "float16",
    "half",
    "bfloat16",
    "int64",
    "long",
    "int32",
    "int",
    "int16",
    "short",
    "int8",
    "uint8",
    "bool",
    "complex64",
}


def _check_input_spec(method: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), (list, tuple)):
        raise UsageError(
            f"signature {method!r}: input_spec must be {{'shape': [...], 'dtype': ...}}"
        )
    shape = list(spec["shape"])
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
        raise UsageError(f"signature {method!r}: input_spec shape must be ints >= -1 (-1 = free)")
    dtype = str(spec.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in _DTYPE_NAMES:
        raise UsageError(f"signature {method!r}: unknown input_spec dtype {dtype!r}")
    return {**spec, "shape": shape, "dtype": dtype}


def normalize_signatures(signatures: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Fill defaults and check types: `{method: {"batchable", "batch_dim", ["input_spec"]}}`."""
    if not signatures:
        return {"__call__": {"batchable": False, "batch_dim": 0}}
    out: dict[str, dict[str, Any]] = {}
    for method, sig in signatures.items():
        if not isinstance(method, str) or not method.isidentifier():
            raise UsageError(f"signature name {method!r} must be a method name")
        sig = dict(sig or {})
        if not isinstance(sig.get("batchable", False), bool):
            raise UsageError(f"signature {method!r}: batchable must be true or false")
        batch_dim = sig.get("batch_dim", 0)
        if not isinstance(batch_dim, int) or isinstance(batch_dim, bool):
            raise UsageError(f"signature {method!r}: batch_dim must be an integer")
        sig.setdefault("batchable", False)
        sig["batch_dim"] = batch_dim
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


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be JSON-serialisable: {exc}") from None


def save_model(
    name: str,
    model: Any,
    *,
    signatures: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    custom_objects: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    version: str | None = None,
    init_kwargs: dict[str, Any] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> Tag:
    """Save an `nn.Module` (weights as safetensors) or a ScriptModule (TorchScript).

    Returns the new `Tag`. The version appears only once complete; a failure leaves nothing.

    Example:
        >>> tag = torchshelf.save_model("classifier", model, labels={"stage": "dev"},
        ...                             signatures={"__call__": {"batchable": True}})
        >>> str(tag)
        'classifier:20261124T135501123456Z-a1b2c3'
    """
    import torch

    name = validate_name(name)
    if version is not None:
        version = validate_version(str(version))
    sigs = normalize_signatures(signatures)
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    metadata = dict(metadata or {})
    _check_json("metadata", metadata)
    if not isinstance(model, torch.nn.Module):
        raise FormatError(
            f"save_model expects a torch.nn.Module or torch.jit.ScriptModule, got {type(model).__name__}"
        )
    st = default_store(store)
    staging = st.stage()
    try:
        files: dict[str, dict[str, Any]] = {}
        structure: dict[str, Any] = {}
        if formats.is_scriptmodule(model):
            fmt = "torchscript"
            torch.jit.save(model, str(staging / formats.TORCHSCRIPT))
            files[formats.TORCHSCRIPT] = hash_file(staging / formats.TORCHSCRIPT, progress)
            module_class: str | None = getattr(model, "original_name", None)
        else:
            fmt = "safetensors"
            module_class = formats.class_path(model)
            tensors, aliases, is_param = formats.split_ties(model)
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
        objects = _save_custom_objects(staging, custom_objects or {}, files)
        now = now_iso()
        manifest = Manifest(
            name=name,
            version=version or new_version(),
            creation_time=now,
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
        st.commit(staging, manifest, auto_version=version is None)
    except BaseException:
        st.discard(staging)
        raise
    return Tag(manifest.name, manifest.version)


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
    return st.read_manifest(transfer.tag.name, transfer.tag.version)


def get(tag: Any, *, store: Store | str | os.PathLike[str] | None = None) -> Model:
    """A `Model` reference to a stored version; loads no weights (and never imports torch)."""
    st = default_store(store)
    return Model(st, st.resolve(tag))
