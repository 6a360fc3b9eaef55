"""Small models importable by tests and their child processes (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A zero-argument importable class: the `class` structure form applies."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width, 4)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))) * self.scale


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A GPT-style decoder whose output projection shares the embedding matrix."""

    def __init__(
        self, vocab: int = 64, dim: int = 32, heads: int = 4, layers: int = 2, context: int = 16
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # the tie
        self.register_buffer("mask", torch.triu(torch.full((context, context), float("-inf")), 1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        n = idx.shape[1]
        x = self.emb(idx) + self.pos[:n]
        for block in self.blocks:
            x = block(x, self.mask[:n, :n])
        return self.head(self.ln(x))


def make_mlp() -> nn.Module:
    """A factory, as `shelf save NAME zoo:make_mlp` accepts."""
    torch.manual_seed(0)
    return MLP()


class Big(nn.Module):
    """`n` square float32 matrices of `dim` x `dim`: a model of a chosen size, built fast."""

    def __init__(self, n: int = 4, dim: int = 4096) -> None:
        super().__init__()
        self.layers = nn.ParameterList(
            nn.Parameter(torch.full((dim, dim), float(i + 1))) for i in range(n)
        )


class Scaled(nn.Module):
    """`x @ (scale * ones(4, 4))`: each version's outputs name its scale (`shelf serve --label`
    tests check every answer against the version its header names); `pad` sets the size."""

    def __init__(self, scale: float = 1.0, pad: int = 0) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.lin.weight.fill_(scale)
        self.pad = nn.Parameter(torch.zeros(pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)
