"""Model configuration: a JSON document, read and written as plain data.

A config says everything needed to rebuild a model: the backbone family and where its base
weights come from, the pooling, the task prefixes, the Matryoshka sizes and the calibration.
Trained parts (head, projector, adapters) sit beside it as safetensors.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelConfig", "TASKS", "POOLING_MODES", "CONFIG_NAME"]

CONFIG_NAME = "config.json"
#: Tasks every model config must give a prefix for (an empty string is allowed).
TASKS = ("query", "document", "text_pair", "instr", "ocr", "vqa_single", "vqa_multi")
POOLING_MODES = ("mean", "cls", "last", "multi_layer")


@dataclass
class ModelConfig:
    name: str
    backbone: dict[str, Any]
    head: dict[str, Any]
    prefixes: dict[str, str]
    pooling: dict[str, Any] = field(default_factory=lambda: {"mode": "mean"})
    calibration: dict[str, list[float]] | None = None
    limits: dict[str, int] = field(default_factory=dict)
    description: str = ""
    #: Free-form provenance (training run, data split, metrics): kept, never interpreted.
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [t for t in TASKS if t not in self.prefixes]
        if missing:
            raise ValueError(f"config {self.name!r}: prefixes missing for tasks {missing}")
        mode = self.pooling.get("mode", "mean")
        if mode not in POOLING_MODES:
            raise ValueError(
                f"config {self.name!r}: unknown pooling mode {mode!r}; expected one of {POOLING_MODES}"
            )
        if mode == "multi_layer" and not self.pooling.get("layers"):
            raise ValueError(f"config {self.name!r}: pooling 'multi_layer' needs a 'layers' list")
        dims = self.head.get("dims")
        if not dims or list(dims) != sorted(set(dims)):
            raise ValueError(f"config {self.name!r}: head.dims must be increasing sizes, got {dims}")
        if "kind" not in self.backbone:
            raise ValueError(f"config {self.name!r}: backbone.kind is required")

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.head["dims"])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config {data.get('name')!r}: unknown keys {unknown}")
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "backbone": copy.deepcopy(self.backbone),
            "pooling": copy.deepcopy(self.pooling),
            "prefixes": dict(self.prefixes),
            "head": copy.deepcopy(self.head),
            "calibration": copy.deepcopy(self.calibration),
            "limits": dict(self.limits),
            "meta": copy.deepcopy(self.meta),
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        return path
