"""Dynamic model loading: each model is loaded on first use and kept for later calls.

    python examples/dynamic_loading/save.py
    shelf serve examples/dynamic_loading/service.py:DynamicPyTorchService
    curl -s localhost:3000/predict_with_model -d '{"model_name": "topic", "input_data": [[0,1,2,3,4,5,6,7]]}'

Non-batch apis run one call at a time on the server's worker thread, so the cache needs no lock.
"""

from __future__ import annotations

import torch

import torchshelf


@torchshelf.service
class DynamicPyTorchService:
    """Serves any model in the store by name, loading it the first time it is asked for."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.models: dict[str, torch.nn.Module] = {}

    def load_model_on_demand(self, model_name: str) -> torch.nn.Module:
        """The cached model, else the newest stored version (NotFound / InvalidName otherwise)."""
        if model_name not in self.models:
            self.models[model_name] = torchshelf.load_model(
                f"{model_name}:latest", device_id=self.device
            )
        return self.models[model_name]

    @torchshelf.api
    def predict_with_model(self, model_name: str, input_data: torch.Tensor) -> dict:
        """Run the named model on `input_data`."""
        try:
            model = self.load_model_on_demand(model_name)
        except (torchshelf.NotFound, torchshelf.InvalidName) as exc:
            raise ValueError(str(exc)) from None  # the caller's mistake: answered 422
        with torch.no_grad():
            output = model(input_data.to(self.device))
        return {
            "model_used": model_name,
            "prediction": output.tolist(),
            "loaded": sorted(self.models),
        }
