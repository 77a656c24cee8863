"""Build a tiny, randomly initialised Qwen2-VL checkpoint fully offline.

Used by the backbone tests and by training tests: ``build_tiny_qwen2vl(path)`` writes a
directory that ``AutoProcessor.from_pretrained`` / ``AutoModel.from_pretrained`` (and hence
``HFVLMBackbone``) can load without a network or torchvision:

* a ``Qwen2VLForConditionalGeneration`` (the layout of hub checkpoints) with a 2-layer,
  64-wide text decoder and a 1-block, 32-wide vision tower (patch 14, merge 2);
* a word-level ``PreTrainedTokenizerFast`` over a few hundred words plus the Qwen2-VL
  special tokens (``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>``, ...);
* the PIL ``Qwen2VLImageProcessorPil`` with tiny pixel limits (4..16 merged tokens per image);
* the real Qwen2-VL chat template (``chat_template.jinja``), so prompts look like production ones.

The directory holds no ``processor_config.json``, like ``Qwen/Qwen2-VL-2B-Instruct``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["build_tiny_qwen2vl", "TINY_WORDS", "QWEN2VL_CHAT_TEMPLATE", "SPECIAL_TOKENS"]

# Verbatim chat template of Qwen/Qwen2-VL-2B-Instruct.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TINY_WORDS = (
    "a an the of to in on for with and or is are was be this that it its as at by from "
    "you your we our they their he she his her what which who how why when where "
    "system user assistant helpful picture video image photo document query passage text "
    "represent retrieve retrieving relevant given find answer question describe caption "
    "cat cats dog dogs bird car cars red green blue yellow black white big small old new "
    "house tree street city sky sea river mountain man woman child people table chair "
    "sitting running standing on under over near playing eating looking holding "
    "one two three four five six seven eight nine ten first second third last "
    "page title chart figure table invoice receipt form menu sign number total "
    "do does did has have had can could will would should may might not no yes "
    "embedding instruction task search similar sentence pair ocr read written "
    "paris london tokyo river bank money market price cheap expensive"
).split()

_PUNCT = list(".,:;!?'\"()[]{}-_/\\@#$%^&*+=<>|~`")
_DIGITS = list("0123456789")


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in ["[UNK]", *SPECIAL_TOKENS]:
        vocab.setdefault(tok, len(vocab))
    for word in TINY_WORDS:
        for w in (word, word.capitalize()):
            vocab.setdefault(w, len(vocab))
    for tok in _PUNCT + _DIGITS:
        vocab.setdefault(tok, len(vocab))

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    # \w+ | [^\w\s]+ , then digits split one by one (like Qwen2's tokenizer does)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        model_max_length=32768,
        padding_side="right",  # as in the real Qwen2-VL tokenizer config; the backbone overrides it
    )
    fast.chat_template = QWEN2VL_CHAT_TEMPLATE
    return fast


def build_tiny_qwen2vl(
    path: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_embed_dim: int = 32,
    vision_depth: int = 1,
    min_pixels: int = 28 * 28 * 4,
    max_pixels: int = 28 * 28 * 16,
    seed: int = 0,
) -> Path:
    """Write a tiny random Qwen2-VL (model + processor) to ``path`` and return ``path``."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = len(tokenizer)

    head_dim = hidden_size // num_heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]  # sums to head_dim / 2
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": max(1, num_heads // 2),
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            # like the real checkpoint: no pad_token_id (it would zero the embedding row of
            # <|endoftext|>, the token appended as the embedding slot)
            "pad_token_id": None,
        },
        vision_config={
            "depth": vision_depth,
            "embed_dim": vision_embed_dim,
            "hidden_size": hidden_size,  # output of the patch merger = LM width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.save_pretrained(path)

    # Saved piece by piece, like the hub checkpoints (tokenizer files, preprocessor_config.json,
    # chat_template.jinja): transformers 5 cannot instantiate Qwen2VLProcessor without
    # torchvision (its video processor is torchvision-only), so we never build one here.
    tokenizer.save_pretrained(path)  # also writes chat_template.jinja
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    image_processor.save_pretrained(path)
    (path / "chat_template.jinja").write_text(QWEN2VL_CHAT_TEMPLATE)
    return path
