"""`torchshelf.torchscript`: BentoML's `bentoml.torchscript` names, for `torch.jit` modules.

`save_model` here takes only a ScriptModule (scripted or traced) and stores it as TorchScript,
which loads without pickle. `torchshelf.pytorch.save_model` accepts ScriptModules too; this module
exists so that code written against `bentoml.torchscript` runs after changing its import line.
"""

from __future__ import annotations

from typing import Any

from . import formats
from .errors import FormatError
from .lifecycle import get, load_model
from .lifecycle import save_model as _save_model
from .model import Model

__all__ = ["save_model", "load_model", "get"]


def save_model(name: Any, model: Any, **options: Any) -> Model:
    """Save a `torch.jit.ScriptModule` as TorchScript; options as `torchshelf.save_model`.

    Example:
        >>> saved = torchshelf.torchscript.save_model("scripted", torch.jit.script(model))
    """
    if not formats.is_scriptmodule(model):
        raise FormatError(
            f"torchscript.save_model expects a torch.jit.ScriptModule (from torch.jit.script or "
            f"torch.jit.trace), got {type(model).__name__}; use torchshelf.save_model for an "
            "eager nn.Module"
        )
    return _save_model(name, model, **options)
