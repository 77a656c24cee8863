"""Training data: samples, readers of the supported formats, task-mixing sampler, feature caches."""
from .readers import (READERS, read_emoji, read_en_vi_parallel, read_flickr8k, read_jsonl, read_source, read_stsb,
                      read_vi_captions)
from .sampler import TaskMixSampler, VisionCurriculum
from .samples import TRAIN_TASKS, Sample, Side, duplicate_matrix
from .splits import calibration_half, split_of

__all__ = [
    "Sample", "Side", "TRAIN_TASKS", "duplicate_matrix",
    "READERS", "read_source", "read_flickr8k", "read_vi_captions", "read_emoji", "read_stsb",
    "read_en_vi_parallel", "read_jsonl",
    "TaskMixSampler", "VisionCurriculum", "split_of", "calibration_half",
]
