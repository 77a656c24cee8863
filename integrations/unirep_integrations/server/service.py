"""What every facade shares: request items -> validated, decoded inputs -> batched model calls.

Validation and image decoding happen per request, before batching, so a bad item is a 4xx that
names its index and never reaches (or poisons) a batch shared with other requests.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from unirep_core import Item, Pooler, UniRep, load_image
from unirep_core.backbones import ItemError
from unirep_core.inputs import DEFAULT_MAX_IMAGE_PIXELS

from .batching import Batcher
from .errors import ApiError
from .metrics import Metrics
from .schemas import FEATURE_TYPES, InputItem
from .security import Limits

__all__ = ["EmbeddingService", "RawInput", "Prepared", "TASK_ALIASES"]

#: Names other APIs use for UniRep's tasks (Cohere/Voyage ``input_type``, Weaviate ``task_type``).
TASK_ALIASES = {"passage": "document", "search_query": "query", "search_document": "document"}
#: Requests whose inputs are this large (characters) are prepared off the event loop.
_INLINE_CHARS = 20_000


@dataclass
class RawInput:
    """One item as the client sent it: text and undecoded image strings."""

    text: str | None
    images: list[str]


@dataclass
class Prepared:
    """One validated item: text (no prefix), decoded RGB images, token count (for usage)."""

    text: str | None
    images: list[Image.Image]
    tokens: int = 0


def _truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The Matryoshka rule, as ``UniRep.encode(embedding_dim=dim)``: slice, then re-normalise."""
    v = vectors[:, :dim]
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class EmbeddingService:
    def __init__(self, model: UniRep, *, limits: Limits, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 batching: bool = True, metrics: Metrics | None = None, model_name: str | None = None):
        self.model = model
        self.model_name = model_name or model.name
        self.limits = limits
        self.metrics = metrics
        model_limits = getattr(model.config, "limits", {}) or {}
        model_chars = int(model_limits.get("max_text_chars", 0)) or None
        chars = [c for c in (limits.max_text_chars, model_chars) if c]
        self.max_text_chars = min(chars) if chars else None
        pixels = [p for p in (limits.max_image_pixels, int(model_limits.get("max_image_pixels", 0)) or None) if p]
        self.max_image_pixels = min(pixels) if pixels else DEFAULT_MAX_IMAGE_PIXELS
        self.max_input_tokens = int(getattr(model.backbone, "max_length", 0) or 0) or None
        self.batcher = Batcher(self._run, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, enabled=batching,
                               observe=self._observe, on_queue=self._on_queue)
        self._poolers: dict[str, Pooler] = {}

    # -- request options ------------------------------------------------------------------
    def resolve_task(self, task: str | None, *, param: str = "task", default: str = "document") -> str:
        if task is None:
            return default
        name = TASK_ALIASES.get(task, task)
        if not isinstance(name, str) or name not in self.model.config.prefixes:
            raise ApiError(400, f"unknown {param} {task!r}; expected one of {list(self.model.config.prefixes)} "
                                f"(aliases: {sorted(TASK_ALIASES)})", param=param, code="invalid_task")
        return name

    def resolve_dim(self, dimensions: int | None, *, param: str = "dimensions") -> int:
        if dimensions is None:
            return self.model.dim
        if dimensions not in self.model.dims:
            raise ApiError(400, f"{param}={dimensions} is not available for {self.model_name}; "
                                f"allowed sizes: {list(self.model.dims)}", param=param, code="invalid_dimensions")
        return int(dimensions)

    def items_from(self, value: Any, param: str) -> list[RawInput]:
        """A string, an item object, or a list of them -> raw inputs (count limit checked)."""
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ApiError(422, f"{param} must not be empty", param=param)
        if len(values) > self.limits.max_items:
            raise ApiError(413, f"{param} has {len(values)} items, over the limit of {self.limits.max_items} "
                                "per request", param=param, code="too_many_items")
        out = []
        for v in values:
            if isinstance(v, InputItem):
                out.append(RawInput(v.text, v.image_list()))
            elif isinstance(v, dict):
                item = InputItem.model_validate(v)
                out.append(RawInput(item.text, item.image_list()))
            else:
                out.append(RawInput(v, []))
        return out

    # -- validation and decoding ------------------------------------------------------------
    async def prepare(self, raw: Sequence[RawInput], param: str, *, task: str = "document",
                      check_length: bool = False) -> list[Prepared]:
        """Validate and decode one request's items (off the event loop when there are images)."""
        heavy = any(r.images for r in raw) or sum(len(r.text or "") for r in raw) > _INLINE_CHARS
        if heavy:
            return await asyncio.to_thread(self._prepare, raw, param, task, check_length)
        return self._prepare(raw, param, task, check_length)

    def _prepare(self, raw: Sequence[RawInput], param: str, task: str, check_length: bool) -> list[Prepared]:
        items: list[Prepared] = []
        for i, r in enumerate(raw):
            where = f"{param}: item {i}"
            if r.text is not None:
                if not isinstance(r.text, str):
                    raise ApiError(422, f"{where}: text must be a string", param=param)
                if not r.text.strip():
                    raise ApiError(422, f"{where}: text is empty", param=param, code="empty_text")
                if self.max_text_chars and len(r.text) > self.max_text_chars:
                    raise ApiError(413, f"{where}: text has {len(r.text)} characters, over the limit of "
                                        f"{self.max_text_chars}", param=param, code="text_too_long")
                try:
                    r.text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ApiError(422, f"{where}: text is not valid Unicode (lone surrogate)", param=param) from None
            if len(r.images) > self.limits.max_images_per_item:
                raise ApiError(413, f"{where}: {len(r.images)} images, over the limit of "
                                    f"{self.limits.max_images_per_item} per item", param=param, code="too_many_images")
            if r.text is None and not r.images:
                raise ApiError(422, f"{where}: has neither text nor image", param=param)
            images = [self._decode_image(s, i, j, param) for j, s in enumerate(r.images)]
            items.append(Prepared(r.text, images))
        self._count_tokens(items, task)
        if check_length and self.max_input_tokens:
            for i, p in enumerate(items):
                if p.tokens > self.max_input_tokens:
                    raise ApiError(413, f"{param}: item {i}: input has {p.tokens} tokens, over the model's limit of "
                                        f"{self.max_input_tokens} (send truncate=true to cut it)",
                                   param=param, code="too_many_tokens")
        return items

    def _decode_image(self, value: Any, index: int, position: int, param: str) -> Image.Image:
        where = f"{param}: item {index}: image {position}"
        if not isinstance(value, str) or not value.strip():
            raise ApiError(422, f"{where}: expected a base64 string", param=param)
        if value.startswith(("http://", "https://", "file:", "/")):
            raise ApiError(422, f"{where}: image URLs and paths are not fetched; send the bytes as a base64 data URL "
                                "(data:image/png;base64,...)", param=param, code="invalid_image")
        payload = value
        if value.startswith("data:"):
            header, sep, payload = value.partition(",")
            media = header[5:].split(";")[0]
            if not sep or ";base64" not in header:
                raise ApiError(422, f"{where}: a data URL must be base64 (data:image/png;base64,...)", param=param,
                               code="invalid_image")
            if media and not media.startswith("image/") and media != "application/octet-stream":
                raise ApiError(422, f"{where}: media type {media!r} is not an image", param=param, code="invalid_image")
        if len(payload) * 3 // 4 > self.limits.max_image_bytes:
            raise ApiError(413, f"{where}: image is over the limit of {self.limits.max_image_bytes} bytes",
                           param=param, code="image_too_large")
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, f"{where}: not valid base64", param=param, code="invalid_image") from None
        try:  # header only: a decompression bomb is refused before its pixels exist
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as probe:
                    w, h = probe.size
        except Image.DecompressionBombError as e:
            raise ApiError(413, f"{where}: rejected as a decompression bomb ({e})", param=param,
                           code="image_too_large") from None
        except Exception:
            w = h = 0  # not an image: load_image says why
        if w * h > self.max_image_pixels:
            raise ApiError(413, f"{where}: {w}x{h} = {w * h} pixels exceeds the limit of {self.max_image_pixels}",
                           param=param, code="image_too_large")
        try:
            return load_image(data, index=index, position=position, max_pixels=self.max_image_pixels)
        except ValueError as e:
            raise ApiError(422, f"{param}: {e}", param=param, code="invalid_image") from None

    def _count_tokens(self, items: list[Prepared], task: str) -> None:
        backbone = self.model.backbone
        prefix = self.model.config.prefixes.get(task, "")
        token_ids = getattr(backbone, "token_ids", None)
        if token_ids is not None:
            texts = [prefix + p.text for p in items if p.text is not None]
            counts = iter(len(ids) for ids in token_ids(texts)) if texts else iter(())
            for p in items:
                n_text = next(counts) if p.text is not None else 0
                p.tokens = n_text + int(backbone.cost(Item(None, p.images)))
        else:
            for p in items:
                p.tokens = int(backbone.cost(Item(None if p.text is None else prefix + p.text, p.images)))

    # -- model calls ------------------------------------------------------------------------
    async def embed(self, items: Sequence[Prepared], task: str, dim: int, *, param: str) -> np.ndarray:
        """Unit-norm Matryoshka vectors ``(n, dim)``; requests of one task share batches."""
        full = await self._submit(("embed", task), items, param)
        return full if dim == self.model.dim else _truncate(full, dim)

    async def features(self, items: Sequence[Prepared], task: str, kind: str, *, normalize: bool,
                       param: str) -> np.ndarray:
        """Raw pooled backbone features (uncalibrated, not Matryoshka)."""
        if kind not in FEATURE_TYPES:
            raise ApiError(400, f"unknown embedding_type {kind!r}", param="embedding_type")
        out = await self._submit(("features", task, kind), items, param)
        if normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    async def _submit(self, key: Hashable, items: Sequence[Prepared], param: str) -> np.ndarray:
        try:
            return await self.batcher.submit(key, items)
        except ValueError as e:  # the model's own per-item checks (e.g. too many images for its length)
            raise ApiError(422, f"{param}: {e}", param=param) from e

    def _run(self, key: Hashable, items: Sequence[Prepared]) -> np.ndarray:
        """Runs in the batcher's worker thread."""
        kind = key[0]  # type: ignore[index]
        if kind == "embed":
            texts = [p.text for p in items]
            images = [p.images or None for p in items]
            has_text = any(t is not None for t in texts)
            has_images = any(im is not None for im in images)
            return self.model.encode(text=texts if has_text else None, images=images if has_images else None,
                                     task=key[1], batch_size=self.batcher.max_batch_size,  # type: ignore[index]
                                     show_progress=False, convert_to="numpy")
        if kind == "features":
            return self._features(items, key[1], key[2])  # type: ignore[index]
        raise RuntimeError(f"unknown batch kind {kind!r}")

    def _pooler(self, kind: str) -> Pooler:
        if kind not in self._poolers:
            side = self.model.backbone.padding_side
            if kind == "multi_layer":
                pooling = self.model.config.pooling
                n_layers = int(self.model.backbone.num_layers)
                layers = pooling.get("layers") if pooling.get("mode") == "multi_layer" else None
                layers = layers or list(range(max(1, n_layers - 3), n_layers + 1))
                self._poolers[kind] = Pooler("multi_layer", layers, padding_side=side)
            else:
                self._poolers[kind] = Pooler({"cls": "cls", "mean": "mean", "last_layer": "last"}[kind],
                                             padding_side=side)
        return self._poolers[kind]

    def _features(self, items: Sequence[Prepared], task: str, kind: str) -> np.ndarray:
        model = self.model
        prefix = model.check_task(task)
        pooler = self._pooler(kind)
        size = self.batcher.max_batch_size
        out = []
        with torch.inference_mode():
            for start in range(0, len(items), size):
                chunk = [Item(None if p.text is None else prefix + p.text, p.images) for p in items[start:start + size]]
                try:
                    batch = model.prepare(chunk)
                except ItemError as e:
                    raise ValueError(f"item {start + e.position}: {e.message}") from e
                batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                states = model.backbone.encode_tokens(batch, output_hidden_states=pooler.needs_hidden_states)
                out.append(pooler(states).float().cpu().numpy())
        return np.concatenate(out)

    # -- bookkeeping ------------------------------------------------------------------------
    def _observe(self, key: Hashable, size: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_batch(str(key[0]), size, seconds)  # type: ignore[index]

    def _on_queue(self, items: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_items.set(items)

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"name": self.model_name, "dims": list(self.model.dims), "dim": self.model.dim,
                "backbone": cfg.backbone.get("kind"), "pooling": cfg.pooling.get("mode", "mean"),
                "tasks": list(cfg.prefixes), "calibrated": bool(self.model.calibrator.fitted),
                "max_input_tokens": self.max_input_tokens, "max_batch_size": self.batcher.max_batch_size,
                "batching": self.batcher.enabled}

    async def aclose(self) -> None:
        await self.batcher.aclose()


def usage(items: Iterable[Prepared]) -> dict[str, int]:
    n = sum(p.tokens for p in items)
    return {"prompt_tokens": n, "total_tokens": n}
