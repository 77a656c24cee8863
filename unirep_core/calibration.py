"""Calibration: cosine similarity -> probability of relevance, one logistic map per size."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["Calibrator", "DEFAULT_CALIBRATION"]

#: Used until a model ships fitted parameters: centred on cosine 0.8 (e5's typical
#: threshold between related and unrelated texts) and marked as not fitted in the config.
DEFAULT_CALIBRATION = (20.0, -16.0)


class Calibrator:
    """``P(relevant | cos) = sigmoid(a_d * cos + b_d)`` with ``a_d > 0`` (monotonic)."""

    def __init__(self, params: Mapping[int | str, Sequence[float]] | None, dims: Sequence[int]):
        self.dims = tuple(int(d) for d in dims)
        params = params or {}
        self.params: dict[int, tuple[float, float]] = {}
        for d in self.dims:
            a, b = params.get(str(d), params.get(d, DEFAULT_CALIBRATION))  # type: ignore[call-overload]
            if not a > 0:
                raise ValueError(f"calibration for size {d}: slope must be > 0, got {a}")
            self.params[d] = (float(a), float(b))
        self.fitted = bool(params)

    def __call__(self, cosine: np.ndarray, dim: int) -> np.ndarray:
        if dim not in self.params:
            raise ValueError(f"no calibration for vectors of size {dim}; allowed sizes: {list(self.dims)}")
        a, b = self.params[dim]
        z = np.asarray(cosine, dtype=np.float64) * a + b
        # Split by sign so exp never overflows.
        out = np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {str(d): [a, b] for d, (a, b) in self.params.items()}
