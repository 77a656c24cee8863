"""Pooling of token states into one vector per item, as the model config says."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .backbones.base import BackboneOutput

__all__ = ["Pooler"]


class Pooler(nn.Module):
    """``mean`` (mask-weighted), ``cls`` (first token), ``last`` (last real token) or
    ``multi_layer`` (first-token states of the chosen layers, concatenated; the head projects
    them). ``padding_side`` tells ``last`` where the real tokens end."""

    def __init__(self, mode: str = "mean", layers: Sequence[int] = (), padding_side: str = "right"):
        super().__init__()
        self.mode = mode
        self.layers = tuple(int(i) for i in layers)
        self.padding_side = padding_side

    @property
    def needs_hidden_states(self) -> bool:
        return self.mode == "multi_layer"

    def output_dim(self, hidden_size: int) -> int:
        return hidden_size * len(self.layers) if self.mode == "multi_layer" else hidden_size

    def forward(self, out: BackboneOutput) -> torch.Tensor:
        pooled = self._pool(out)
        if out.pooled_residual is not None and self.mode != "multi_layer":
            pooled = pooled + out.pooled_residual.to(pooled.dtype)
        return pooled

    def _pool(self, out: BackboneOutput) -> torch.Tensor:
        states, mask = out.last_hidden_state, out.attention_mask
        if self.mode == "mean":
            m = mask.to(states.dtype).unsqueeze(-1)
            return (states * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.mode == "last":
            if self.padding_side == "left":
                return states[:, -1]
            last = mask.long().sum(1) - 1
            return states[torch.arange(states.size(0), device=states.device), last]
        first = self._first_token_index(mask)
        rows = torch.arange(states.size(0), device=states.device)
        if self.mode == "cls":
            return states[rows, first]
        if out.hidden_states is None:
            raise RuntimeError("multi_layer pooling needs the backbone's hidden_states")
        return torch.cat([out.hidden_states[i][rows, first] for i in self.layers], dim=-1)

    def _first_token_index(self, mask: torch.Tensor) -> torch.Tensor:
        if self.padding_side == "left":
            return mask.long().argmax(1)  # first real token after the left padding
        return torch.zeros(mask.size(0), dtype=torch.long, device=mask.device)
