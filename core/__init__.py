"""torchshelf: a versioned PyTorch model store, a batching inference server and a benchmark.

The public API lives here; every other module is an implementation detail. Importing this
package does not import torch.

Example:
    >>> import torchshelf
    >>> tag = torchshelf.save_model("classifier", model, labels={"stage": "production"})
    >>> model = torchshelf.load_model("classifier:latest", device_id="cpu")
"""

from __future__ import annotations

from . import models, pytorch
from .api import get, load_model, save_model
from .errors import (
    AlreadyExists,
    ArchiveError,
    DeviceError,
    FormatError,
    IntegrityError,
    InvalidName,
    ManifestError,
    NotFound,
    ShelfError,
    UntrustedError,
    UsageError,
)
from .model import Model, ModelInfo
from .store import Store
from .tag import Tag

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "ArchiveError",
    "DeviceError",
    "FormatError",
    "IntegrityError",
    "InvalidName",
    "ManifestError",
    "Model",
    "ModelInfo",
    "NotFound",
    "ShelfError",
    "Store",
    "Tag",
    "UntrustedError",
    "UsageError",
    "get",
    "load_model",
    "models",
    "pytorch",
    "save_model",
]
