"""torchshelf: a versioned PyTorch model store, a batching inference server and a benchmark.

The public API lives here; every other module is an implementation detail. Importing this
package does not import torch.

Example:
    >>> import torchshelf
    >>> saved = torchshelf.save_model("classifier", model, labels={"stage": "production"})
    >>> model = torchshelf.load_model("classifier:latest", device_id="cpu")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AlreadyExists,
    AmbiguousTag,
    ArchiveError,
    DeviceError,
    FormatError,
    IntegrityError,
    InvalidName,
    ManifestError,
    NotFound,
    RemoteError,
    ShelfError,
    StoreFull,
    UntrustedError,
    UsageError,
)
from .tag import Tag

if TYPE_CHECKING:
    from . import exceptions, models, pytorch, torchscript
    from .lifecycle import get, load_model, save_model
    from .model import Model, ModelInfo
    from .remote import Remote
    from .serving import api, service
    from .serving.client import Client, RequestError
    from .store import Store

__version__ = "0.1.0"

# Everything else is imported on first use: `import torchshelf` (and so `shelf list`, which
# must answer in well under 100 ms) then costs only the errors and tags. httpx (`Client`) and
# s3fs (`Remote`) are never imported unless used.
_LAZY = {
    "models": ("models", None),
    "pytorch": ("pytorch", None),
    "torchscript": ("torchscript", None),
    "exceptions": ("exceptions", None),
    "get": ("lifecycle", "get"),
    "load_model": ("lifecycle", "load_model"),
    "save_model": ("lifecycle", "save_model"),
    "Model": ("model", "Model"),
    "ModelInfo": ("model", "ModelInfo"),
    "api": ("serving", "api"),
    "service": ("serving", "service"),
    "Store": ("store", "Store"),
    "Client": ("serving.client", "Client"),
    "RequestError": ("serving.client", "RequestError"),
    "Remote": ("remote", "Remote"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(f".{module_name}", __name__)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'torchshelf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AlreadyExists",
    "AmbiguousTag",
    "ArchiveError",
    "Client",
    "DeviceError",
    "FormatError",
    "IntegrityError",
    "InvalidName",
    "ManifestError",
    "Model",
    "ModelInfo",
    "NotFound",
    "Remote",
    "RemoteError",
    "RequestError",
    "ShelfError",
    "Store",
    "StoreFull",
    "Tag",
    "UntrustedError",
    "UsageError",
    "api",
    "get",
    "load_model",
    "models",
    "pytorch",
    "save_model",
    "service",
    "exceptions",
    "torchscript",
]
