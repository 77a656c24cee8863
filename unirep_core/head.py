"""The Matryoshka head: a projection whose leading output dimensions form usable embeddings."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MatryoshkaHead", "truncate"]


class MatryoshkaHead(nn.Module):
    """Linear projection from pooled backbone features to the full embedding size.

    ``init="identity"`` (input size == output size) makes the head a no-op, so an untrained
    model returns the backbone's own pooled embedding; trained heads are loaded over it.
    """

    def __init__(self, input_dim: int, dims: Sequence[int], *, bias: bool = True, init: str = "identity"):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.input_dim = int(input_dim)
        self.proj = nn.Linear(self.input_dim, self.dim, bias=bias)
        if init == "identity":
            if self.input_dim != self.dim:
                raise ValueError(
                    f"identity head init needs input_dim == largest dim ({self.input_dim} != {self.dim})"
                )
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(self.dim))
                if bias:
                    self.proj.bias.zero_()
        elif init != "random":
            raise ValueError(f"unknown head init {init!r}; expected 'identity' or 'random'")

    @property
    def dim(self) -> int:
        return self.dims[-1]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


def truncate(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """First ``dim`` components, re-normalised to unit length (the Matryoshka rule)."""
    return nn.functional.normalize(vectors[..., :dim], dim=-1)
