"""The one resolver of `package.module:attr` and `path/to/file.py:attr`.

`shelf save SOURCE`, `shelf serve file.py:Class`, `shelf bench file.py:attr` and the class paths
that rebuild a stored module (`formats`) all go through here, so they agree on what is a file,
how a file is imported, and how a dotted attribute is looked up.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import FormatError, UsageError


def is_file_target(left: str) -> bool:
    """Whether the part before `:` names a Python file rather than a module."""
    return left.endswith(".py") or "/" in left or "\\" in left


def import_file(path: Path, prefix: str = "torchshelf_user") -> Any:
    """Import a Python file as a module (`<prefix>_<stem>`); its folder stays importable."""
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


def get_attr(obj: Any, dotted: str) -> Any:
    """`obj.a.b.c` for `dotted` = "a.b.c"; AttributeError names the missing part."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def resolve(spec: str, prefix: str = "torchshelf_user") -> tuple[Any, str, bool]:
    """`file.py:attr` or `package.module:attr` -> (object, module name, came from a file)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UsageError(f"invalid source {spec!r}: write file.py:attr or package.module:attr")
    from_file = is_file_target(target)
    if from_file:
        module = import_file(Path(target), prefix)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"cannot import {target}: {exc}") from None
    try:
        return get_attr(module, attr), module.__name__, from_file
    except AttributeError:
        raise UsageError(f"{target} has no attribute {attr!r}") from None


def import_class(path: str) -> type:
    """`package.module:Qualified.Name` -> the class; FormatError if it cannot be imported.

    What rebuilds a stored module: a module path only (a file is never imported here).
    """
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname or is_file_target(module_name):
        raise FormatError(f"invalid class path {path!r}: write it as package.module:Class")
    try:
        obj = get_attr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError) as exc:
        raise FormatError(f"cannot import {path}: {exc}") from None
    if not isinstance(obj, type):
        raise FormatError(f"{path} is not a class")
    return obj
