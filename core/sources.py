"""What `shelf save SOURCE` can read: TorchScript files, safetensors + class, and `file.py:attr`."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from .errors import FormatError, UsageError


def import_file(path: Path, prefix: str = "torchshelf_user") -> Any:
    """Import a Python file as a module (`<prefix>_<stem>`); its folder stays importable.

    Used for `shelf save file.py:attr`, `shelf serve file.py:Class` and `shelf bench file.py:attr`.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"source file {path} does not exist")
    parent = str(path.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)  # so the file can import its neighbours, now and later
    name = f"{prefix}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UsageError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def load_attr(spec: str) -> tuple[Any, str]:
    """`path/to/file.py:attr` or `package.module:attr` -> (object, module name)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UsageError(f"invalid source {spec!r}: write file.py:attr or package.module:attr")
    if target.endswith(".py") or "/" in target:
        module = import_file(Path(target))
        module_name = module.__name__
        from .formats import register_by_value

        register_by_value(module_name)  # classes from a script are stored by value
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"cannot import {target}: {exc}") from None
        module_name = target
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{target} has no attribute {attr!r}") from None
    return obj, module_name


def load_source(
    source: str,
    *,
    class_path: str | None = None,
    init_json: str | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Turn a `shelf save` SOURCE into `(module, init_kwargs)` ready for `save_model`."""
    import torch

    init_kwargs: dict[str, Any] | None = None
    if init_json is not None:
        try:
            init_kwargs = json.loads(init_json)
        except ValueError as exc:
            raise UsageError(f"--init-json is not valid JSON: {exc}") from None
        if not isinstance(init_kwargs, dict):
            raise UsageError("--init-json must be a JSON object of constructor keyword arguments")
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        if not class_path:
            raise UsageError("a .safetensors source needs --class package.module:Class")
        from .formats import import_class
        from .weights import read_safetensors

        cls = import_class(class_path)
        try:
            model = cls(**(init_kwargs or {}))
        except Exception as exc:
            raise FormatError(f"{class_path}(**init) failed: {exc}") from None
        missing, unexpected = model.load_state_dict(read_safetensors(path), strict=False)
        if missing or unexpected:
            raise FormatError(
                f"{path.name} does not fit {class_path}: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )
        return model, init_kwargs
    if class_path or init_json is not None:
        raise UsageError("--class and --init-json apply only to a .safetensors source")
    if path.is_file() and path.suffix != ".py":
        try:
            return torch.jit.load(str(path), map_location="cpu"), None
        except Exception as exc:
            raise FormatError(
                f"{source} is not a TorchScript file ({exc}); for weights use a .safetensors file "
                "with --class, or name a Python object as file.py:attr"
            ) from None
    if ":" not in source:
        raise UsageError(
            f"source {source!r} not found: give a TorchScript file, a .safetensors file with "
            "--class, or file.py:attr / package.module:attr"
        )
    obj, _ = load_attr(source)
    if isinstance(obj, torch.nn.Module):
        return obj, None
    if callable(obj):
        try:
            made = obj()
        except Exception as exc:
            raise FormatError(f"calling {source}() failed: {exc}") from None
        if isinstance(made, torch.nn.Module):
            return made, None
        raise FormatError(f"{source}() returned {type(made).__name__}, not a torch.nn.Module")
    raise FormatError(f"{source} is a {type(obj).__name__}, not an nn.Module or a factory")
