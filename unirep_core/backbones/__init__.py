"""Backbone families, looked up lazily by the ``backbone.kind`` of a model config."""
from __future__ import annotations

import importlib
from typing import Any

from .base import Backbone, BackboneOutput, Item, ItemError

__all__ = ["Backbone", "BackboneOutput", "Item", "ItemError", "BACKBONES", "build_backbone"]

#: kind -> "module:Class"; modules are imported only when a model of that kind is built.
BACKBONES = {
    "fusion": "unirep_core.backbones.fusion:FusionBackbone",
    "hf_vlm": "unirep_core.backbones.hf_vlm:HFVLMBackbone",
}


def build_backbone(config: dict[str, Any]) -> Backbone:
    kind = config.get("kind")
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone kind {kind!r}; known kinds: {sorted(BACKBONES)}")
    module, cls = BACKBONES[kind].split(":")
    return getattr(importlib.import_module(module), cls).from_config(config)
