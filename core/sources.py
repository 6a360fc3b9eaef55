"""What `shelf save SOURCE` can read: TorchScript files, safetensors + class, and `file.py:attr`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import FormatError, UsageError
from .resolver import import_file, resolve

__all__ = ["import_file", "load_attr", "load_source"]


def load_attr(spec: str) -> tuple[Any, str]:
    """`path/to/file.py:attr` or `package.module:attr` -> (object, module name).

    Classes from a script are then pickled by value: the script is not importable later.
    """
    obj, module_name, from_file = resolve(spec)
    if from_file:
        from .formats import register_by_value

        register_by_value(module_name)
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
        from .resolver import import_class
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
