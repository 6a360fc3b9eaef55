"""Rebuild a model from a stored config + state dict inside a service.

python examples/state_dict/save.py
shelf serve examples/state_dict/service.py:StateDictService
curl -s localhost:3000/predict -d '{"input_data": [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]}'
"""

from __future__ import annotations

import torch
from architectures import create_model_from_config  # this file's neighbour (serve adds its dir)

import torchshelf


@torchshelf.service
class StateDictService:
    """The architecture is code; the weights and hyper-parameters come from the store."""

    def __init__(self) -> None:
        model_ref = torchshelf.get("model_with_state:latest")
        config = model_ref.custom_objects["model_config"]
        self.model = create_model_from_config(config)
        self.model.load_state_dict(config["state_dict"])
        self.model.eval()

    @torchshelf.api
    def predict(self, input_data: torch.Tensor) -> dict:
        """Class scores for a (batch, 12) tensor."""
        with torch.no_grad():
            output = self.model(input_data)
        return {"prediction": output.tolist(), "class_id": output.argmax(dim=1).tolist()}
