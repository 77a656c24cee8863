"""Task mixing: every step draws one batch from one source, chosen by configured proportions.

Batches are single-source so in-batch negatives come from the same distribution and the loss
of the batch is that of its task. Everything is a pure function of ``(seed, step, samples
drawn so far per source)``: the source of step ``s`` comes from a generator seeded with
``(seed, s)``, and a source's samples are read through one fresh permutation per epoch seeded
with ``(seed, source, epoch)``. The sampler state is therefore just the per-source draw
counts, and a resumed run draws exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .samples import Sample

__all__ = ["VisionCurriculum", "TaskMixSampler"]

_CHOICE = 0x5EED


@dataclass(frozen=True)
class VisionCurriculum:
    """Share of image-text batches: ``start`` for ``hold_steps``, then linear to ``end`` over
    ``ramp_steps``, then ``end``. Text-only batches fill the rest, so early training (while the
    projector is still random) does not wash out the text geometry the head starts from."""

    start: float = 0.1
    end: float = 0.5
    ramp_steps: int = 1000
    hold_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"curriculum.{name} must be in [0, 1], got {v}")
        if self.ramp_steps < 0 or self.hold_steps < 0:
            raise ValueError("curriculum ramp_steps and hold_steps must be >= 0")

    def fraction(self, step: int) -> float:
        if step < self.hold_steps:
            return self.start
        if self.ramp_steps == 0:
            return self.end
        t = min(1.0, (step - self.hold_steps) / self.ramp_steps)
        return self.start + t * (self.end - self.start)


def _source_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class TaskMixSampler:
    """Draws ``(source name, list of samples)`` for each step.

    ``weights`` are relative proportions of batches per source. With a ``curriculum``, the
    sources whose samples carry images share ``curriculum.fraction(step)`` of the batches (split
    among them by weight) and the text-only sources share the rest.

    ``per_group`` (source -> k) draws a source by groups instead of samples: each group (an
    image and its captions) enters a batch with up to ``k`` of its samples, picked afresh each
    epoch. A batch of 256 captions then holds 64 pictures with 4 captions each rather than ~256
    pictures with one: every picture is pulled towards several descriptions at once (captions of
    one picture are never each other's negatives). In unirep-mini's stage 2 this raised Flickr8k
    dev t->i R@10 but lowered i->t R@1 (benchmarks/results/stage2_sweep.md), so the shipped
    recipe does not use it. The draw count of such a source counts groups.
    """

    def __init__(
        self,
        sources: Mapping[str, Sequence[Sample]],
        weights: Mapping[str, float],
        batch_sizes: Mapping[str, int] | int,
        *,
        seed: int = 0,
        curriculum: VisionCurriculum | None = None,
        per_group: Mapping[str, int] | None = None,
    ):
        if not sources:
            raise ValueError("the sampler needs at least one source")
        self.names = list(sources)
        for n in self.names:
            if not sources[n]:
                raise ValueError(f"source {n!r} has no samples")
            if weights.get(n, 0) < 0:
                raise ValueError(f"source {n!r}: weight must be >= 0")
        if sum(weights.get(n, 0) for n in self.names) <= 0:
            raise ValueError("source weights must not all be zero")
        self.sources = {n: list(sources[n]) for n in self.names}
        self.weights = {n: float(weights.get(n, 0.0)) for n in self.names}
        sizes = {n: int(batch_sizes) for n in self.names} if isinstance(batch_sizes, int) else dict(batch_sizes)
        self.batch_sizes = {n: int(sizes[n]) for n in self.names}
        if any(b < 1 for b in self.batch_sizes.values()):
            raise ValueError("batch sizes must be >= 1")
        self.seed = int(seed)
        self.curriculum = curriculum
        self.visual = {n: any(s.has_images for s in self.sources[n]) for n in self.names}
        self.drawn = {n: 0 for n in self.names}
        self.per_group = {n: int((per_group or {}).get(n, 1)) for n in self.names}
        for n, k in self.per_group.items():
            if k < 1:
                raise ValueError(f"source {n!r}: per_group must be >= 1, got {k}")
        self.groups: dict[str, list[list[int]]] = {}
        for n in self.names:
            if self.per_group[n] > 1:
                members: dict[str, list[int]] = {}
                for i, smp in enumerate(self.sources[n]):
                    members.setdefault(smp.group or f"#{i}", []).append(i)
                self.groups[n] = list(members.values())

    # -- proportions -----------------------------------------------------------------------
    def proportions(self, step: int) -> dict[str, float]:
        """Probability of each source at ``step`` (sums to 1)."""
        w = self.weights
        vis = [n for n in self.names if self.visual[n] and w[n] > 0]
        txt = [n for n in self.names if not self.visual[n] and w[n] > 0]
        if self.curriculum is None or not vis or not txt:
            total = sum(w.values())
            return {n: w[n] / total for n in self.names}
        f = self.curriculum.fraction(step)
        wv, wt = sum(w[n] for n in vis), sum(w[n] for n in txt)
        out = {n: 0.0 for n in self.names}
        out.update({n: f * w[n] / wv for n in vis})
        out.update({n: (1.0 - f) * w[n] / wt for n in txt})
        return out

    def source_at(self, step: int) -> str:
        p = self.proportions(step)
        u = np.random.default_rng([self.seed, _CHOICE, int(step)]).random()
        acc = 0.0
        for n in self.names:
            acc += p[n]
            if u < acc:
                return n
        return [n for n in self.names if p[n] > 0][-1]

    # -- drawing ---------------------------------------------------------------------------
    def _permutation(self, name: str, epoch: int) -> np.ndarray:
        return self._permutation_of(name, epoch, len(self.sources[name]))

    def _permutation_of(self, name: str, epoch: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _source_id(name), epoch]).permutation(n)

    def _take(self, name: str, count: int) -> list[Sample]:
        if name in self.groups:
            return self._take_groups(name, count)
        n = len(self.sources[name])
        out: list[Sample] = []
        pos = self.drawn[name]
        while len(out) < count:
            epoch, offset = divmod(pos, n)
            perm = self._permutation(name, epoch)
            k = min(count - len(out), n - offset)
            out.extend(self.sources[name][i] for i in perm[offset : offset + k])
            pos += k
        self.drawn[name] = pos
        return out

    def _take_groups(self, name: str, count: int) -> list[Sample]:
        groups, k = self.groups[name], self.per_group[name]
        src = self.sources[name]
        out: list[Sample] = []
        pos = self.drawn[name]
        perm, perm_epoch = None, -1
        while len(out) < count:
            epoch, offset = divmod(pos, len(groups))
            if epoch != perm_epoch:
                perm, perm_epoch = self._permutation_of(name, epoch, len(groups)), epoch
            g = int(perm[offset])
            members = groups[g]
            pick = np.random.default_rng([self.seed, _source_id(name), epoch, g]).permutation(len(members))[:k]
            out.extend(src[members[i]] for i in pick[: count - len(out)])
            pos += 1
        self.drawn[name] = pos
        return out

    def batch(self, step: int) -> tuple[str, list[Sample]]:
        """The batch of ``step`` (advances that source's draw count)."""
        name = self.source_at(step)
        return name, self._take(name, self.batch_sizes[name])

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "drawn": dict(self.drawn), "sizes": {n: len(v) for n, v in self.sources.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this run uses {self.seed}")
        sizes = state.get("sizes", {})
        for n in self.names:
            if n in sizes and int(sizes[n]) != len(self.sources[n]):
                raise ValueError(f"source {n!r} had {sizes[n]} samples when checkpointed, now {len(self.sources[n])}")
        self.drawn = {n: int(state["drawn"].get(n, 0)) for n in self.names}
