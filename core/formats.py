"""How models and custom objects become files, and how they are rebuilt.

Eager `nn.Module`s are stored as two parts:

* `weights.safetensors`: every parameter and buffer. Tensors that are the same object (tied
  weights) or the same view of the same memory are stored once; the aliases are recorded.
* the structure, in one or both of two forms:
  - `class`: an importable class plus JSON constructor kwargs (zero-arg classes, or the kwargs
    given with `init_kwargs=` / `--init-json`). Checked at save time by building it on the meta
    device and comparing every tensor name, shape, dtype and tie. Rebuilding runs only that
    class's `__init__` (which must be an `nn.Module` subclass) and needs no pickle, so it works
    for untrusted (imported) models.
  - `pickle`: the module tree pickled with cloudpickle, with every tensor replaced by a reference
    into the weights file, so no weight ever enters the pickle. This handles classes defined in
    `__main__` or in a script (pickled by value) and any post-init change to the module, but
    unpickling runs code: it is hash-checked, and refused for imported versions until trusted.

A `torch.jit.ScriptModule` is stored as TorchScript (`model.ts`), which loads without pickle.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FormatError, UntrustedError
from .resolver import import_class

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS = "weights.safetensors"
STRUCTURE = "structure.pkl"
TORCHSCRIPT = "model.ts"
_PID = "torchshelf.tensor"
_TENSOR_MARK = "__torchshelf_tensor__"


def class_path(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


# --- tensors of a module ----------------------------------------------------------------------


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(dotted name, tensor, is_parameter) for every parameter and buffer, duplicates included."""
    for name, p in module.named_parameters(remove_duplicate=False):
        yield name, p, True
    for name, b in module.named_buffers(remove_duplicate=False):
        if b is not None:
            yield name, b, False


def _identity(t: torch.Tensor) -> tuple[Any, ...]:
    """Same memory, same view: two names with this key are one tensor (a tie)."""
    if t.device.type == "meta":
        return (id(t),)
    return (
        t.device.type,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        tuple(t.stride()),
        t.dtype,
    )


def split_ties(
    module: nn.Module,
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, bool]]:
    """Canonical tensors by name, alias -> canonical name, and which names are parameters."""
    canonical: dict[tuple[Any, ...], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    is_param: dict[str, bool] = {}
    for name, t, param in _named_tensors(module):
        is_param[name] = param
        key = (id(t),) if t.device.type == "meta" else _identity(t)
        if key in canonical:
            aliases[name] = canonical[key]
        else:
            canonical[key] = name
            tensors[name] = t
    return tensors, aliases, is_param


# --- structure: class form ---------------------------------------------------------------------


def _importable(cls: type) -> bool:
    if cls.__module__ in ("__main__", "__mp_main__") or "<locals>" in cls.__qualname__:
        return False
    try:
        return import_class(class_path(cls)) is cls
    except FormatError:
        return False


def _layout(module: nn.Module) -> tuple[dict[str, tuple[Any, ...]], dict[str, str]]:
    _, aliases, _ = split_ties(module)
    shapes = {n: (tuple(t.shape), t.dtype, p) for n, t, p in _named_tensors(module)}
    return shapes, aliases


def class_structure(model: nn.Module, init_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `class` structure record if `type(model)(**init_kwargs)` rebuilds the same layout.

    Returns None when the class is not importable or does not rebuild it; raises FormatError only
    when the user passed `init_kwargs` explicitly and they do not work.
    """
    import torch

    cls = type(model)
    explicit = init_kwargs is not None
    kwargs = dict(init_kwargs or {})
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError):
        raise FormatError("init_kwargs must be JSON-serialisable") from None
    if not _importable(cls):
        if explicit:
            raise FormatError(
                f"{class_path(cls)} is not importable, so init_kwargs cannot rebuild it"
            )
        return None
    try:
        with torch.device("meta"):
            probe = cls(**kwargs)
    except Exception as exc:
        if explicit:
            raise FormatError(f"{class_path(cls)}(**init_kwargs) failed: {exc}") from None
        return None
    if _layout(probe) != _layout(model):
        if explicit:
            raise FormatError(
                f"{class_path(cls)}(**init_kwargs) builds different tensors than the model given"
            )
        return None
    return {"class": class_path(cls), "init_kwargs": kwargs}


# --- structure: pickle form --------------------------------------------------------------------


def _cloudpickle() -> Any:
    import cloudpickle

    return cloudpickle


def dump_without_tensors(
    obj: Any, names: dict[int, str], extra_prefix: str
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """Pickle `obj` with every tensor replaced by a reference; return the bytes and new tensors.

    `names` maps id(tensor) -> its name in the weights file; tensors not in it are added under
    `<extra_prefix><n>` and returned, so they are stored in safetensors too.
    """
    import torch

    cloudpickle = _cloudpickle()
    extras: dict[str, torch.Tensor] = {}
    keep: list[Any] = []  # keep ids stable while pickling

    class _Pickler(cloudpickle.CloudPickler):  # type: ignore[misc, name-defined]
        def persistent_id(self, o: Any) -> Any:
            if isinstance(o, torch.Tensor):
                name = names.get(id(o))
                if name is None:
                    name = f"{extra_prefix}{len(extras)}"
                    names[id(o)] = name
                    extras[name] = o
                    keep.append(o)
                if isinstance(o, torch.nn.Parameter):
                    return (_PID, name, "parameter", bool(o.requires_grad))
                return (_PID, name, "tensor", False)
            return None

    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception as exc:
        raise FormatError(f"cannot pickle the structure of {class_path(obj)}: {exc}") from None
    return buf.getvalue(), extras


def load_with_tensors(data: bytes, lookup: Callable[[str], torch.Tensor]) -> Any:
    """Unpickle bytes made by `dump_without_tensors`, resolving tensor references via `lookup`."""
    import torch

    memo: dict[str, Any] = {}

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            if not (isinstance(pid, tuple) and len(pid) == 4 and pid[0] == _PID):
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            _, name, kind, requires_grad = pid
            if name not in memo:
                t = lookup(name)
                if kind == "parameter":
                    t = torch.nn.Parameter(t, requires_grad=requires_grad and t.is_floating_point())
                memo[name] = t
            return memo[name]

    return _Unpickler(io.BytesIO(data)).load()


def register_by_value(module_name: str) -> None:
    """Pickle classes of a module loaded from a file by value (they are not importable later)."""
    import sys

    module = sys.modules.get(module_name)
    if module is not None:
        _cloudpickle().register_pickle_by_value(module)


# --- rebuilding an eager module ------------------------------------------------------------------


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor, is_param: bool) -> None:
    import torch

    *path, leaf = name.split(".")
    owner = root
    for part in path:
        owner = getattr(owner, part)
    if is_param:
        owner._parameters[leaf] = (
            value
            if isinstance(value, torch.nn.Parameter)
            else torch.nn.Parameter(value, requires_grad=value.is_floating_point())
        )
    else:
        owner._buffers[leaf] = value


def build_from_class(
    structure: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    aliases: Mapping[str, str],
) -> nn.Module:
    """Build `class(**init_kwargs)` on the meta device, then assign the stored tensors."""
    import torch

    cls = import_class(structure["class"])
    if not issubclass(cls, torch.nn.Module):
        # The manifest of an imported archive is untrusted: naming e.g. subprocess.Popen with
        # JSON kwargs must not run anything. Only an nn.Module's own __init__ may run.
        raise FormatError(
            f"{structure['class']} is not a torch.nn.Module subclass; refusing to build it"
        )
    with torch.device("meta"):
        model = cls(**structure.get("init_kwargs", {}))
    params = {n: p for n, _, p in _named_tensors(model)}
    placed: dict[str, torch.Tensor] = {}
    for name, is_param in params.items():
        source = aliases.get(name, name)
        if source in placed:
            value = placed[source]
        else:
            if source not in weights:
                raise FormatError(
                    f"stored weights have no tensor {source!r} for {structure['class']}"
                )
            value = weights[source]
            if is_param:
                value = torch.nn.Parameter(value, requires_grad=value.is_floating_point())
            placed[source] = value
        _set_tensor(model, name, value, is_param)
    return model


def check_no_meta(model: nn.Module) -> None:
    for name, t, _ in _named_tensors(model):
        if t.device.type == "meta":
            raise FormatError(f"rebuilt model still has no data for {name!r}")


# --- custom objects ------------------------------------------------------------------------------


def _jsonable(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) for k in value) and all(
            _jsonable(v, depth + 1) for v in value.values()
        )
    return False


def _split_tensors(value: Any, tensors: dict[str, Any], depth: int = 0) -> tuple[bool, Any]:
    """JSON skeleton of `value` with tensors swapped for markers; False if not JSON+tensors."""
    import torch

    if depth > 64:
        return False, None
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach()
        return True, {_TENSOR_MARK: key}
    if value is None or isinstance(value, (str, bool, int, float)):
        return True, value
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            ok, s = _split_tensors(v, tensors, depth + 1)
            if not ok:
                return False, None
            out.append(s)
        return True, out
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or _TENSOR_MARK in value:
            return False, None
        obj = {}
        for k, v in value.items():
            ok, s = _split_tensors(v, tensors, depth + 1)
            if not ok:
                return False, None
            obj[k] = s
        return True, obj
    return False, None


def _join_tensors(skeleton: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR_MARK}:
            return tensors[skeleton[_TENSOR_MARK]]
        return {k: _join_tensors(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_join_tensors(v, tensors) for v in skeleton]
    return skeleton


def encode_custom_object(value: Any) -> tuple[str, bytes, dict[str, Any]]:
    """(kind, main file bytes, tensors to store beside it) for one custom object.

    kind is `json` (plain JSON), `tensors` (JSON skeleton + safetensors) or `pickle`
    (cloudpickle, with any tensors inside moved to safetensors).
    """
    if _jsonable(value):
        return "json", json.dumps(value, allow_nan=True).encode(), {}
    tensors: dict[str, Any] = {}
    ok, skeleton = _split_tensors(value, tensors)
    if ok:
        return "tensors", json.dumps(skeleton, allow_nan=True).encode(), tensors
    data, extras = dump_without_tensors(value, {}, "t")
    return "pickle", data, extras


def decode_custom_object(
    kind: str, data: bytes, tensors: Mapping[str, Any], *, trusted: bool, key: str, tag: str
) -> Any:
    if kind in ("json", "tensors"):
        return _join_tensors(json.loads(data), tensors)
    if kind == "pickle":
        if not trusted:
            raise UntrustedError(
                f"custom object {key!r} of {tag} is pickled and the version was imported from an "
                f"archive; unpickling runs code. If you trust its source, run `shelf trust {tag}`"
            )
        return load_with_tensors(data, lambda name: tensors[name])
    raise FormatError(f"unknown custom object kind {kind!r}")


def is_scriptmodule(model: Any) -> bool:
    import torch

    return isinstance(model, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule))


def torchscript_load(path: Path, device: torch.device) -> Any:
    import torch

    return torch.jit.load(str(path), map_location=device)
