"""One loaded model per name and device per process, shared by every integration."""
from __future__ import annotations

import os
import threading

from .model import UniRep

__all__ = ["shared_model"]

_MODELS: dict[tuple[str, str], UniRep] = {}
_LOCK = threading.Lock()


def shared_model(name_or_path: str | os.PathLike, *, device: str | None = None) -> UniRep:
    """``UniRep.from_pretrained`` cached process-wide per name/directory and device, so a
    LangChain embedder, a LlamaIndex embedder and a store in one process load it once."""
    name = os.fspath(name_or_path)
    local = os.path.expanduser(name)
    key = (os.path.abspath(local) if os.path.exists(local) else name, str(device))
    with _LOCK:  # one load even when several threads ask at once
        model = _MODELS.get(key)
        if model is None:
            model = UniRep.from_pretrained(key[0], device=device)
            _MODELS[key] = model
        return model
