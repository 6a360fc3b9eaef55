"""A text generation service: `generate_text(prompt, max_length)` on a stored GPT-2.

python examples/text_generation/save.py
shelf serve examples/text_generation/service.py:TextGenerator --port 3000
curl -s localhost:3000/generate_text -d '{"prompt": "The server", "max_length": 40}'
"""

from __future__ import annotations

import torch

import torchshelf


@torchshelf.service
class TextGenerator:
    """Samples a continuation of the prompt from the stored model and tokenizer."""

    def __init__(self) -> None:
        model_ref = torchshelf.get("gpt_model:latest")
        self.model = model_ref.load_model()  # eval mode
        self.tokenizer = model_ref.custom_objects["tokenizer"]
        self.max_positions = int(model_ref.metadata.get("max_positions", 1024))

    @torchshelf.api
    def generate_text(self, prompt: str, max_length: int = 100) -> dict:
        """Up to `max_length` tokens (prompt included) sampled at temperature 0.8."""
        if not 1 <= max_length <= self.max_positions:
            raise ValueError(
                f"max_length must be between 1 and {self.max_positions}, got {max_length}"
            )
        inputs = self.tokenizer(prompt, return_tensors="pt")
        if inputs["input_ids"].shape[1] >= max_length:
            raise ValueError(
                f"the prompt is {inputs['input_ids'].shape[1]} tokens; raise max_length above that"
            )
        device = next(self.model.parameters()).device
        with torch.no_grad():
            output_ids = self.model.generate(
                **inputs.to(device),
                max_length=max_length,
                num_return_sequences=1,
                temperature=0.8,
                do_sample=True,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        generated_text = self.tokenizer.decode(output_ids[0], skip_special_tokens=True)
        return {
            "prompt": prompt,
            "generated_text": generated_text,
            "length": len(generated_text),
            "tokens": int(output_ids.shape[1]),
        }
