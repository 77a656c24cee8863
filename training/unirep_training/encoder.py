"""Differentiable encoding of sample sides during training, with the frozen parts cached.

:class:`SideEncoder` turns a list of :class:`Side` into the model's full-size, un-normalised
head outputs (what ``UniRep.forward`` returns), choosing per item the cheapest exact route:

* text-only item + frozen text path + text cache  -> ``head(cached pooled feature)``;
* item with images + image cache (fusion)          -> the real ``backbone.prepare`` token
  layout with the cached, grid-pooled feature maps in place of pixels; the backbone's vision
  module is wrapped by :class:`FeatureMapPassthrough`, which hands feature maps straight to
  the (trainable) projector, so ``UniRep.forward`` runs unchanged;
* anything else                                    -> ``prepare`` + ``forward`` on decoded images.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from unirep_core.backbones.base import Item, ItemError
from unirep_core.inputs import DEFAULT_MAX_IMAGE_PIXELS, load_image

from .data.cache import ImageFeatureCache, TextFeatureCache
from .data.samples import Side

__all__ = ["SideEncoder", "FeatureMapPassthrough", "install_passthrough", "remove_passthrough"]


class FeatureMapPassthrough(nn.Module):
    """Wraps a vision tower: pixel batches ``(N, 3, S, S)`` run through it, precomputed feature
    maps ``(N, C, g, g)`` (C = the tower's channel count) are returned as they are."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower
        self.out_channels = int(getattr(tower, "out_channels"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] == self.out_channels:
            return x
        return self.tower(x)

    def tap_channels(self, taps):
        return self.tower.tap_channels(taps)

    def features(self, pixels: torch.Tensor, taps=()):
        return self.tower.features(pixels, taps)


def install_passthrough(model: Any) -> None:
    bb = model.backbone
    if not isinstance(bb.vision, FeatureMapPassthrough):
        bb.vision = FeatureMapPassthrough(bb.vision)


def remove_passthrough(model: Any) -> None:
    bb = model.backbone
    if isinstance(getattr(bb, "vision", None), FeatureMapPassthrough):
        bb.vision = bb.vision.tower


_PLACEHOLDER = Image.new("RGB", (1, 1))


class SideEncoder:
    """Encodes sides (text + image paths + prefix key) through a UniRep model for training."""

    def __init__(self, model: Any, *, image_cache: ImageFeatureCache | None = None,
                 text_cache: TextFeatureCache | None = None, max_pixels: int | None = None):
        self.model = model
        self.image_cache = image_cache
        self.text_cache = text_cache
        self.max_pixels = int(max_pixels or model.config.limits.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        if image_cache is not None:
            install_passthrough(model)

    def text_of(self, side: Side) -> str | None:
        if side.text is None:
            return None
        return self.model.check_task(side.prefix) + side.text

    def __call__(self, sides: Sequence[Side]) -> torch.Tensor:
        return self.encode(sides)

    def encode(self, sides: Sequence[Side]) -> torch.Tensor:
        model = self.model
        cached = [i for i, s in enumerate(sides) if not s.images and self.text_cache is not None]
        direct = [i for i in range(len(sides)) if i not in set(cached)]
        parts: list[tuple[list[int], torch.Tensor]] = []
        if cached:
            pooled = self.text_cache.get([self.text_of(sides[i]) for i in cached]).to(model.device)  # type: ignore[union-attr,misc]
            parts.append((cached, model.head(pooled.to(model.head.proj.weight.dtype))))
        if direct:
            parts.append((direct, model(self.prepare([sides[i] for i in direct]))))
        out = parts[0][1].new_empty((len(sides), model.dim))
        for idx, vectors in parts:
            out = out.index_copy(0, torch.tensor(idx, device=out.device), vectors.to(out.dtype))
        return out

    def prepare(self, sides: Sequence[Side]) -> dict[str, Any]:
        """The model batch of these sides (cached feature maps in place of pixels when possible)."""
        use_cache = self.image_cache is not None
        items = []
        for pos, s in enumerate(sides):
            if use_cache:
                images = [_PLACEHOLDER] * len(s.images)
            else:
                images = [load_image(p, index=pos, position=j, max_pixels=self.max_pixels) for j, p in enumerate(s.images)]
            items.append(Item(self.text_of(s), images))
        try:
            # with the cache the pixels would be dropped below: lay out tokens only
            batch = self.model.backbone.prepare_layout(items) if use_cache else self.model.prepare(items)
        except ItemError as e:
            raise ValueError(f"sample side {sides[e.position]!r}: {e.message}") from e
        if use_cache:
            paths = [p for s in sides for p in s.images]
            if paths:
                cells, descriptors = self.image_cache.get_features(paths)  # type: ignore[union-attr]
                batch["pixel_values"] = cells
                if descriptors is not None:
                    batch["image_descriptors"] = descriptors
            else:
                batch["pixel_values"] = torch.zeros(0, self.image_cache.channels, 1, 1)  # type: ignore[union-attr]
        return batch
