"""UniRep core: one encoder for text, images and both, with Matryoshka sizes and calibration."""
from .backbones import Backbone, BackboneOutput, Item
from .calibration import Calibrator
from .config import ModelConfig
from .head import MatryoshkaHead, truncate
from .inputs import load_image
from .model import UniRep
from .pooling import Pooler
from .registry import list_models
from .shared import shared_model

__version__ = "0.1.0"

__all__ = [
    "UniRep",
    "ModelConfig",
    "MatryoshkaHead",
    "Calibrator",
    "Pooler",
    "Backbone",
    "BackboneOutput",
    "Item",
    "list_models",
    "shared_model",
    "load_image",
    "truncate",
    "__version__",
]
