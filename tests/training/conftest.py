import pytest
import torch

from tests.tiny_models import build_tiny_unirep
from tests.training.tiny_data import write_tiny_data

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tiny_train_model")
    build_tiny_unirep(root)
    return root / "model"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One feature cache for the whole session (keys include the fingerprint, so it is safe)."""
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir, tiny_data, shared_cache):
    """``tiny_config(*overrides)`` -> TrainConfig of configs/tiny.yaml on the tiny model and data."""
    from unirep_training.config import load_config

    def make(*overrides: str, name: str = "run"):
        base = [f"run.output_dir={tmp_path / name}", f"model.name_or_path={tiny_model_dir}",
                f"data.root={tiny_data}", f"cache.dir={shared_cache}"]
        return load_config(CONFIGS / "tiny.yaml", base + list(overrides))

    return make
