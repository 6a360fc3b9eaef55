"""`torchshelf.pytorch`: the seed's `bentoml.pytorch` names, so ported code changes one import."""

from __future__ import annotations

from .lifecycle import get, load_model, save_model

__all__ = ["save_model", "load_model", "get"]
