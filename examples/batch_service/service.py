"""The batch service: concurrent requests are merged into one forward pass.

Each client sends a list of items (often one) and gets back a list with one result per item.
The server joins the lists of concurrent callers, up to `max_batch_size` items, waiting at most
`max_latency_ms` for a batch to fill under load (a lone request is never held back).

    python examples/batch_service/save.py
    shelf serve examples/batch_service/service.py:BatchPyTorchService --port 3000
    curl -s localhost:3000/batch_predict -d '{"input_tensors": [[0.1, 0.2, ..., 1.6]]}'
"""

from __future__ import annotations

import torch

import torchshelf


@torchshelf.service(resources={"gpu": "1", "memory": "8Gi"})
class BatchPyTorchService:
    """One model call per batch of requests."""

    def __init__(self) -> None:
        self.model = torchshelf.load_model("batch_model:latest")

    @torchshelf.api(batch=True, max_batch_size=32, max_latency_ms=100)
    def batch_predict(self, input_tensors: list[torch.Tensor]) -> list[dict]:
        """Prediction and confidence for each 16-feature item sent."""
        device = next(self.model.parameters()).device  # `shelf serve --device` moved the model
        batch_tensor = torch.stack(input_tensors).to(device)
        with torch.no_grad():
            batch_output = self.model(batch_tensor)
            batch_probabilities = torch.softmax(batch_output, dim=1)
        return [
            {
                "prediction": batch_output[i].tolist(),
                "confidence": batch_probabilities[i].max().item(),
            }
            for i in range(len(input_tensors))
        ]
