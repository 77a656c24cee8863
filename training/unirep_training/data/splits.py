"""Deterministic splits by key (an image name, a page): the same key always lands on the same side."""
from __future__ import annotations

import hashlib

__all__ = ["unit_hash", "split_of", "calibration_half"]


def unit_hash(key: str, salt: str | int = "") -> float:
    """A number in [0, 1) that depends only on ``key`` and ``salt`` (SHA-1, platform independent)."""
    digest = hashlib.sha1(f"{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(key: str, dev_fraction: float, seed: int | str = 0) -> str:
    """``"dev"`` for about ``dev_fraction`` of keys, ``"train"`` for the rest."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    return "dev" if unit_hash(key, f"split:{seed}") < dev_fraction else "train"


def calibration_half(group: str, salt: str = "calibration") -> str:
    """Dev pairs are split by group into a ``"fit"`` half (fits the calibration at export) and an
    ``"eval"`` half (measures its ECE), so calibration is never judged on the pairs it was fitted on."""
    return "fit" if unit_hash(group, salt) < 0.5 else "eval"
