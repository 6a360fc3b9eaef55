"""The multi-model service: three stored models behind three apis of one server.

python examples/multi_model_service/save.py
shelf serve examples/multi_model_service/service.py:MultiPyTorchService
POST /classify {"image": <3x8x8>}   POST /detect_objects {"image": ...}   POST /generate_image {"noise": <1x16>}
"""

from __future__ import annotations

import torch

import torchshelf


@torchshelf.service(resources={"gpu": "2", "memory": "12Gi"})
class MultiPyTorchService:
    """A classifier, a detector and a generator, each loaded once at start-up."""

    def __init__(self) -> None:
        self.classifier = torchshelf.load_model("classifier:latest")  # already in eval mode
        self.detector = torchshelf.load_model("detector:latest")
        self.generator = torchshelf.load_model("generator:latest")

    @torchshelf.api
    def classify(self, image: torch.Tensor) -> dict:
        """The class id of one (3, H, W) image."""
        with torch.no_grad():
            output = self.classifier(image.unsqueeze(0))
        return {"class": output.argmax().item()}

    @torchshelf.api
    def detect_objects(self, image: torch.Tensor) -> dict:
        """Four boxes (x0, y0, x1, y1, score) for one (3, H, W) image."""
        with torch.no_grad():
            detections = self.detector(image.unsqueeze(0))
        return {"detections": detections[0].tolist()}

    @torchshelf.api
    def generate_image(self, noise: torch.Tensor) -> torch.Tensor:
        """A (3, 8, 8) image from a (1, 16) noise vector, as a nested list."""
        with torch.no_grad():
            generated = self.generator(noise)
        return generated.squeeze(0)
