"""Training losses on plain tensors (no model, no data), each unit-tested on its own.

Conventions: ``a`` and ``b`` are ``(n, d)`` embeddings whose row ``i`` forms pair ``i``;
functions that need unit vectors normalise themselves. ``groups`` is optional: an ``(n,)``
integer tensor (pairs with equal ids are mutual positives: several captions of one image,
duplicated sentences) or an ``(n, n)`` bool matrix of mutual positives; either way such
pairs are never counted as each other's negatives.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "info_nce",
    "mse_similarity",
    "triplet_hardest",
    "cosine_loss",
    "matryoshka",
    "calibration_loss",
    "uniformity",
    "duplicate_mask",
    "LogitScale",
    "CalibrationParams",
]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def duplicate_mask(groups: torch.Tensor | None, n: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n, n)`` bool: True where ``j != i`` is a positive of ``i`` (same group id, or marked in
    an ``(n, n)`` bool matrix) - a positive that is not the pair itself."""
    if groups is None:
        return torch.zeros(n, n, dtype=torch.bool, device=device)
    groups = torch.as_tensor(groups).to(device)
    same = groups.bool() if groups.dim() == 2 else groups.unsqueeze(0) == groups.unsqueeze(1)
    if same.shape != (n, n):
        raise ValueError(f"groups give a {tuple(same.shape)} duplicate matrix for {n} pairs")
    return (same | same.T) & ~torch.eye(n, dtype=torch.bool, device=device)


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float, groups: torch.Tensor | None = None,
             *, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE with in-batch negatives: cross-entropy of ``scale * cos(a_i, b_j)`` over ``j``
    with target ``i`` (and over ``i`` for ``b_j`` when ``symmetric``). Duplicates (same group)
    are removed from the candidates, not counted as negatives."""
    a, b = _unit(a), _unit(b)
    logits = (a @ b.T) * scale
    dup = duplicate_mask(groups, a.shape[0], a.device)
    logits = logits.masked_fill(dup, float("-inf"))
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


def mse_similarity(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
                   target_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Mean squared error between ``cos(a_i, b_i)`` and the graded target mapped linearly from
    [0, 1] to ``target_range`` (e.g. an STS score / 5 -> cosine)."""
    lo, hi = float(target_range[0]), float(target_range[1])
    cos = (_unit(a) * _unit(b)).sum(-1)
    return F.mse_loss(cos, lo + (hi - lo) * target.to(cos.dtype))


def triplet_hardest(a: torch.Tensor, b: torch.Tensor, margin: float = 0.2, groups: torch.Tensor | None = None,
                    *, symmetric: bool = True) -> torch.Tensor:
    """Triplet margin on cosine with the hardest in-batch negative:
    ``mean_i relu(margin - cos(a_i, b_i) + max_{j not dup} cos(a_i, b_j))``."""
    a, b = _unit(a), _unit(b)
    sim = a @ b.T
    n = a.shape[0]
    exclude = duplicate_mask(groups, n, a.device) | torch.eye(n, dtype=torch.bool, device=a.device)
    pos = sim.diagonal()

    def one(s: torch.Tensor) -> torch.Tensor:
        hardest = s.masked_fill(exclude, float("-inf")).max(dim=1).values
        valid = torch.isfinite(hardest)  # a row whose every other pair is a duplicate has no negative
        if not bool(valid.any()):
            return s.sum() * 0.0
        return F.relu(margin - pos[valid] + hardest[valid]).mean()

    loss = one(sim)
    return 0.5 * (loss + one(sim.T)) if symmetric else loss


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Direct cosine maximisation: ``mean_i (1 - cos(a_i, b_i))``."""
    return (1.0 - (_unit(a) * _unit(b)).sum(-1)).mean()


def matryoshka(loss_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
               dims: Sequence[int], weights: Sequence[float] | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Matryoshka loss from one forward pass: ``loss_fn(a_d, b_d, d)`` on every size ``d`` (first
    ``d`` components, re-normalised), combined as ``sum_d w_d loss_d / sum_d w_d``.

    Returns the combined loss and the per-size losses."""
    weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} Matryoshka weights for {len(dims)} sizes")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("Matryoshka weights must be >= 0 and not all zero")
    per: dict[int, torch.Tensor] = {}
    total = a.new_zeros(())
    for d, w in zip(dims, weights):
        per[int(d)] = loss_fn(_unit(a[..., :d]), _unit(b[..., :d]), int(d))
        total = total + w * per[int(d)]
    return total / sum(weights), per


def calibration_loss(cos: torch.Tensor, labels: torch.Tensor, slope: torch.Tensor, bias: torch.Tensor,
                     *, rank_weight: float = 0.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Calibration of ``p = sigmoid(slope * cos + bias)`` against relevance ``labels``:
    binary cross-entropy plus ``rank_weight`` times a pairwise (RankNet) term
    ``softplus(z_q - z_p)`` over pairs where ``p`` is more relevant than ``q``.

    * ``cos`` a vector of pair cosines, ``labels`` graded in [0, 1] (STS): ranking over all
      pairs with different labels, weighted by the label difference (O(n^2)).
    * ``cos`` an ``(n, m)`` query x candidate matrix (in-batch), ``labels`` binary: ranking of
      each row's positives above that row's negatives (O(n * m * positives per row)).

    ``mask`` (same shape, True = use) leaves entries out. The BCE term averages positives and
    negatives separately and takes the mean of both, so an in-batch matrix with n positives
    and n^2 - n negatives does not simply push every probability to 0."""
    labels = labels.to(cos.dtype)
    mask = torch.ones_like(cos, dtype=torch.bool) if mask is None else mask.bool()
    z = slope * cos + bias
    bce = F.binary_cross_entropy_with_logits(z, labels, reduction="none")
    terms = []
    for w in (labels * mask, (1.0 - labels) * mask):
        if bool(w.sum() > 0):
            terms.append((bce * w).sum() / w.sum())
    loss = torch.stack(terms).mean() if terms else z.sum() * 0.0
    if not rank_weight:
        return loss
    if z.dim() == 1:
        diff = (labels.unsqueeze(1) - labels.unsqueeze(0)).clamp_min(0.0) * (mask.unsqueeze(1) & mask.unsqueeze(0))
        if bool(diff.sum() > 0):
            rank = (F.softplus(z.unsqueeze(0) - z.unsqueeze(1)) * diff).sum() / diff.sum()
            loss = loss + rank_weight * rank
        return loss
    pos = (labels > 0.5) & mask
    neg = (labels <= 0.5) & mask
    k = int(pos.sum(1).max())
    if k == 0 or not bool(neg.any()):
        return loss
    # each row's (up to k) positive logits against all its negatives
    pos_rank, pos_idx = pos.to(z.dtype).topk(k, dim=1)
    z_pos = z.gather(1, pos_idx)  # (n, k)
    pair = (pos_rank > 0.5).unsqueeze(2) & neg.unsqueeze(1)  # (n, k, m)
    rank = F.softplus(z.unsqueeze(1) - z_pos.unsqueeze(2))[pair].mean()
    return loss + rank_weight * rank


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola's uniformity: ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of unit vectors
    (lower = more uniformly spread on the sphere)."""
    x = _unit(x)
    n = x.shape[0]
    if n < 2:
        return x.sum() * 0.0
    sq = torch.pdist(x, p=2).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


class LogitScale(nn.Module):
    """Learnable inverse temperature ``exp(log_scale)``, clamped to ``[1/max_t, 1/min_t]``.

    The clamp happens in the forward pass (so a run-away value never reaches the loss) and
    on the parameter after each optimiser step (:meth:`clamp_`), as CLIP does."""

    def __init__(self, init: float = 0.05, min_temperature: float = 0.01, max_temperature: float = 0.2,
                 learnable: bool = True):
        super().__init__()
        if not 0 < min_temperature <= init <= max_temperature:
            raise ValueError(f"temperature bounds must satisfy 0 < min <= init <= max, got "
                             f"{min_temperature}, {init}, {max_temperature}")
        self.lo = math.log(1.0 / max_temperature)
        self.hi = math.log(1.0 / min_temperature)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(self.lo, self.hi).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self().detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_scale.clamp_(self.lo, self.hi)


class CalibrationParams(nn.Module):
    """Per-size logistic maps ``sigmoid(a_d cos + b_d)`` learned during training (``a_d > 0``
    via ``a = exp(log_a)``); the exported calibration is refitted on held-out dev pairs."""

    def __init__(self, dims: Sequence[int], slope: float = 20.0, bias: float = -16.0):
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        self.log_a = nn.Parameter(torch.full((len(self.dims),), math.log(slope)))
        self.b = nn.Parameter(torch.full((len(self.dims),), float(bias)))

    def forward(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.dims.index(int(dim))
        return self.log_a[i].exp(), self.b[i]

    def to_dict(self) -> dict[str, list[float]]:
        return {str(d): [float(self.log_a[i].exp()), float(self.b[i])] for i, d in enumerate(self.dims)}
