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


GLOBAL = {"hidden": 16, "input": "global", "taps": [10, 14], "members": 3, "dropout": 0.0, "images_alone": True}


def test_global_descriptors_are_full_map_and_tap_means(text_dir):
    model = UniRep.from_config(_config(text_dir, GLOBAL), device="cpu")
    bb = model.backbone
    net = bb.vision.net
    from unirep_core.backbones.base import Item

    pixels = model.prepare([Item(None, [make_image(1), make_image(2)])])["pixel_values"]
    with torch.no_grad():
        cells, desc = bb.image_features(pixels)
        # the same pass, step by step: stem, blocks (keep 10 and 14), head conv
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        kept = {}
        for i, block in enumerate(net._blocks):
            x = block(x)
            kept[i] = x.mean((2, 3))
        fmap = net.extract_features(pixels)
    assert desc.shape == (2, 1280 + 112 + 192) == (2, bb.image_summary.mlp[0].in_features)
    torch.testing.assert_close(desc, torch.cat([fmap.mean((2, 3)), kept[10], kept[14]], 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cells, bb.image_cells(pixels), atol=1e-5, rtol=1e-5)


def test_members_average_at_inference_and_route_each_image_to_one_in_training(text_dir, tmp_path):
    model = UniRep.from_config(_config(text_dir, GLOBAL), device="cpu")
    summary = model.backbone.image_summary
    assert len(summary.extra) == 2
    torch.manual_seed(5)
    with torch.no_grad():
        for p in summary.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(64, summary.mlp[0].in_features)
    members = [summary.mlp, *summary.extra]
    with torch.no_grad():
        each = torch.stack([m(x) for m in members])  # (3, 64, out)
        torch.testing.assert_close(summary(x), each.mean(0))
        summary.train()
        try:
            routed = summary(x)
        finally:
            summary.eval()
    # every row is exactly one member's output, and all members get rows
    match = (routed.unsqueeze(0) - each).abs().amax(-1) < 1e-6  # (3, 64)
    assert match.sum(0).eq(1).all()
    assert match.any(1).all()

    # saved and loaded as an ensemble, with its descriptor layout
    model.save_pretrained(tmp_path / "m")
    loaded = UniRep.from_pretrained(tmp_path / "m", device="cpu")
    img = [make_image(7)]
    np.testing.assert_allclose(loaded.encode(images=img), model.encode(images=img), atol=1e-6)
    assert np.abs(model.encode(images=img)).max() > 1e-3


@pytest.mark.parametrize("bad, message", [
    ({"input": "pixels"}, "'cells' or 'global'"),
    ({"taps": [10]}, "needs vision.summary.input 'global'"),
    ({"input": "global", "taps": [99]}, "tap 99 is not a block"),
    ({"members": 0}, "members must be >= 1"),
])
def test_bad_summary_configs_are_named(text_dir, bad, message):
    with pytest.raises(ValueError, match=message):
        UniRep.from_config(_config(text_dir, {"hidden": 16, **bad}), device="cpu")


def test_layer_norm_treats_each_descriptor_part_apart(text_dir):
    model = UniRep.from_config(_config(text_dir, {**GLOBAL, "norm": "layer", "members": 1}), device="cpu")
    summary = model.backbone.image_summary
    assert summary.norm_blocks == (1280, 112, 192)
    torch.manual_seed(6)
    with torch.no_grad():
        for p in summary.parameters():
            p.normal_(0, 0.5)
        x = torch.randn(3, 1280 + 112 + 192)
        scaled = x.clone()
        scaled[:, 1280:1392] *= 10.0  # one tap on another scale: normed away
        torch.testing.assert_close(summary(scaled), summary(x), atol=1e-4, rtol=1e-4)
        shifted = x.clone()
        shifted[:, :5] += 3.0  # a change inside a part still matters
        assert (summary(shifted) - summary(x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="'layer' or absent"):
        UniRep.from_config(_config(text_dir, {**GLOBAL, "norm": "batch"}), device="cpu")


def test_half_precision_weights_round_trip(text_dir, tmp_path):
    from safetensors.torch import load_file

    model = UniRep.from_config(_config(text_dir, GLOBAL), device="cpu")
    torch.manual_seed(8)
    with torch.no_grad():
        for p in model.backbone.image_summary.parameters():
            p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "half", weights_dtype="float16")
    stored = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    loaded = UniRep.from_pretrained(tmp_path / "half", device="cpu")
    assert next(loaded.backbone.image_summary.parameters()).dtype == torch.float32
    img = [make_image(9)]
    got, want = loaded.encode(images=img), model.encode(images=img)
    np.testing.assert_allclose(got, want, atol=5e-3)
    assert float((got * want).sum()) > 0.9999
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        model.save_pretrained(tmp_path / "bad", weights_dtype="int8")
