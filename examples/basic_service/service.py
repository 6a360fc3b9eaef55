"""The basic service: one model, its custom objects, one api.

python examples/basic_service/save.py
shelf serve examples/basic_service/service.py:PyTorchClassifier --port 3000
curl -s localhost:3000/predict -d '{"input_tensor": [[0.1, 0.2, 0.3, 0.4]]}'
"""

from __future__ import annotations

import torch

import torchshelf


@torchshelf.service(resources={"gpu": "1", "memory": "4Gi"})  # CUDA when there is one, else CPU
class PyTorchClassifier:
    """A classifier whose preprocessing and labels travel with the model."""

    def __init__(self, device: str = "cpu") -> None:
        # `shelf serve --device` arrives here; load_model puts the weights straight there.
        self.device = torch.device(device)
        self.model = torchshelf.load_model("classifier:latest", device_id=device)  # eval mode
        model_ref = torchshelf.get("classifier:latest")
        transform = model_ref.custom_objects.get("transform")
        self.mean = transform["mean"].to(self.device) if transform else None
        self.std = transform["std"].to(self.device) if transform else None
        self.class_names = model_ref.custom_objects.get("class_names", [])

    @torchshelf.api
    def predict(self, input_tensor: torch.Tensor) -> dict:
        """Class, confidence and probabilities for a (1, 4) tensor."""
        input_tensor = input_tensor.to(self.device)
        if self.mean is not None:
            input_tensor = (input_tensor - self.mean) / self.std
        with torch.no_grad():
            probabilities = torch.softmax(self.model(input_tensor), dim=1)
        predicted_class = int(probabilities[0].argmax())
        return {
            "class_id": predicted_class,
            "class_name": self.class_names[predicted_class] if self.class_names else None,
            "confidence": probabilities[0].max().item(),
            "probabilities": probabilities.tolist(),
        }
