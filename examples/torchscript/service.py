"""Serve a TorchScript model: the service never imports the class it was scripted from.

    python examples/torchscript/save.py
    shelf serve examples/torchscript/service.py:TorchScriptService
    curl -s localhost:3000/predict -d '{"input_data": [[1, 2, 3, 4, 5, 6]]}'

(`shelf serve scripted_model` serves the same model with no service file at all.)
"""

from __future__ import annotations

import torch

import torchshelf


@torchshelf.service
class TorchScriptService:
    """`predict` runs the scripted module."""

    def __init__(self) -> None:
        self.model = torchshelf.load_model("scripted_model:latest")

    @torchshelf.api
    def predict(self, input_data: torch.Tensor) -> torch.Tensor:
        """(batch, 6) in, (batch, 3) out."""
        return self.model(input_data)
