"""Fast CPU inference for the BERT-style text encoder inside ``UniRep.encode``.

``FastBertEncoder`` runs the layers of a ``transformers`` BERT/XLM-R encoder (eval mode) as
a plain loop over fused weights:

* **bf16 matmuls and attention** where the CPU has native bf16 (AVX512-BF16 or AMX); the
  residual stream, layer norms and accumulation stay fp32. On unirep-mini the vectors stay
  at cosine >= 0.9999 with the fp32 model (``benchmarks/encode_speed.py`` measures it,
  ``tests/core/test_encode_fast.py`` tests it). Elsewhere the same loop runs in fp32.
* **Q, K and V in one matmul**, biases fused into the matmuls.
* **Attention per length bucket.** Each sequence attends over its own length rounded up to
  a multiple of :data:`ATTENTION_BUCKET`, whatever the longest text of its batch.

The last point is what keeps a text's vector independent of its batch: the attention kernel
sums over the padded length, so padding a sequence to different widths changes its result
in the last bits, and bf16 rounding would turn such a difference into a visible one. With
per-sequence buckets, row-wise matmuls, layer norms and aligned elementwise kernels, a text
gets the same bits alone or in any batch.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ATTENTION_BUCKET", "MIN_HIDDEN", "PRECISIONS", "FastBertEncoder", "bf16_supported",
           "unsupported_reason"]

#: ``fp32``: the fused loop only; ``bf16``: bf16 matmuls and attention.
PRECISIONS = ("fp32", "bf16")
#: Smallest hidden size the bf16 path is used for: below it the matmuls are too small for
#: bf16 to pay for its conversions (a 32-wide test encoder runs slower).
MIN_HIDDEN = 256
#: Attention pads each sequence to a multiple of this (its own length, not its batch's).
ATTENTION_BUCKET = 16
#: Batches are padded to a width that is a multiple of this, so ATen's elementwise kernels
#: split ``rows x features`` between threads at whole vectors (a scalar tail computes GELU
#: with a different erf, which would make the last bit depend on the batch).
_WIDTH_MULTIPLE = 8


@functools.cache
def bf16_supported() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX). Without them bf16 is emulated:
    slower than fp32, and not known to give a row the same bits in every batch."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if check is None or not check():
            return False
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except (OSError, RuntimeError):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot run on the fast path (None if it can)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "embeddings") or not hasattr(model, "encoder"):
        return "not a BERT-style encoder"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder / cross-attention models are not supported"
    if getattr(config, "hidden_act", None) != "gelu":
        return f"activation {getattr(config, 'hidden_act', None)!r} (only exact 'gelu')"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return "only absolute position embeddings are supported"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "chunked feed-forward is not supported"
    try:
        for layer in model.encoder.layer:
            att = layer.attention
            for lin in (att.self.query, att.self.key, att.self.value, att.output.dense,
                        layer.intermediate.dense, layer.output.dense):
                if not isinstance(lin, nn.Linear) or lin.bias is None:
                    return "linear layers without bias"
            for norm in (att.output.LayerNorm, layer.output.LayerNorm):
                if not isinstance(norm, nn.LayerNorm):
                    return "layer norms are not nn.LayerNorm"
    except AttributeError:
        return "unknown layer layout"
    if config.hidden_size % config.num_attention_heads:
        return "hidden size not a multiple of the head count"
    return None


class _Linear:
    """``y = x W^T + b`` with the weight stored transposed in the compute dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype):
        self.weight_t = weight.detach().float().t().contiguous().to(dtype)
        self.bias = bias.detach().float().to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.to(self.weight_t.dtype), self.weight_t)


class _Layer:
    def __init__(self, layer: nn.Module, dtype: torch.dtype):
        att = layer.attention
        qkv_w = torch.cat([att.self.query.weight, att.self.key.weight, att.self.value.weight])
        qkv_b = torch.cat([att.self.query.bias, att.self.key.bias, att.self.value.bias])
        self.qkv = _Linear(qkv_w, qkv_b, dtype)
        self.attn_out = _Linear(att.output.dense.weight, att.output.dense.bias, dtype)
        self.ffn_in = _Linear(layer.intermediate.dense.weight, layer.intermediate.dense.bias, dtype)
        self.ffn_out = _Linear(layer.output.dense.weight, layer.output.dense.bias, dtype)
        self.norm1 = _norm_params(att.output.LayerNorm)
        self.norm2 = _norm_params(layer.output.LayerNorm)


def _norm_params(norm: nn.LayerNorm) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor, float]:
    return (tuple(norm.normalized_shape), norm.weight.detach().float(), norm.bias.detach().float(), norm.eps)


class FastBertEncoder:
    """Inference-only copy of a BERT-style encoder's layers (see the module doc).

    Call it with the output of the model's own embedding module, ``(B, L, H)``, and a
    right-padded ``(B, L)`` attention mask; it returns the last hidden state ``(B, L, H)``
    in fp32 (padded positions hold unspecified finite values; pool with the mask). Build it
    again when the encoder's weights change (:meth:`is_stale`)."""

    def __init__(self, model: nn.Module, *, precision: str = "bf16"):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"fast encoder: {reason}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}; expected one of {PRECISIONS}")
        config = model.config
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self._fingerprint = _fingerprint(model)
        self.layers = [_Layer(layer, self.dtype) for layer in model.encoder.layer]

    def is_stale(self, model: nn.Module) -> bool:
        return _fingerprint(model) != self._fingerprint

    def __call__(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, width, hidden = embeddings.shape
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        if bool((mask != (torch.arange(width, device=mask.device) < lengths[:, None])).any()):
            raise ValueError("fast encoder needs right-padded batches")
        if bool((lengths == 0).any()):
            raise ValueError("fast encoder needs at least one token per sequence")
        groups = [(start, stop, bucket, (torch.arange(bucket) < lengths[start:stop, None]).view(stop - start, 1, 1, bucket))
                  for start, stop, bucket in _buckets(lengths.tolist())]
        padded = -(-width // _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE
        x = F.pad(embeddings.float(), (0, 0, 0, padded - width)).reshape(batch * padded, hidden)
        for layer in self.layers:
            x = self._layer(layer, x, batch, padded, groups)
        return x.view(batch, padded, hidden)[:, :width]

    def _layer(self, layer: _Layer, x: torch.Tensor, batch: int, width: int,
               groups: list[tuple[int, int, int, torch.Tensor]]) -> torch.Tensor:
        hidden, heads = self.hidden, self.heads
        qkv = layer.qkv(x).view(batch, width, 3, heads, hidden // heads)
        context = qkv.new_zeros(batch, width, heads, hidden // heads)
        for start, stop, bucket, key_mask in groups:
            part = qkv[start:stop, :bucket]
            if bucket > width:  # the bucket reaches past the batch's width: zero keys, masked
                part = F.pad(part, (0, 0, 0, 0, 0, 0, 0, bucket - width))
            q, k, v = part.permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            keep = min(bucket, width)
            context[start:stop, :keep] = att.transpose(1, 2)[:, :keep]
        x = F.layer_norm(layer.attn_out(context.view(batch * width, hidden)) + x, *layer.norm1)
        return F.layer_norm(layer.ffn_out(F.gelu(layer.ffn_in(x))) + x, *layer.norm2)


def _buckets(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive sequences sharing an attention bucket: ``(start, stop, bucket)``.
    ``UniRep.encode`` sorts by length, so a batch holds one or two runs."""
    runs: list[tuple[int, int, int]] = []
    for i, n in enumerate(lengths):
        bucket = -(-n // ATTENTION_BUCKET) * ATTENTION_BUCKET
        if runs and runs[-1][2] == bucket and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1, bucket)
        else:
            runs.append((i, i + 1, bucket))
    return runs


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.encoder.parameters())
