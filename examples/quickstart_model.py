"""The quick start's model: a small MLP classifier, defined in a user's own file."""

import torch
from torch import nn


class Classifier(nn.Module):
    """64 features in, 10 class scores out."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


torch.manual_seed(0)
model = Classifier().eval()
