"""Error handling in a service: start without the model, and answer bad input with a 4xx.

`shelf serve examples/error_handling/service.py:RobustPyTorchService`

* The model is missing: the service still starts, `/readyz` says ready and `predict` answers
  500 with `{"error": "... NotFound: ..."}` naming the model to save. (To refuse to start
  instead, let `load_model` raise in `__init__`: `/readyz` then reports the failure and
  `shelf serve` exits 1.)
* A wrong input shape is the caller's mistake: raising `ValueError` makes the server answer 422
  with the message, and other requests are unaffected.
"""

from __future__ import annotations

import logging

import torch

import torchshelf

logger = logging.getLogger(__name__)
TAG = "robust_model:latest"
FEATURES = 8


@torchshelf.service
class RobustPyTorchService:
    """`predict` on a batch of FEATURES-wide rows, with clear errors."""

    def __init__(self) -> None:
        try:
            self.model: torch.nn.Module | None = torchshelf.load_model(TAG)
        except torchshelf.NotFound as exc:
            logger.error("starting without a model: %s", exc)
            self.model = None
            self.load_error = str(exc)

    @torchshelf.api
    def predict(self, input_data: torch.Tensor) -> dict:
        """Scores for a (batch, 8) tensor."""
        if self.model is None:
            raise torchshelf.NotFound(f"{self.load_error}; then restart the service")
        if input_data.dim() != 2 or input_data.shape[1] != FEATURES:
            raise ValueError(f"expected a (batch, {FEATURES}) tensor, got {list(input_data.shape)}")
        with torch.no_grad():
            output = self.model(input_data)
        return {"success": True, "prediction": output.tolist()}
