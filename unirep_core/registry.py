"""Named models: JSON configs in ``model_configs/`` and trained directories in ``pretrained/``.

``from_pretrained(name)`` looks a name up here first; a shipped ``pretrained/<name>/``
directory (config + trained weights) wins over the bare architecture config, so the trained
default model is picked up as soon as it ships.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["list_models", "registered_config_path", "shipped_model_dir"]

_PKG = resources.files("unirep_core")


def _config_dir() -> Path:
    return Path(str(_PKG.joinpath("model_configs")))


def _pretrained_dir() -> Path:
    return Path(str(_PKG.joinpath("pretrained")))


def list_models() -> list[str]:
    """Names accepted by ``UniRep.from_pretrained`` without a path or a hub id."""
    names = {p.stem for p in _config_dir().glob("*.json")}
    if _pretrained_dir().is_dir():
        names |= {p.name for p in _pretrained_dir().iterdir() if (p / "config.json").is_file()}
    return sorted(names)


def registered_config_path(name: str) -> Path | None:
    path = _config_dir() / f"{name}.json"
    return path if path.is_file() else None


def shipped_model_dir(name: str) -> Path | None:
    path = _pretrained_dir() / name
    return path if (path / "config.json").is_file() else None
