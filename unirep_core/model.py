"""``UniRep``: any text, image(s) or both -> one Matryoshka, calibrated, unit-norm vector."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .backbones import Backbone, Item, ItemError, build_backbone
from .calibration import Calibrator
from .config import CONFIG_NAME, ModelConfig
from .device import pick_device
from .head import MatryoshkaHead, truncate
from .inputs import DEFAULT_MAX_IMAGE_PIXELS, collect_items, decode_items
from .pooling import Pooler
from .registry import list_models, registered_config_path, shipped_model_dir

__all__ = ["UniRep", "WEIGHTS_NAME"]

logger = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"
#: Auto progress bar above this many batches: short calls stay quiet, long jobs show progress.
_AUTO_PROGRESS_BATCHES = 16


class UniRep(nn.Module):
    """The encoder. Build it with :meth:`from_pretrained`; embed with :meth:`encode`."""

    def __init__(self, config: ModelConfig, backbone: Backbone):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.pooler = Pooler(config.pooling.get("mode", "mean"), config.pooling.get("layers", ()),
                             padding_side=backbone.padding_side)
        input_dim = self.pooler.output_dim(backbone.hidden_size)
        declared = config.head.get("input_dim")
        if declared is not None and int(declared) != input_dim:
            raise ValueError(f"config {config.name!r}: head.input_dim {declared} != pooled size {input_dim}")
        self.head = MatryoshkaHead(input_dim, config.dims, init=config.head.get("init", "identity"))
        self.calibrator = Calibrator(config.calibration, config.dims)
        #: ``encode`` runs the backbone's fast inference path where it has one (unirep-mini:
        #: bf16 text encoder on CPUs with native bf16, cosine >= 0.999 with fp32). ``False``,
        #: or ``encode(..., fast=False)``, gives the plain fp32 forward.
        self.fast_encode = True

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig | dict[str, Any], *, device: str | torch.device | None = None) -> "UniRep":
        """A model with base weights from the config's sources and untrained head/projector."""
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        model = cls(config, build_backbone(config.backbone))
        return model.to(pick_device(device)).eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None) -> "UniRep":
        """Load a registered name (``list_models()``), a saved directory, or a hub id (online)."""
        directory = _resolve(str(name_or_path))
        if directory is None:  # a registered architecture with no trained weights shipped
            path = registered_config_path(str(name_or_path))
            assert path is not None
            return cls.from_config(ModelConfig.from_file(path), device=device)
        config = ModelConfig.from_file(directory / CONFIG_NAME)
        model = cls(config, build_backbone(config.backbone))
        weights = directory / WEIGHTS_NAME
        if weights.is_file():
            model._load_trained(weights)
        else:
            logger.warning("%s has no %s: head and projector are untrained", directory, WEIGHTS_NAME)
        return model.to(pick_device(device)).eval()

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The parts a saved model stores: head, calibration-free projector, adapters."""
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        for name in self.backbone.trained_modules:
            module = self.backbone.get_submodule(name)
            state.update({f"backbone.{name}.{k}": v for k, v in module.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def _load_trained(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        expected = set(self.trained_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not match the config (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )
        self.load_state_dict(state, strict=False)

    def save_pretrained(self, directory: str | os.PathLike, *, weights_dtype: str = "float32") -> Path:
        """Write ``config.json`` + ``model.safetensors`` (trained parts only). ``weights_dtype``
        ``"float16"`` / ``"bfloat16"`` stores floating-point weights at half the size; loading
        converts them back to the model's dtype."""
        from safetensors.torch import save_file

        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if weights_dtype not in dtypes:
            raise ValueError(f"weights_dtype must be one of {sorted(dtypes)}, not {weights_dtype!r}")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.calibration = self.calibrator.to_dict() if self.calibrator.fitted else None
        self.config.save(out)
        state = {k: v.to(dtypes[weights_dtype]) if v.is_floating_point() else v
                 for k, v in self.trained_state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME))
        return out

    # -- properties -----------------------------------------------------------------------
    @property
    def dims(self) -> tuple[int, ...]:
        """Allowed Matryoshka sizes, smallest first."""
        return self.config.dims

    @property
    def dim(self) -> int:
        return self.dims[-1]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.config.prefixes)

    def check_dim(self, embedding_dim: int | None) -> int:
        if embedding_dim is None:
            return self.dim
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, (int, np.integer)) \
                or int(embedding_dim) not in self.dims:
            raise ValueError(f"embedding_dim={embedding_dim!r} is not allowed; allowed sizes: {list(self.dims)}")
        return int(embedding_dim)

    def check_task(self, task: str) -> str:
        if task not in self.config.prefixes:
            raise ValueError(f"unknown task {task!r}; expected one of {list(self.config.prefixes)}")
        return self.config.prefixes[task]

    # -- encoding -------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], *, fast: bool = False) -> torch.Tensor:
        """Full-size, un-normalised head output of a prepared batch (differentiable).
        ``fast=True`` (inference) takes the backbone's fast path where it has one."""
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        extra = {"fast": True} if fast and getattr(self.backbone, "fast_text_encoder", None) else {}
        out = self.backbone.encode_tokens(batch, output_hidden_states=self.pooler.needs_hidden_states, **extra)
        pooled = self.pooler(out)
        return self.head(pooled.to(self.head.proj.weight.dtype))

    def prepare(self, items: Sequence[Item]) -> dict[str, Any]:
        return self.backbone.prepare(items)

    def encode(
        self,
        text: str | Sequence[str | None] | None = None,
        images: Any = None,
        *,
        task: str = "document",
        embedding_dim: int | None = None,
        batch_size: int = 32,
        show_progress: bool | None = None,
        convert_to: str = "numpy",
        fast: bool | None = None,
    ) -> np.ndarray | torch.Tensor | list[list[float]]:
        """Embed texts, images (one or several per item) or both, zipped by position.

        Returns ``(n, embedding_dim or dim)`` unit-norm vectors; ``convert_to`` is
        ``"numpy"`` (float32), ``"torch"`` (on CPU) or ``"list"``. Items are batched by
        length (longest first), so a batch pads little; results do not depend on
        ``batch_size`` or on the other items. ``fast`` (default :attr:`fast_encode`) picks
        the backbone's fast inference path; ``fast=False`` is the fp32 reference.
        """
        prefix = self.check_task(task)
        dim = self.check_dim(embedding_dim)
        if convert_to not in ("numpy", "torch", "list"):
            raise ValueError(f"convert_to={convert_to!r}; expected 'numpy', 'torch' or 'list'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        raw = collect_items(text, images)
        max_chars = int(self.config.limits.get("max_text_chars", 0))
        for r in raw:
            if max_chars and r.text is not None and len(r.text) > max_chars:
                raise ValueError(f"item {r.index}: text has {len(r.text)} characters, over the limit of {max_chars}")
        max_pixels = int(self.config.limits.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))

        def with_prefix(t: str | None) -> str | None:
            return None if t is None else prefix + t

        sized = [Item(with_prefix(r.text), [None] * len(r.images)) for r in raw]  # type: ignore[list-item]
        exact = getattr(self.backbone, "costs", None)  # exact token counts where the backbone has them
        costs = exact(sized) if exact is not None else [self.backbone.cost(it) for it in sized]
        use_fast = self.fast_encode if fast is None else bool(fast)
        order = sorted(range(len(raw)), key=lambda i: -costs[i])
        n_batches = -(-len(raw) // batch_size)
        show = n_batches > _AUTO_PROGRESS_BATCHES if show_progress is None else show_progress
        out = torch.empty(len(raw), self.dim, dtype=torch.float32)
        with torch.inference_mode():
            for start in tqdm(range(0, len(raw), batch_size), total=n_batches, disable=not show,
                              desc="encode", unit="batch"):
                idx = order[start : start + batch_size]
                chunk = [raw[i] for i in idx]
                images_per_item = decode_items(chunk, max_pixels)  # only this batch's pixels in memory
                items = [Item(with_prefix(r.text), ims) for r, ims in zip(chunk, images_per_item)]
                try:
                    batch = self.backbone.prepare(items)
                except ItemError as e:
                    raise ValueError(f"item {chunk[e.position].index}: {e.message}") from e
                out[idx] = self(batch, fast=use_fast).float().cpu()
        vectors = truncate(out, dim)
        if convert_to == "torch":
            return vectors
        if convert_to == "list":
            return vectors.tolist()
        return vectors.numpy()

    # -- scoring --------------------------------------------------------------------------
    def similarity(self, a: Any, b: Any) -> np.ndarray:
        """Cosine matrix ``(len(a), len(b))``; works on truncated vectors of equal size."""
        a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"vectors have different sizes ({a.shape[1]} vs {b.shape[1]})")
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return (a @ b.T).astype(np.float32)

    def score(self, a: Any, b: Any) -> np.ndarray:
        """Calibrated P(relevant) in [0, 1], ``(len(a), len(b))``, calibration picked by size."""
        sim = self.similarity(a, b)
        return self.calibrator(sim, _as_matrix(a, "a").shape[1])

    def __repr__(self) -> str:
        return f"UniRep(name={self.name!r}, backbone={self.config.backbone['kind']!r}, dims={self.dims}, device={self.device})"


def _as_matrix(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    m = np.asarray(x, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"{what} must be a vector or a (n, d) matrix, got shape {m.shape}")
    return m


def _resolve(name: str) -> Path | None:
    """Directory holding config.json (+ weights) for ``name``, or None for a bare registered config."""
    shipped = shipped_model_dir(name)
    if shipped is not None:
        return shipped
    if registered_config_path(name) is not None:
        return None
    local = Path(name).expanduser()
    if (local / CONFIG_NAME).is_file():
        return local
    if local.exists():
        raise ValueError(f"{name!r} is a path but holds no {CONFIG_NAME}")
    if name.count("/") == 1:  # looks like a hub id
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, allow_patterns=[CONFIG_NAME, "*.safetensors"]))
        except Exception as e:  # offline, unknown repo, no hub client: one clear message
            raise ValueError(f"could not fetch {name!r} from the hub ({type(e).__name__}: {e})") from e
    raise ValueError(f"unknown model {name!r}; registered names: {list_models()}, or pass a saved directory")
