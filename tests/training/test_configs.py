"""Every shipped training config parses (the recipes in the README must not rot)."""
from pathlib import Path

import pytest

from unirep_training.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_parses(path):
    cfg = load_config(path)
    assert cfg.run.steps > 0 and cfg.data.train
    assert all(s.per_group >= 1 and s.weight >= 0 for s in cfg.data.train)
    names = [s.name for s in cfg.data.train]
    assert len(set(names)) == len(names)


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"mini.yaml", "mini-images.yaml", "tiny.yaml"}


def test_bad_export_dtype_fails_when_the_config_loads():
    with pytest.raises(ValueError, match="export.weights_dtype must be"):
        load_config(CONFIG_DIR / "mini-images.yaml", overrides=["export.weights_dtype=int8"])
