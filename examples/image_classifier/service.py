"""An image classifier service: upload an image, get the top 5 classes back.

The model and its preprocessing come from the store together (`resnet_classifier`, saved by
`examples/preprocessing_pipeline.py`), so serving applies exactly the transform used in training.

    python examples/preprocessing_pipeline.py
    shelf serve examples/image_classifier/service.py:ImageClassifier --port 3000
    curl -s localhost:3000/classify_image -H 'Content-Type: image/png' --data-binary @cat.png

The image may also be sent base64-encoded in JSON: `{"image": "<base64>"}`.
"""

from __future__ import annotations

import torch
from PIL import Image

import torchshelf


@torchshelf.service
class ImageClassifier:
    """Top-5 classes with confidences for one uploaded image."""

    def __init__(self) -> None:
        ref = torchshelf.get("resnet_classifier:latest")
        self.model = ref.load_model()
        self.transform = ref.custom_objects["transform"]  # resize, to-tensor, normalize
        self.class_names = ref.custom_objects["class_names"]

    @torchshelf.api
    def classify_image(self, image: Image.Image) -> dict:
        """The five most likely classes, most likely first."""
        input_tensor = self.transform(image).unsqueeze(0)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            probabilities = torch.softmax(self.model(input_tensor.to(device)), dim=1)
            top5_prob, top5_idx = torch.topk(probabilities, 5)
        return {
            "top_predictions": [
                {
                    "class_id": int(idx),
                    "class_name": self.class_names[int(idx)],
                    "confidence": float(prob),
                }
                for idx, prob in zip(top5_idx[0], top5_prob[0], strict=True)
            ]
        }
