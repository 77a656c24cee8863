"""The training objective: the loss of a batch, chosen by its task, on every Matryoshka size.

A batch of one task gives full-size head outputs ``a`` and ``b``; for each size ``d`` the
task's loss terms (``infonce``, ``mse``, ``triplet``, ``cosine``) and the calibration term
are computed on the truncated, re-normalised vectors and weighted across sizes
(:func:`losses.matryoshka`); an optional uniformity term acts on the full vectors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import losses as L

__all__ = ["LossSpec", "ObjectiveConfig", "Objective", "LOSS_KINDS"]

LOSS_KINDS = ("infonce", "mse", "triplet", "cosine")


@dataclass
class LossSpec:
    kind: str
    weight: float = 1.0
    symmetric: bool = True  # infonce, triplet
    margin: float = 0.2  # triplet
    target_range: tuple[float, float] = (0.0, 1.0)  # mse

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {self.kind!r}; expected one of {list(LOSS_KINDS)}")
        self.target_range = (float(self.target_range[0]), float(self.target_range[1]))

    @classmethod
    def parse(cls, value: Any) -> list["LossSpec"]:
        """``"infonce"``, ``{"kind": ..., ...}`` or a list of them."""
        if isinstance(value, (list, tuple)):
            return [s for v in value for s in cls.parse(v)]
        if isinstance(value, str):
            return [cls(value)]
        if isinstance(value, Mapping):
            return [cls(**dict(value))]
        raise ValueError(f"a loss must be a name, a mapping or a list, got {value!r}")


@dataclass
class ObjectiveConfig:
    tasks: dict[str, list[LossSpec]] = field(default_factory=lambda: {
        "caption": [LossSpec("infonce")], "retrieval": [LossSpec("infonce")], "text_pair": [LossSpec("mse")]})
    dim_weights: list[float] | None = None
    temperature: dict[str, Any] = field(default_factory=lambda: {"init": 0.05, "min": 0.01, "max": 0.2, "learnable": True})
    calibration: dict[str, Any] = field(default_factory=lambda: {"weight": 0.0, "rank_weight": 1.0})
    uniformity: dict[str, Any] = field(default_factory=lambda: {"weight": 0.0, "t": 2.0})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ObjectiveConfig":
        data = dict(data)
        unknown = set(data) - {"tasks", "dim_weights", "temperature", "calibration", "uniformity"}
        if unknown:
            raise ValueError(f"losses: unknown keys {sorted(unknown)}")
        cfg = cls()
        if "tasks" in data:
            cfg.tasks = {str(t): LossSpec.parse(v) for t, v in data["tasks"].items()}
        if data.get("dim_weights") is not None:
            cfg.dim_weights = [float(w) for w in data["dim_weights"]]
        for key in ("temperature", "calibration", "uniformity"):
            if key in data:
                getattr(cfg, key).update(dict(data[key] or {}))
        return cfg


class Objective(nn.Module):
    """Holds the loss's own parameters (temperature, in-training calibration) and computes the
    loss of one batch: ``objective(task, a, b, groups=..., scores=...) -> (loss, logs)``."""

    def __init__(self, config: ObjectiveConfig, dims: Sequence[int]):
        super().__init__()
        self.config = config
        self.dims = tuple(int(d) for d in dims)
        w = config.dim_weights
        if w is not None and len(w) != len(self.dims):
            raise ValueError(f"losses.dim_weights has {len(w)} entries for sizes {list(self.dims)}")
        self.dim_weights = list(w) if w is not None else [1.0] * len(self.dims)
        t = config.temperature
        self.logit_scale = L.LogitScale(float(t.get("init", 0.05)), float(t.get("min", 0.01)),
                                        float(t.get("max", 0.2)), bool(t.get("learnable", True)))
        self.calibration_weight = float(config.calibration.get("weight", 0.0))
        self.rank_weight = float(config.calibration.get("rank_weight", 1.0))
        self.calibration = L.CalibrationParams(self.dims, float(config.calibration.get("init_slope", 20.0)),
                                               float(config.calibration.get("init_bias", -16.0)))
        self.uniformity_weight = float(config.uniformity.get("weight", 0.0))
        self.uniformity_t = float(config.uniformity.get("t", 2.0))

    def check_tasks(self, tasks: Sequence[str]) -> None:
        missing = sorted(set(tasks) - set(self.config.tasks))
        if missing:
            raise ValueError(f"no loss configured for tasks {missing}; losses.tasks has {sorted(self.config.tasks)}")

    def forward(self, task: str, a: torch.Tensor, b: torch.Tensor, *, groups: torch.Tensor | None = None,
                scores: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        specs = self.config.tasks.get(task)
        if specs is None:
            raise ValueError(f"no loss configured for task {task!r}")
        a, b = a.float(), b.float()
        scale = self.logit_scale()
        n = a.shape[0]

        def at_size(ad: torch.Tensor, bd: torch.Tensor, d: int) -> torch.Tensor:
            total = ad.new_zeros(())
            for s in specs:
                if s.kind == "infonce":
                    term = L.info_nce(ad, bd, scale, groups, symmetric=s.symmetric)
                elif s.kind == "mse":
                    if scores is None:
                        raise ValueError(f"task {task!r}: the mse loss needs graded samples (score)")
                    term = L.mse_similarity(ad, bd, scores, s.target_range)
                elif s.kind == "triplet":
                    term = L.triplet_hardest(ad, bd, s.margin, groups, symmetric=s.symmetric)
                else:
                    term = L.cosine_loss(ad, bd)
                total = total + s.weight * term
            if self.calibration_weight:
                slope, bias = self.calibration(d)
                if scores is not None:
                    cos, labels = (ad * bd).sum(-1), scores
                else:
                    cos = ad @ bd.T
                    eye = torch.eye(n, dtype=torch.bool, device=a.device)
                    labels = (eye | L.duplicate_mask(groups, n, a.device)).to(cos.dtype)
                total = total + self.calibration_weight * L.calibration_loss(
                    cos, labels, slope, bias, rank_weight=self.rank_weight)
            return total

        loss, per = L.matryoshka(at_size, a, b, self.dims, self.dim_weights)
        logs = {f"loss@{d}": float(v.detach()) for d, v in per.items()}
        if self.uniformity_weight:
            u = 0.5 * (L.uniformity(a, self.uniformity_t) + L.uniformity(b, self.uniformity_t))
            loss = loss + self.uniformity_weight * u
            logs["uniformity"] = float(u.detach())
        logs["temperature"] = float(1.0 / scale.detach())
        return loss, logs

    @torch.no_grad()
    def after_step(self) -> None:
        self.logit_scale.clamp_()
