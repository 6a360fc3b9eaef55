"""torchshelf: a versioned PyTorch model store, a batching inference server and a benchmark.

The public API lives here; every other module is an implementation detail. Importing this
package does not import torch.

Example:
    >>> import torchshelf
    >>> saved = torchshelf.save_model("classifier", model, labels={"stage": "production"})
    >>> model = torchshelf.load_model("classifier:latest", device_id="cpu")
"""

from __future__ import annotations

from typing import Any

from . import exceptions, models, pytorch, torchscript
from .errors import (
    AlreadyExists,
    ArchiveError,
    DeviceError,
    FormatError,
    IntegrityError,
    InvalidName,
    ManifestError,
    NotFound,
    RemoteError,
    ShelfError,
    UntrustedError,
    UsageError,
)
from .lifecycle import get, load_model, save_model
from .model import Model, ModelInfo
from .serving import api, service
from .store import Store
from .tag import Tag

__version__ = "0.1.0"

# Imported on first use, so that `import torchshelf` (and `shelf list`) loads neither httpx nor
# s3fs: `Client`/`RequestError` need httpx, `Remote` needs s3fs.
_LAZY = {
    "Client": ("serving.client", "Client"),
    "RequestError": ("serving.client", "RequestError"),
    "Remote": ("remote", "Remote"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'torchshelf' has no attribute {name!r}")


__all__ = [
    "AlreadyExists",
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
