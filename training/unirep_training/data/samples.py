"""The unit of training data: a pair of sides (text and/or images) with a task and a group."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["Side", "Sample", "TRAIN_TASKS", "duplicate_matrix"]

#: Tasks a sample can carry: the model's training prefixes plus caption (text <-> image) and
#: retrieval (query -> document) pairs. The config maps each task to a loss.
TRAIN_TASKS = ("caption", "retrieval", "text_pair", "instr", "ocr", "vqa_single", "vqa_multi")


@dataclass(frozen=True)
class Side:
    """One side of a pair: optional text, zero or more image paths, and the model prefix
    (a key of the model config's ``prefixes``) applied to the text."""

    text: str | None = None
    images: tuple[str, ...] = ()
    prefix: str = "query"

    def __post_init__(self) -> None:
        if self.text is None and not self.images:
            raise ValueError("a side needs a text, images or both")
        object.__setattr__(self, "images", tuple(str(p) for p in self.images))

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    def key(self) -> tuple:
        """Content identity (used to find duplicates)."""
        return (self.text, self.images)


@dataclass(frozen=True)
class Sample:
    """A training/evaluation pair.

    ``task`` picks the loss and the mixing bucket; ``score`` is a graded relevance in [0, 1]
    (STS) or None for positive pairs; samples with the same ``group`` (an image, a paragraph)
    are mutual positives and never each other's in-batch negatives (nor are samples sharing
    an identical side, see :func:`duplicate_matrix`).
    """

    task: str
    a: Side
    b: Side
    score: float | None = None
    group: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.task not in TRAIN_TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {list(TRAIN_TASKS)}")
        if self.score is not None and not 0.0 <= float(self.score) <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score}")

    @property
    def has_images(self) -> bool:
        return self.a.has_images or self.b.has_images


def duplicate_matrix(samples: Sequence[Sample]) -> np.ndarray:
    """``(n, n)`` bool: ``True`` where pairs ``i`` and ``j`` are mutual positives - same group,
    same ``a`` side (one caption written for two images) or same ``b`` side (two captions of one
    image). Pairwise, never transitive: two images that merely share a caption with a third
    one stay negatives of each other."""
    def ids(keys: list) -> np.ndarray:
        seen: dict = {}
        return np.array([seen.setdefault(k, len(seen)) for k in keys])

    g = ids([s.group or id(s) for s in samples])
    ka = ids([s.a.key() for s in samples])
    kb = ids([s.b.key() for s in samples])
    return (g[:, None] == g[None, :]) | (ka[:, None] == ka[None, :]) | (kb[:, None] == kb[None, :])
