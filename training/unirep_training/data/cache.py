"""On-disk feature caches for frozen parts of the fusion backbone.

Two caches make CPU training fast without changing what the model computes:

* :class:`ImageFeatureCache` holds, per image file, the vision tower's feature map already
  pooled to the backbone's ``grid`` (``(C, grid, grid)``, fp16 by default), i.e. exactly what
  :meth:`FusionBackbone.image_tokens` feeds to the trainable projector. The tower then never
  runs during training.
* :class:`TextFeatureCache` holds, per prefixed text, the pooled output of the frozen text
  encoder (what the head receives for a text-only item), used only when nothing before the
  head is trainable on the text path.

Both live in sub-folders named after a fingerprint of the settings that determine their
values, so changing the grid, image size or text encoder never reads stale features.
Storage is append-only: shards of ``.npy`` rows plus an ``index.json`` (key -> shard, row),
each written to a temporary file and renamed, so an interrupted run never leaves a
half-written cache behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["FeatureStore", "ImageFeatureCache", "TextFeatureCache", "fingerprint", "image_key"]

logger = logging.getLogger(__name__)
_INDEX = "index.json"


def fingerprint(settings: Any) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha1(blob).hexdigest()[:16]


def image_key(path: str | os.PathLike) -> str:
    """Cache key of an image file: absolute path + size (a replaced file gets a new key)."""
    p = Path(path).resolve()
    return f"{p}|{p.stat().st_size}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FeatureStore:
    """Append-only map ``key -> array of a fixed shape and dtype`` stored in a directory."""

    def __init__(self, directory: str | Path, shape: Sequence[int], dtype: str | np.dtype, info: dict | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.index: dict[str, tuple[int, int]] = {}
        self.shards: list[str] = []
        path = self.dir / _INDEX
        if path.is_file():
            data = json.loads(path.read_text("utf-8"))
            if tuple(data["shape"]) != self.shape or np.dtype(data["dtype"]) != self.dtype:
                raise ValueError(f"{self.dir}: cache holds {data['dtype']}{data['shape']}, expected {self.dtype}{self.shape}")
            self.shards = list(data["shards"])
            self.index = {k: (int(s), int(r)) for k, (s, r) in data["index"].items()}
        self.info = info or {}
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys not stored yet, de-duplicated, in first-seen order."""
        return [k for k in dict.fromkeys(keys) if k not in self.index]

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._arrays:
            self._arrays[i] = np.load(self.dir / self.shards[i], mmap_mode="r")
        return self._arrays[i]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        out = np.empty((len(keys), *self.shape), dtype=self.dtype)
        for j, k in enumerate(keys):
            try:
                s, r = self.index[k]
            except KeyError:
                raise KeyError(f"{k!r} is not in the feature cache {self.dir}") from None
            out[j] = self._shard(s)[r]
        return out

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape != (len(keys), *self.shape):
            raise ValueError(f"expected values of shape {(len(keys), *self.shape)}, got {values.shape}")
        if not keys:
            return
        name = f"shard-{len(self.shards):05d}.npy"
        tmp = self.dir / f".{name}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, values)
        os.replace(tmp, self.dir / name)
        self.shards.append(name)
        shard = len(self.shards) - 1
        for r, k in enumerate(keys):
            self.index[k] = (shard, r)
        data = {"shape": list(self.shape), "dtype": self.dtype.str, "shards": self.shards, "info": self.info,
                "index": {k: list(v) for k, v in self.index.items()}}
        _atomic_write_bytes(self.dir / _INDEX, json.dumps(data).encode("utf-8"))


def _fill(store: FeatureStore, keys: list[str], compute: Callable[[list[int]], np.ndarray],
          chunk: int, flush_every: int, desc: str, show: bool) -> None:
    """Compute ``keys`` missing from ``store`` in chunks, flushing a shard every ``flush_every`` rows."""
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in store:
            first.setdefault(k, i)
    todo = list(first.values())
    if not todo:
        return
    logger.info("%s: computing %d features into %s", desc, len(todo), store.dir)
    pending_k: list[str] = []
    pending_v: list[np.ndarray] = []
    bar = tqdm(total=len(todo), desc=desc, unit="item", disable=not show)
    for start in range(0, len(todo), chunk):
        idx = todo[start : start + chunk]
        pending_v.append(compute(idx))
        pending_k.extend(keys[i] for i in idx)
        bar.update(len(idx))
        if len(pending_k) >= flush_every:
            store.add(pending_k, np.concatenate(pending_v))
            pending_k, pending_v = [], []
    if pending_k:
        store.add(pending_k, np.concatenate(pending_v))
    bar.close()


_NOT_FEATURE_KEYS = ("dropout", "summary")


class ImageFeatureCache:
    """Pooled vision-tower feature maps of image files, for a fusion backbone."""

    def __init__(self, root: str | Path, backbone: Any, dtype: str = "float16", max_pixels: int | None = None):
        from unirep_core.backbones.fusion import FusionBackbone

        if not isinstance(backbone, FusionBackbone):
            raise ValueError("the image feature cache needs a fusion backbone")
        self.backbone = backbone
        tower = _tower(backbone)
        settings = {
            # Only what changes the features: training-time options (dropout) and the trained
            # summary path share the cache.
            "kind": "image",
            "vision": {k: v for k, v in backbone.config.get("vision", {}).items() if k not in _NOT_FEATURE_KEYS},
            "image_size": backbone.image_size,
            "grid": backbone.grid, "mean": backbone.mean, "std": backbone.std, "dtype": dtype,
            "tower": type(tower).__name__,
        }
        self.channels = int(getattr(tower, "out_channels"))
        self.cell_shape = (self.channels, backbone.grid, backbone.grid)
        # A summary on whole-image descriptors stores them after the cells, one row per image.
        self.descriptor_size = 0
        shape: tuple[int, ...] = self.cell_shape
        if getattr(backbone, "summary_input", None) == "global":
            settings["descriptors"] = {"input": "global", "taps": list(backbone.summary_taps)}
            self.descriptor_size = int(backbone.image_summary.mlp[0].in_features)
            shape = (int(np.prod(self.cell_shape)) + self.descriptor_size,)
        self.fingerprint = fingerprint(settings)
        self.max_pixels = max_pixels
        self.store = FeatureStore(Path(root) / f"image-{self.fingerprint}", shape, dtype, settings)

    @torch.no_grad()
    def compute(self, images: Sequence[Any]) -> torch.Tensor:
        """Stored rows of decoded PIL images: (N, C, grid, grid) float32 cells (what the
        projector sees), or with whole-image descriptors (N, C*grid*grid + F) cells then
        descriptors."""
        from unirep_core.backbones.vision import preprocess_images

        bb = self.backbone
        pixels = preprocess_images(list(images), bb.image_size, bb.mean, bb.std)
        tower = _tower(bb)
        device = next(tower.parameters()).device
        if not self.descriptor_size:
            fmap = tower(pixels.to(device))
            return torch.nn.functional.adaptive_avg_pool2d(fmap, bb.grid).float().cpu()
        cells, descriptors = bb.image_features(pixels.to(device))
        cells = cells.transpose(1, 2).reshape(len(images), *self.cell_shape)
        return torch.cat([cells.flatten(1), descriptors], 1).float().cpu()

    def ensure(self, paths: Sequence[str], *, batch_size: int = 32, show_progress: bool = True) -> None:
        """Compute and store the features of every path not cached yet."""
        from unirep_core.inputs import DEFAULT_MAX_IMAGE_PIXELS, load_image

        paths = list(dict.fromkeys(paths))
        keys = [image_key(p) for p in paths]
        limit = self.max_pixels or DEFAULT_MAX_IMAGE_PIXELS

        def compute(idx: list[int]) -> np.ndarray:
            ims = [load_image(paths[i], index=i, max_pixels=limit) for i in idx]
            return self.compute(ims).numpy()

        _fill(self.store, keys, compute, batch_size, 2048, "image features", show_progress)

    def get(self, paths: Sequence[str]) -> torch.Tensor:
        """Stored cells (float32, (N, C, grid, grid)) of these image files, in order."""
        return self.get_features(paths)[0]

    def get_features(self, paths: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stored cells (float32, (N, C, grid, grid)) and whole-image descriptors ((N, F), or
        None when the summary reads the cells) of these image files, in order."""
        rows = torch.from_numpy(self.store.get([image_key(p) for p in paths]).astype(np.float32))
        if not self.descriptor_size:
            return rows, None
        cut = int(np.prod(self.cell_shape))
        return rows[:, :cut].reshape(len(paths), *self.cell_shape), rows[:, cut:].contiguous()


class TextFeatureCache:
    """Pooled outputs of a frozen text path (prefixed text -> vector the head receives)."""

    def __init__(self, root: str | Path, model: Any, dtype: str = "float32"):
        if not text_path_is_frozen(model):
            raise ValueError("the text feature cache needs a frozen text encoder (no LoRA on the text path)")
        self.model = model
        bb = model.backbone
        settings = {"kind": "text", "backbone": bb.config.get("text", {}), "max_length": bb.max_length,
                    "pooling": model.config.pooling, "hidden": bb.hidden_size, "dtype": dtype}
        self.fingerprint = fingerprint(settings)
        self.store = FeatureStore(Path(root) / f"text-{self.fingerprint}", (model.pooler.output_dim(bb.hidden_size),),
                                  dtype, settings)

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    @torch.no_grad()
    def compute(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled features (float32, CPU) of already prefixed texts."""
        from unirep_core.backbones.base import Item

        m = self.model
        batch = m.prepare([Item(t, []) for t in texts])
        batch = {k: v.to(m.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out = m.backbone.encode_tokens(batch, output_hidden_states=m.pooler.needs_hidden_states)
        return m.pooler(out).float().cpu()

    def ensure(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = True) -> None:
        texts = list(dict.fromkeys(texts))
        # Length-sorted batches pad little: much faster, same values up to float rounding.
        texts.sort(key=len)
        keys = [self.key(t) for t in texts]
        _fill(self.store, keys, lambda idx: self.compute([texts[i] for i in idx]).numpy(), batch_size, 8192,
              "text features", show_progress)

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.store.get([self.key(t) for t in texts]).astype(np.float32))


def _tower(backbone: Any) -> torch.nn.Module:
    vision = backbone.vision
    return getattr(vision, "tower", vision)


def text_path_is_frozen(model: Any) -> bool:
    """True for a fusion backbone whose text encoder has no trainable parameter."""
    from unirep_core.backbones.fusion import FusionBackbone

    bb = model.backbone
    if not isinstance(bb, FusionBackbone):
        return False
    return not any(p.requires_grad for p in bb.text.parameters())
