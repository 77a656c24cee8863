"""The contract every backbone family implements.

A backbone turns a batch of items (each an optional text and zero or more images) into
token hidden states plus a mask. Pooling, the Matryoshka head and calibration live above
it, so a new family only has to say how it reads text and pixels.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

__all__ = ["Backbone", "BackboneOutput", "Item", "ItemError"]


class ItemError(ValueError):
    """Raised by ``prepare`` for one bad item; ``position`` is its index within the batch,
    which the caller maps back to the user's item index."""

    def __init__(self, position: int, message: str):
        super().__init__(message)
        self.position = position
        self.message = message


@dataclass
class Item:
    """One input: an optional text (task prefix already applied) and decoded RGB images."""

    text: str | None
    images: list[Image.Image]


@dataclass
class BackboneOutput:
    """Token states of the last layer, the attention mask (1 = real token) and, when asked,
    the states of every layer (``hidden_states[0]`` is the embedding output).
    ``pooled_residual`` (B, H), when set, is added to the pooled vector of each item (the
    fusion backbone's whole-image path)."""

    last_hidden_state: torch.Tensor  # (B, T, H)
    attention_mask: torch.Tensor  # (B, T) long/bool
    hidden_states: tuple[torch.Tensor, ...] | None = None
    pooled_residual: torch.Tensor | None = None


class Backbone(nn.Module, ABC):
    """Base class of ``unirep_core.backbones.*``.

    Subclasses set ``hidden_size`` and ``num_layers``, and name in ``trained_modules`` the
    child modules whose weights a saved UniRep model stores (projector, adapters); every
    other weight comes from the source named in the config (packaged blob, local dir, hub id).
    """

    hidden_size: int
    num_layers: int
    trained_modules: tuple[str, ...] = ()
    #: True when the family puts text first and pads on the right (mean/cls pooling safe);
    #: decoder families that pad on the left say so here so ``last`` pooling reads the right token.
    padding_side: str = "right"

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> "Backbone":
        """Build the backbone from the ``backbone`` section of a model config, loading base
        weights from where the config says."""

    @abstractmethod
    def prepare(self, items: Sequence[Item]) -> dict[str, Any]:
        """Tokenise texts and preprocess images of one batch into tensors (on CPU)."""

    @abstractmethod
    def encode_tokens(
        self, batch: dict[str, Any], *, output_hidden_states: bool = False
    ) -> BackboneOutput:
        """Run the network on a prepared batch (already moved to the model's device)."""

    @abstractmethod
    def cost(self, item: Item) -> int:
        """A cheap estimate of the item's sequence length, used to sort items into batches."""

    def export_config(self) -> dict[str, Any]:
        """The ``backbone`` config section that rebuilds this backbone (default: as given)."""
        return dict(self.config)  # type: ignore[attr-defined]
