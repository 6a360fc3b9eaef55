"""A model with its preprocessing pipeline stored beside it as a custom object.

The pipeline (resize, to-tensor, normalize: the usual torchvision trio, written here with PIL and
torch ops) is an ordinary Python object, so torchshelf pickles it; it is hash-checked before it is
ever unpickled. Its classes are defined in this script, so they are pickled by value and whoever
loads the model later (e.g. `examples/image_classifier/service.py`) needs no copy of this file.
The class names are plain JSON and are stored without pickle.

Run: TORCHSHELF_HOME=/tmp/shelf python examples/preprocessing_pipeline.py
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

import torchshelf

IMAGE_SIZE = 64  # small so the example runs in a blink; 224 works the same way
CLASS_NAMES = ["cat", "dog", "bird", "fish", "horse", "frog", "ship", "truck", "plane", "car"]


class Resize:
    """Resize a PIL image to (height, width) with bilinear filtering."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB").resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)


class ToTensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return data.view(image.height, image.width, 3).permute(2, 0, 1).float().div(255)


class Normalize:
    """Per-channel (x - mean) / std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Compose:
    """Apply transforms in order."""

    def __init__(self, steps: list[Callable[[Any], Any]]) -> None:
        self.steps = steps

    def __call__(self, x: Any) -> Any:
        for step in self.steps:
            x = step(x)
        return x


class TinyResNet(torch.nn.Module):
    """A stem, one residual block and a linear head: ResNet's shape at toy size."""

    def __init__(self, num_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU()
        )
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(16, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
        )
        self.head = torch.nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean(dim=(2, 3)))


def main() -> None:
    torch.manual_seed(0)
    transform = Compose(
        [
            Resize((IMAGE_SIZE, IMAGE_SIZE)),
            ToTensor(),
            Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    resnet_model = TinyResNet().eval()
    tag = torchshelf.save_model(
        name="resnet_classifier",
        model=resnet_model,
        custom_objects={"transform": transform, "class_names": CLASS_NAMES},
        metadata={"image_size": IMAGE_SIZE},
    )
    print(f"saved {tag}")

    # Later, anywhere: the model and the exact preprocessing it was trained with.
    ref = torchshelf.get("resnet_classifier:latest")
    stored_transform = ref.custom_objects["transform"]
    class_names = ref.custom_objects["class_names"]
    model = ref.load_model()
    image = Image.new("RGB", (120, 90), (200, 120, 40))
    x = stored_transform(image).unsqueeze(0)
    assert torch.equal(x, transform(image).unsqueeze(0))
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[0]
    best = int(probabilities.argmax())
    print(f"input {tuple(x.shape)} -> {class_names[best]} ({probabilities[best]:.3f})")


if __name__ == "__main__":
    main()
