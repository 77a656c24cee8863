"""Device choice: CUDA, then Apple MPS, then CPU, unless the caller names one."""
from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
