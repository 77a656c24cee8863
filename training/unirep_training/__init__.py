"""UniRep training: data, losses, trainer and export to the saved-model format.

``unirep-train --config configs/mini.yaml`` trains, checkpoints (resumable), evaluates on dev
and exports a directory that ``UniRep.from_pretrained`` loads.
"""
from .config import TrainConfig, load_config
from .data import Sample, Side, TaskMixSampler, VisionCurriculum, read_source
from .objective import Objective, ObjectiveConfig
from .trainer import Trainer

__all__ = [
    "Trainer",
    "TrainConfig",
    "load_config",
    "Objective",
    "ObjectiveConfig",
    "Sample",
    "Side",
    "TaskMixSampler",
    "VisionCurriculum",
    "read_source",
]
