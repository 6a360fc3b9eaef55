"""Build a small GPT-2 and a real tokenizer with no downloads, then store them together.

The tokenizer is a byte-level BPE trained here, in memory, with the `tokenizers` library on a
small built-in corpus; the model is `transformers`' GPT-2 with tiny dimensions and random
weights (so its samples are gibberish made of the corpus's word pieces). The
tokenizer is a Python object, so it is stored as a pickled custom object (hash-checked before
it is unpickled); the model's weights go to safetensors, the embedding tied to the LM head once.

Needs: pip install transformers tokenizers
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import torchshelf

CORPUS = [
    "The model store keeps every version of every model, with its labels and metadata.",
    "A version appears only once it is complete, and its files are hashed as they are written.",
    "The server batches requests from many clients into one call of the model.",
    "Each client gets back exactly its own results, in the order it sent them.",
    "The benchmark measures latency percentiles and throughput for each batch size.",
    "Labels promote a version from staging to production without copying a byte.",
    "A tokenizer turns text into ids, and the model turns ids into more text.",
    "Small models train quickly, and quick examples are examples people run.",
]
MAX_POSITIONS = 128


def train_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's scheme) trained on CORPUS, wrapped for `transformers`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A 2-layer, 64-wide GPT-2 with random weights (train it as you would any GPT-2)."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_POSITIONS,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


def main() -> None:
    tokenizer = train_tokenizer()
    model = build_model(tokenizer)
    tag = torchshelf.save_model(
        "gpt_model",
        model,
        custom_objects={"tokenizer": tokenizer},
        metadata={
            "n_layer": 2,
            "n_embd": 64,
            "vocab_size": len(tokenizer),
            "max_positions": MAX_POSITIONS,
        },
    )
    print(tag)


if __name__ == "__main__":
    main()
