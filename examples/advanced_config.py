"""Advanced configuration: signatures (batching + input spec), labels, metadata, custom objects.

Custom objects are stored by kind: JSON values as JSON, tensors as safetensors (neither needs
pickle), anything else pickled and hash-checked before it is unpickled.

Run: TORCHSHELF_HOME=/tmp/shelf python examples/advanced_config.py
"""

from __future__ import annotations

import torch

import torchshelf


class TextClassifier(torch.nn.Module):
    """Bag of token ids -> 3 class scores."""

    def __init__(self, vocab_size: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(vocab_size, 8)
        self.head = torch.nn.Linear(8, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


class WhitespaceTokenizer:
    """A word -> id tokenizer; an arbitrary Python object, so it is stored pickled."""

    def __init__(self, vocab: list[str]) -> None:
        self.ids = {w: i for i, w in enumerate(vocab)}

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, 0) for w in text.lower().split()]


def main() -> None:
    torch.manual_seed(0)
    vocab = ["<unk>", "good", "bad", "great", "awful", "fine", "movie", "plot"]
    tokenizer = WhitespaceTokenizer(vocab)
    preprocessor = {"max_tokens": 32, "pad_id": 0, "idf": torch.rand(16)}  # JSON + a tensor
    trained_model = TextClassifier()

    tag = torchshelf.save_model(
        name="advanced_pytorch_model",
        model=trained_model,
        signatures={
            "__call__": {
                "batchable": True,
                "batch_dim": 0,
                # Lets `shelf serve` reject bad shapes with a 422 and `shelf bench` build inputs.
                "input_spec": {"shape": [-1, -1], "dtype": "int64"},
            }
        },
        labels={"stage": "production", "framework": "pytorch", "task": "classification"},
        metadata={
            "accuracy": 0.95,
            "f1_score": 0.92,
            "training_dataset": "toy-reviews",
            "epochs": 100,
        },
        custom_objects={"tokenizer": tokenizer, "preprocessor": preprocessor, "vocab": vocab},
    )
    print(f"saved {tag}")

    ref = torchshelf.get(tag)
    print("labels:    ", ref.labels)
    print("metadata:  ", ref.metadata)
    print("signatures:", ref.signatures)
    kinds = {k: v["kind"] for k, v in ref.manifest.custom_objects.items()}
    print(
        "custom objects stored as:", kinds
    )  # tokenizer: pickle, preprocessor: tensors, vocab: json

    objects = ref.custom_objects  # each decoded (and hash-checked) on first access
    ids = torch.tensor([objects["tokenizer"].encode("great movie awful plot")])
    scores = ref.load_model()(ids)
    assert scores.shape == (1, 3)
    assert torch.equal(objects["preprocessor"]["idf"], preprocessor["idf"])
    print("scores for 'great movie awful plot':", [round(s, 4) for s in scores[0].tolist()])

    production = torchshelf.models.list(labels={"stage": "production", "task": "classification"})
    print("production classifiers:", [str(m.tag) for m in production])


if __name__ == "__main__":
    main()
