"""The fusion backbone's whole-image path (``vision.summary``): pooled CNN features mapped
straight to a vector added to the item's pooled output."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.tiny_models import build_tiny_text_encoder, make_image, tiny_fusion_config
from unirep_core import UniRep


def _config(text_dir, summary: dict | None):
    cfg = tiny_fusion_config(text_dir)
    if summary is not None:
        cfg["backbone"] = copy.deepcopy(cfg["backbone"])
        cfg["backbone"]["vision"]["summary"] = summary
    return cfg


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return build_tiny_text_encoder(tmp_path_factory.mktemp("summary") / "text")


def _encode_all(model):
    a, b = make_image(1), make_image(2)
    return {
        "text": model.encode(text=["a red dog", "xin chao"]),
        "image": model.encode(images=[a, b]),
        "mixed": model.encode(text=["a photo of a cat"], images=[[a, b]]),
    }


def test_untrained_summary_changes_nothing(text_dir):
    plain = UniRep.from_config(_config(text_dir, None), device="cpu")
    with_summary = UniRep.from_config(_config(text_dir, {"hidden": 16, "dropout": 0.5}), device="cpu")
    assert "image_summary" in with_summary.backbone.trained_modules
    before, after = _encode_all(plain), _encode_all(with_summary)
    for key in before:
        np.testing.assert_allclose(before[key], after[key], atol=1e-6, err_msg=key)


def test_summary_adds_to_image_items_only_and_averages_images(text_dir):
    model = UniRep.from_config(_config(text_dir, {"hidden": 16}), device="cpu")
    reference = _encode_all(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.backbone.image_summary.parameters():
            p.normal_(0, 0.5)
    changed = _encode_all(model)
    np.testing.assert_allclose(changed["text"], reference["text"], atol=1e-6)
    assert np.abs(changed["image"] - reference["image"]).max() > 1e-2
    assert np.abs(changed["mixed"] - reference["mixed"]).max() > 1e-2

    a, b = make_image(1), make_image(2)
    from unirep_core.backbones.base import Item

    bb = model.backbone
    with torch.no_grad():
        batch = model.prepare([Item("query: two", [a, b]), Item(None, [a]), Item(None, [b]), Item("text", [])])
        residual = bb.encode_tokens(batch).pooled_residual
    torch.testing.assert_close(residual[0], (residual[1] + residual[2]) / 2, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(residual[3]) == 0


def test_summary_round_trip_and_dropout_only_in_train_mode(text_dir, tmp_path):
    model = UniRep.from_config(_config(text_dir, {"hidden": 16, "dropout": 0.5}), device="cpu")
    with torch.no_grad():
        for p in model.backbone.image_summary.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "m")
    loaded = UniRep.from_pretrained(tmp_path / "m", device="cpu")
    img = [make_image(5)]
    np.testing.assert_allclose(loaded.encode(images=img), model.encode(images=img), atol=1e-6)

    cells = torch.randn(4, 4, 1280)
    summary = loaded.backbone.image_summary
    assert torch.equal(summary(cells), summary(cells))  # eval mode: deterministic
    summary.train()
    try:
        assert not torch.equal(summary(cells), summary(cells))
    finally:
        summary.eval()


def test_images_alone_embeds_image_items_by_the_summary_only(text_dir):
    model = UniRep.from_config(_config(text_dir, {"hidden": 16, "images_alone": True}), device="cpu")
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.backbone.image_summary.parameters():
            p.normal_(0, 0.5)
    a, b = make_image(1), make_image(2)
    from unirep_core.backbones.base import Item

    bb = model.backbone
    batch = model.prepare([Item(None, [a, b]), Item("query: a cat", [a]), Item("query: text", [])])
    assert batch["stream_rows"].tolist() == [False, True, True]
    assert batch["image_in_stream"].tolist() == [False, False, True]
    assert int(batch["image_slots"][0].sum()) == 0 and int(batch["image_slots"][1].sum()) == bb.cells

    with torch.no_grad():
        cells = bb.image_cells(batch["pixel_values"])
        expected = model.head((bb.image_summary(cells[:1]) + bb.image_summary(cells[1:2])) / 2)
        got = model(batch)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)

    # mixed batches equal separate ones: skipping rows must not disturb the others
    together = model.encode(text=[None, "a cat", "text"], images=[[a, b], [a], None])
    apart = np.concatenate([model.encode(images=[[a, b]]), model.encode(text=["a cat"], images=[[a]]),
                            model.encode(text=["text"])])
    np.testing.assert_allclose(together, apart, atol=1e-5)
    # the item with text still goes through the fused stream: its vector depends on the text
    assert np.abs(model.encode(text=["a dog"], images=[[a]]) - model.encode(text=["a cat"], images=[[a]])).max() > 1e-3
