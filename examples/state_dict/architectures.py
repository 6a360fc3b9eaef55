"""Model architectures by name: what turns a stored config back into a module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    """A configurable multi-layer perceptron."""

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"MLP": MLP}


def create_model_from_config(config: dict[str, Any]) -> nn.Module:
    """Build the architecture a config names, with its hyper-parameters (weights untouched)."""
    try:
        cls = ARCHITECTURES[config["architecture"]]
    except KeyError:
        raise ValueError(
            f"unknown architecture {config.get('architecture')!r}; known: {sorted(ARCHITECTURES)}"
        ) from None
    return cls(**config["hyperparameters"])
