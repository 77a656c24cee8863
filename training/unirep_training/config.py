"""Training configuration: a YAML or JSON document, validated into dataclasses.

Top-level sections: ``run``, ``model``, ``cache``, ``data``, ``curriculum``, ``losses``,
``optim``, ``export`` (see ``configs/mini.yaml`` for a commented example). Unknown keys are
errors. ``--set section.key=value`` overrides (value parsed as YAML) apply before validation.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from .data.sampler import VisionCurriculum
from .objective import ObjectiveConfig

__all__ = ["TrainConfig", "load_config", "apply_overrides", "SourceConfig"]


def _strict(cls, data: Mapping[str, Any] | None, where: str):
    data = dict(data or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(names)}")
    return cls(**data)


@dataclass
class RunConfig:
    output_dir: str = "runs/unirep"
    seed: int = 0
    steps: int = 1000
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    device: str | None = None  # None: cuda > mps > cpu
    threads: int | None = None  # torch.set_num_threads
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("run.steps must be >= 1")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("run.checkpoint_every must be >= 0 and run.keep_checkpoints >= 1")


@dataclass
class ModelSection:
    #: registered name or saved directory; its config (and weights, if any) are the start point
    name_or_path: str = "unirep-mini"
    #: a full model config instead of name_or_path's (dict or path to a JSON file)
    config: dict[str, Any] | str | None = None
    #: deep-merged into the model config (e.g. {"backbone": {"vision": {"grid": 4}}})
    overrides: dict[str, Any] = field(default_factory=dict)
    #: load name_or_path's trained weights (head, projector...) when it has them
    load_weights: bool = True
    #: LoRA on the text encoder of a fusion backbone: {"layers": [10, 11], "r": 8, "alpha": 16}
    text_lora: dict[str, Any] | None = None
    gradient_checkpointing: bool = False  # hf_vlm backbones
    #: trained modules kept at their loaded values in this run (still saved by export), e.g.
    #: ["projector"] to train a new part on top of an earlier run without paying for the
    #: backward pass through the frozen text transformer
    freeze: list[str] = field(default_factory=list)


@dataclass
class CacheConfig:
    dir: str | None = None  # default: <output_dir>/cache
    images: bool = True  # fusion only
    text: bool = True  # fusion with a frozen text encoder only
    image_dtype: str = "float16"
    batch_size: int = 32


@dataclass
class SourceConfig:
    name: str
    reader: str
    path: str | None = None
    weight: float = 1.0
    batch_size: int | None = None
    max_samples: int | None = None  # deterministic subset (first N after a seeded shuffle)
    per_group: int = 1  # up to this many samples of one group (image) per batch, see TaskMixSampler
    options: dict[str, Any] = field(default_factory=dict)  # reader keywords: split, dev_fraction, seed...

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str) -> "SourceConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)}
        options = dict(data.pop("options", {}) or {})
        options.update({k: data.pop(k) for k in list(data) if k not in known})
        if "name" not in data:
            data["name"] = data.get("reader", "")
        if not data.get("reader"):
            raise ValueError(f"{where}: a source needs a 'reader'")
        return cls(**data, options=options)


@dataclass
class DataConfig:
    root: str = "."
    batch_size: int = 32
    train: list[SourceConfig] = field(default_factory=list)
    dev: list[SourceConfig] = field(default_factory=list)
    dev_max_pairs: int = 500  # per dev source, for the periodic dev evaluation

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "DataConfig":
        data = dict(data or {})
        train = [SourceConfig.parse(s, f"data.train[{i}]") for i, s in enumerate(data.pop("train", []) or [])]
        dev = [SourceConfig.parse(s, f"data.dev[{i}]") for i, s in enumerate(data.pop("dev", []) or [])]
        cfg = _strict(cls, data, "data")
        cfg.train, cfg.dev = train, dev
        if not train:
            raise ValueError("data.train needs at least one source")
        for group in (train, dev):
            names = [s.name for s in group]
            if len(set(names)) != len(names):
                raise ValueError(f"data: source names must be unique, got {names}")
        return cfg


@dataclass
class OptimConfig:
    #: learning rate per parameter group: head, projector, adapters (LoRA), loss (temperature,
    #: calibration), and any other trained backbone module by name; "default" for the rest
    lr: dict[str, float] = field(default_factory=lambda: {"default": 1e-4})
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0
    #: max gradient norm per group (same names as lr); missing group: "default"; 0/None: no clipping
    clip: dict[str, float | None] = field(default_factory=lambda: {"default": 1.0})

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine, linear or constant, got {self.schedule!r}")
        self.lr = {k: float(v) for k, v in self.lr.items()}
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def lr_of(self, group: str) -> float:
        return float(self.lr.get(group, self.lr.get("default", 1e-4)))

    def clip_of(self, group: str) -> float | None:
        v = self.clip.get(group, self.clip.get("default"))
        return float(v) if v else None


@dataclass
class ExportConfig:
    dir: str | None = None  # default: <output_dir>/export
    after_train: bool = True
    name: str | None = None  # model name written in config.json (default: the base name)
    #: calibration pairs from the dev sources' "fit" half: per query its positive + negatives
    negatives_random: int = 3
    negatives_hard: int = 3
    max_queries: int = 2000  # per dev source
    #: dtype of the stored weights (float32 | float16 | bfloat16); loading converts them back
    weights_dtype: str = "float32"

    def __post_init__(self) -> None:
        # checked here, not at export: a typo must not cost a finished run
        if self.weights_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"export.weights_dtype must be float32, float16 or bfloat16, got {self.weights_dtype!r}")


@dataclass
class TrainConfig:
    run: RunConfig
    model: ModelSection
    cache: CacheConfig
    data: DataConfig
    curriculum: VisionCurriculum | None
    losses: ObjectiveConfig
    optim: OptimConfig
    export: ExportConfig
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    source_path: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source_path: str | None = None) -> "TrainConfig":
        data = copy.deepcopy(dict(data))
        known = {"run", "model", "cache", "data", "curriculum", "losses", "optim", "export"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown sections {unknown}; allowed: {sorted(known)}")
        cur = data.get("curriculum")
        return cls(
            run=_strict(RunConfig, data.get("run"), "run"),
            model=_strict(ModelSection, data.get("model"), "model"),
            cache=_strict(CacheConfig, data.get("cache"), "cache"),
            data=DataConfig.parse(data.get("data") or {}),
            curriculum=_strict(VisionCurriculum, cur, "curriculum") if cur else None,
            losses=ObjectiveConfig.from_dict(data.get("losses") or {}),
            optim=_strict(OptimConfig, data.get("optim"), "optim"),
            export=_strict(ExportConfig, data.get("export"), "export"),
            raw=data,
            source_path=source_path,
        )

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir) if self.cache.dir else self.output_dir / "cache"

    @property
    def export_dir(self) -> Path:
        return Path(self.export.dir) if self.export.dir else self.output_dir / "export"

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


def _parse_value(text: str) -> Any:
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:  # pragma: no cover - yaml is in the train extra
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["run.steps=10", "data.train.0.weight=2"]`` -> nested assignment (list items by index)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node: Any = data
        for k in keys[:-1]:
            if isinstance(node, list):
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
                if node is None:
                    raise ValueError(f"override {item!r}: {k} is empty")
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = _parse_value(text)
        else:
            node[last] = _parse_value(text)
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    text = path.read_text("utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:  # pragma: no cover
            raise ImportError('YAML configs need pyyaml: pip install "unirep[train]"') from e
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping")
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    return TrainConfig.from_dict(apply_overrides(read_config_file(path), overrides), source_path=str(path))


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dataclass_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)
