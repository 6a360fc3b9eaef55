"""A text generation service on a stored GPT-2: `generate_text` answers the whole text at once,
`generate_stream` sends each piece of text as soon as it is sampled.

python examples/text_generation/save.py
shelf serve examples/text_generation/service.py:TextGenerator --port 3000
curl -s localhost:3000/generate_text -d '{"prompt": "The server", "max_length": 40}'
curl -sN localhost:3000/generate_stream -d '{"prompt": "The server", "max_length": 40}'
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

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
        # transformers 5 renamed the key/value cache argument `past_key_values` to `cache`.
        forward = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in forward else "past_key_values"

    def _prompt_ids(self, prompt: str, max_length: int) -> torch.Tensor:
        """The prompt's token ids (1 x n), refused early when `max_length` leaves no room."""
        if not 1 <= max_length <= self.max_positions:
            raise ValueError(
                f"max_length must be between 1 and {self.max_positions}, got {max_length}"
            )
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] >= max_length:
            raise ValueError(f"the prompt is {ids.shape[1]} tokens; raise max_length above that")
        return ids

    @torchshelf.api
    def generate_text(self, prompt: str, max_length: int = 100) -> dict:
        """Up to `max_length` tokens (prompt included) sampled at temperature 0.8."""
        input_ids = self._prompt_ids(prompt, max_length)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            output_ids = self.model.generate(
                input_ids.to(device),
                attention_mask=torch.ones_like(input_ids, device=device),
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

    @torchshelf.api
    def generate_stream(self, prompt: str, max_length: int = 100) -> Iterator[dict]:
        """The continuation of the prompt, one piece at a time as it is sampled (temperature
        0.8, top 50 tokens, as `generate_text`): `{"text": piece, "tokens": n}` per item,
        `n` counting the prompt. A client that hangs up stops the sampling."""
        input_ids = self._prompt_ids(prompt, max_length)
        device = next(self.model.parameters()).device
        step_ids, cache = input_ids.to(device), None
        generated: list[int] = []
        sent = ""
        while input_ids.shape[1] + len(generated) < max_length:
            with torch.no_grad():
                out = self.model(input_ids=step_ids, use_cache=True, **{self.cache_arg: cache})
            cache = out[self.cache_arg]  # from now on only the new token is fed
            top = torch.topk(out.logits[0, -1] / 0.8, k=min(50, out.logits.shape[-1]))
            next_id = int(top.indices[torch.multinomial(torch.softmax(top.values, -1), 1)])
            if next_id == self.tokenizer.eos_token_id:
                break
            generated.append(next_id)
            step_ids = torch.tensor([[next_id]], device=device)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # a character split across tokens: send it once it is whole
            yield {"text": text[len(sent) :], "tokens": input_ids.shape[1] + len(generated)}
            sent = text
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        if text != sent:  # bytes that never formed a character: send them as they decode
            yield {"text": text[len(sent) :], "tokens": input_ids.shape[1] + len(generated)}
