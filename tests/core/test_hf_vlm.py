"""HFVLMBackbone on a tiny random Qwen2-VL built offline (no hub, no torchvision)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.core.tiny_qwen2vl import build_tiny_qwen2vl
from unirep_core.backbones.base import Item, ItemError
from unirep_core.backbones.hf_vlm import HFVLMBackbone

CONFIG_PATH = Path(__file__).resolve().parents[2] / "unirep_core" / "model_configs" / "unirep-qwen2vl-2b.json"
ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"))


def _backbone(tiny_dir: Path, **overrides) -> HFVLMBackbone:
    config = {"kind": "hf_vlm", "source": str(tiny_dir), "torch_dtype": "float32", "attn_implementation": "sdpa"}
    config.update(overrides)
    return HFVLMBackbone.from_config(config)


@pytest.fixture(scope="module")
def backbone(tiny_dir) -> HFVLMBackbone:
    torch.set_num_threads(2)
    return _backbone(tiny_dir, max_length=512)


def _image(w: int, h: int, color=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", (w, h), color)
    img.putpixel((w // 2, h // 2), (0, 0, 255))
    return img


IMG_A = _image(60, 40)
IMG_B = _image(100, 120, (20, 160, 60))

ITEMS = {
    "text": Item("Represent the query for retrieving relevant documents: a red car on the street", []),
    "image": Item(None, [IMG_A]),
    "text_image": Item("a cat sitting on the table", [IMG_A]),
    "two_images": Item("a cat sitting on the table", [IMG_A, IMG_B]),
    "short_text": Item("dog", []),
}


def _encode(backbone: HFVLMBackbone, items, **kw):
    with torch.no_grad():
        return backbone.encode_tokens(backbone.prepare(items), **kw)


def _id(backbone, token: str) -> int:
    return backbone.tokenizer.convert_tokens_to_ids(token)


@pytest.mark.parametrize("name", list(ITEMS))
def test_each_item_is_one_sequence(backbone, name):
    item = ITEMS[name]
    batch = backbone.prepare([item])
    ids = batch["input_ids"]
    assert ids.shape[0] == 1 and batch["attention_mask"].shape == ids.shape
    assert bool(batch["attention_mask"].all())  # alone: no padding
    assert int((ids == _id(backbone, "<|vision_start|>")).sum()) == len(item.images)
    n_pad = int((ids == _id(backbone, "<|image_pad|>")).sum())
    assert n_pad == sum(backbone._image_tokens(im) for im in item.images)
    if item.images:
        assert batch["image_grid_thw"].shape == (len(item.images), 3)
        merge = backbone.image_processor.merge_size
        assert int(batch["image_grid_thw"].prod(-1).sum()) // merge**2 == n_pad
    else:
        assert "pixel_values" not in batch
    # the embedding slot closes every sequence
    assert int(ids[0, -1]) == _id(backbone, "<|endoftext|>")
    assert backbone.cost(item) == ids.shape[1]
    out = _encode(backbone, [item])
    assert out.last_hidden_state.shape == (1, ids.shape[1], backbone.hidden_size)
    assert torch.isfinite(out.last_hidden_state).all()


def test_mixed_batch_matches_items_alone(backbone):
    items = list(ITEMS.values())
    out = _encode(backbone, items)
    h, mask = out.last_hidden_state, out.attention_mask
    assert h.shape[:2] == mask.shape and h.shape[0] == len(items) and h.shape[2] == backbone.hidden_size
    assert backbone.padding_side == "left"
    assert bool(mask[:, -1].all())  # left padding: the last column is real for everyone
    assert torch.isfinite(h[mask.bool()]).all()
    for i, item in enumerate(items):
        alone = _encode(backbone, [item])
        n = int(alone.attention_mask.sum())
        assert int(mask[i].sum()) == n
        # real tokens are the trailing n positions
        assert bool(mask[i, -n:].all()) and not bool(mask[i, :-n].any())
        ref = alone.last_hidden_state[0]
        got = h[i, -n:]
        torch.testing.assert_close(got[-1], ref[-1], atol=ATOL, rtol=0)  # last-token pooling
        torch.testing.assert_close(got.mean(0), ref.mean(0), atol=ATOL, rtol=0)  # mean pooling
        m = mask[i].unsqueeze(-1).to(h.dtype)
        torch.testing.assert_close((h[i] * m).sum(0) / m.sum(), ref.mean(0), atol=ATOL, rtol=0)


def test_text_only_batch_padding_invariant(backbone):
    items = [ITEMS["text"], ITEMS["short_text"]]
    out = _encode(backbone, items)
    assert int(out.attention_mask[1].sum()) < out.attention_mask.shape[1]  # really padded
    for i, item in enumerate(items):
        ref = _encode(backbone, [item]).last_hidden_state[0]
        n = ref.shape[0]
        torch.testing.assert_close(out.last_hidden_state[i, -1], ref[-1], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.last_hidden_state[i, -n:].mean(0), ref.mean(0), atol=ATOL, rtol=0)


def test_two_images_longer_than_one(backbone):
    one = backbone.prepare([ITEMS["text_image"]])["input_ids"].shape[1]
    two = backbone.prepare([ITEMS["two_images"]])["input_ids"].shape[1]
    assert two > one
    assert two - one == backbone._image_tokens(IMG_B) + 2  # pads + vision_start/end


def test_hidden_states(backbone):
    items = [ITEMS["text"], ITEMS["text_image"]]
    out = _encode(backbone, items, output_hidden_states=True)
    assert out.hidden_states is not None
    assert len(out.hidden_states) == backbone.num_layers + 1
    for state in out.hidden_states:
        assert state.shape == out.last_hidden_state.shape
    assert _encode(backbone, items).hidden_states is None


def test_pixel_limits_and_max_length(tiny_dir):
    small = _backbone(tiny_dir, max_pixels=28 * 28 * 4, min_pixels=28 * 28, max_length=24)
    big_image = _image(280, 280)
    assert small._image_tokens(big_image) <= 4
    long_text = " ".join(["the cat sitting on the table"] * 20)
    batch = small.prepare([Item(long_text, [big_image]), Item(long_text, [])])
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert max(lengths) <= 24
    # the image survives truncation whole, and the sequence still ends on the embedding slot
    ids = batch["input_ids"]
    assert int((ids[0] == _id(small, "<|image_pad|>")).sum()) == small._image_tokens(big_image)
    assert bool((ids[:, -1] == _id(small, "<|endoftext|>")).all())
    assert small.cost(Item(long_text, [])) == 24
    assert small.export_config()["max_pixels"] == 28 * 28 * 4


def test_lora_needs_peft_or_names_adapters(tiny_dir):
    try:
        import peft  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"unirep\[train\]"):
            _backbone(tiny_dir, lora={"r": 4})
        return
    bb = _backbone(tiny_dir, lora={"r": 4})
    assert bb.trained_modules and all(n.endswith(("lora_A", "lora_B")) for n in bb.trained_modules)
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def test_cost_without_decoded_images(backbone):
    # UniRep.encode sorts by cost before decoding: images arrive as None placeholders
    text_cost = backbone.cost(Item("a cat", []))
    estimate = backbone.cost(Item("a cat", [None, None]))  # type: ignore[list-item]
    per_image = backbone._image_tokens(None) + 2
    assert estimate == text_cost + 2 * per_image
    # the estimate is the max_pixels budget: an upper bound for real images
    assert backbone._image_tokens(None) >= backbone._image_tokens(_image(500, 500))


def test_images_over_max_length_raise_item_error(tiny_dir):
    bb = _backbone(tiny_dir, max_length=30)
    with pytest.raises(ItemError) as err:
        bb.prepare([Item("dog", []), Item("a cat", [IMG_B, IMG_B])])
    assert err.value.position == 1


def test_unirep_end_to_end(tiny_dir):
    from unirep_core.model import UniRep

    prefixes = {t: "" for t in ("query", "document", "text_pair", "instr", "ocr", "vqa_single", "vqa_multi")}
    prefixes["query"] = "Represent the query for retrieving relevant documents: "
    model = UniRep.from_config(
        {
            "name": "tiny-vlm",
            "backbone": {"kind": "hf_vlm", "source": str(tiny_dir), "torch_dtype": "float32"},
            "pooling": {"mode": "last"},
            "prefixes": prefixes,
            "head": {"input_dim": 64, "dims": [16, 32, 64]},
            "calibration": None,
        },
        device="cpu",
    )
    texts = ["a cat", "a red dog on the street", None, "two"]
    images = [None, [IMG_A], IMG_A, [IMG_A, IMG_B]]
    vectors = model.encode(texts, images=images, task="query")
    assert vectors.shape == (4, 64)
    assert abs(float((vectors**2).sum(1).min()) - 1) < 1e-5
    for i in (0, 3):
        alone = model.encode([texts[i]], images=[images[i]], task="query")
        assert float(abs(alone[0] - vectors[i]).max()) < 1e-4


def test_no_lora_trains_nothing(backbone):
    assert backbone.trained_modules == ()
    assert backbone.export_config()["source"]


def test_unsupported_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    with pytest.raises(NotImplementedError, match="qwen2_vl"):
        HFVLMBackbone.from_config({"kind": "hf_vlm", "source": str(tmp_path)})


def test_production_config():
    cfg = json.loads(CONFIG_PATH.read_text())
    assert set(cfg) == {"name", "description", "backbone", "pooling", "prefixes", "head", "calibration"}
    assert cfg["name"] == "unirep-qwen2vl-2b"
    assert cfg["backbone"]["kind"] == "hf_vlm"
    assert cfg["backbone"]["source"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert cfg["pooling"] == {"mode": "last"}
    assert set(cfg["prefixes"]) == {"query", "document", "text_pair", "instr", "ocr", "vqa_single", "vqa_multi"}
    assert all(isinstance(v, str) and v for v in cfg["prefixes"].values())
    assert cfg["head"] == {"input_dim": 1536, "dims": [64, 128, 256, 512, 1024, 2048]}
    assert cfg["calibration"] is None
    from unirep_core.config import ModelConfig

    assert ModelConfig.from_file(CONFIG_PATH).dims == (64, 128, 256, 512, 1024, 2048)
