"""Save a model together with a config that holds its state dict and architecture.

The config is a dict of JSON values and tensors, so torchshelf stores it without pickle: the
JSON skeleton as JSON and every tensor of the state dict as safetensors.
"""

from __future__ import annotations

import torch
from architectures import create_model_from_config

import torchshelf


def save_with_state_dict() -> torchshelf.Tag:
    """Store the model plus {'state_dict', 'architecture', 'hyperparameters', 'num_classes'}."""
    torch.manual_seed(0)
    hyperparameters = {"in_features": 12, "hidden": 32, "num_classes": 5}
    model = create_model_from_config({"architecture": "MLP", "hyperparameters": hyperparameters})
    model_state = {
        "state_dict": model.state_dict(),
        "architecture": "MLP",
        "hyperparameters": hyperparameters,
        "num_classes": hyperparameters["num_classes"],
    }
    return torchshelf.save_model(
        "model_with_state", model, custom_objects={"model_config": model_state}
    )


if __name__ == "__main__":
    tag = save_with_state_dict()
    kind = torchshelf.get(tag).manifest.custom_objects["model_config"]["kind"]
    print(f"{tag} (model_config stored as {kind})")
