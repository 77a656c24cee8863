"""The feature caches are an implementation detail: the training encoder must produce what
``model.prepare`` + the backbone produce from the real images and texts."""
import numpy as np
import pytest
import torch

from unirep_core import UniRep
from unirep_core.backbones.base import Item
from unirep_core.inputs import load_image
from unirep_training.data import read_flickr8k
from unirep_training.data.cache import FeatureStore, ImageFeatureCache, TextFeatureCache
from unirep_training.data.samples import Side
from unirep_training.encoder import FeatureMapPassthrough, SideEncoder, remove_passthrough


@pytest.fixture
def model(tiny_model_dir):
    m = UniRep.from_pretrained(tiny_model_dir, device="cpu")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _sides(tiny_data):
    caps = read_flickr8k(tiny_data / "flickr8k", "train")[:6]
    sides = [s.a for s in caps[::2]] + [s.b for s in caps[::2]]  # texts, images
    sides.append(Side("a dog under two pictures", (caps[0].b.images[0], caps[2].b.images[0]), "vqa_multi"))
    sides.append(Side("a much longer caption about a red dog and a blue cat on the table", (), "document"))
    return sides


def _reference(model, sides):
    items = [Item(None if s.text is None else model.check_task(s.prefix) + s.text,
                  [load_image(p, index=0) for p in s.images]) for s in sides]
    with torch.no_grad():
        return torch.cat([model(model.prepare([it])) for it in items])


def test_cached_encoder_equals_prepare_and_backbone(model, tiny_data, tmp_path):
    sides = _sides(tiny_data)
    expect = _reference(model, sides)
    image_cache = ImageFeatureCache(tmp_path, model.backbone, "float32")
    image_cache.ensure([p for s in sides for p in s.images], show_progress=False)
    text_cache = TextFeatureCache(tmp_path, model)
    text_cache.ensure([model.check_task(s.prefix) + s.text for s in sides if not s.images], show_progress=False)
    enc = SideEncoder(model, image_cache=image_cache, text_cache=text_cache)
    assert isinstance(model.backbone.vision, FeatureMapPassthrough)
    with torch.no_grad():
        got = enc(sides)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    # the model still encodes real pixels through the wrapped tower
    with torch.no_grad():
        torch.testing.assert_close(_reference(model, sides[3:4]), expect[3:4], atol=1e-6, rtol=0)
    # fp16 feature maps: same up to half-precision rounding
    half = ImageFeatureCache(tmp_path / "half", model.backbone, "float16")
    half.ensure([p for s in sides for p in s.images], show_progress=False)
    with torch.no_grad():
        got16 = SideEncoder(model, image_cache=half, text_cache=text_cache)(sides)
    torch.testing.assert_close(got16, expect, atol=2e-2, rtol=2e-2)
    remove_passthrough(model)
    assert not isinstance(model.backbone.vision, FeatureMapPassthrough)


def test_uncached_encoder_and_gradients(model, tiny_data):
    sides = _sides(tiny_data)
    for p in model.backbone.projector.parameters():
        p.requires_grad_(True)
    enc = SideEncoder(model)  # no caches: decodes images, runs the tower
    out = enc(sides)
    torch.testing.assert_close(out.detach(), _reference(model, sides), atol=1e-5, rtol=1e-5)
    out[3:6].sum().backward()  # image rows reach the projector
    assert model.backbone.projector.mlp[0].weight.grad.abs().sum() > 0


def test_caches_are_persistent_and_keyed(model, tiny_data, tmp_path, monkeypatch):
    sides = _sides(tiny_data)
    paths = [p for s in sides for p in s.images]
    cache = ImageFeatureCache(tmp_path, model.backbone, "float16")
    cache.ensure(paths, show_progress=False)
    n = len(cache.store)
    assert n == len(set(paths))
    again = ImageFeatureCache(tmp_path, model.backbone, "float16")  # a new process reads the index
    monkeypatch.setattr(again, "compute", lambda *_: (_ for _ in ()).throw(AssertionError("recomputed")))
    again.ensure(paths, show_progress=False)
    np.testing.assert_array_equal(again.get(paths).numpy(), cache.get(paths).numpy())
    # another grid is another fingerprint, never a stale read
    model.backbone.grid = 1
    other = ImageFeatureCache(tmp_path, model.backbone, "float16")
    assert other.fingerprint != cache.fingerprint and len(other.store) == 0
    model.backbone.grid = 2


def test_feature_store_roundtrip(tmp_path):
    s = FeatureStore(tmp_path, (3,), "float32")
    s.add(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3))
    s.add(["c"], np.ones((1, 3), np.float32))
    t = FeatureStore(tmp_path, (3,), "float32")
    np.testing.assert_array_equal(t.get(["c", "a"]), [[1, 1, 1], [0, 1, 2]])
    assert t.missing(["a", "d", "d"]) == ["d"]
    with pytest.raises(KeyError):
        t.get(["zz"])
    with pytest.raises(ValueError, match="cache holds"):
        FeatureStore(tmp_path, (4,), "float32")


def test_cached_whole_image_descriptors_equal_the_backbone(tiny_model_dir, tiny_data, tmp_path):
    """A summary on whole-image descriptors (full-map + block means): the cache stores them
    beside the cells, and the training encoder's vectors equal the real forward's."""
    import json

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg["backbone"]["vision"]["summary"] = {"hidden": 16, "input": "global", "taps": [10, 15], "members": 2,
                                            "images_alone": True}
    cfg["calibration"] = None
    model = UniRep.from_config(cfg, device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.backbone.image_summary.parameters():
            p.normal_(0, 0.3)
    for p in model.parameters():
        p.requires_grad_(False)
    sides = _sides(tiny_data)
    expect = _reference(model, sides)
    cache = ImageFeatureCache(tmp_path, model.backbone, "float32")
    plain = ImageFeatureCache(tmp_path, UniRep.from_pretrained(tiny_model_dir, device="cpu").backbone, "float32")
    assert cache.fingerprint != plain.fingerprint  # descriptors change what is stored
    cache.ensure([p for s in sides for p in s.images], show_progress=False)
    cells, desc = cache.get_features([sides[3].images[0]])
    assert cells.shape == (1, *cache.cell_shape) and desc.shape == (1, 1280 + 112 + 320)
    with torch.no_grad():
        got = SideEncoder(model, image_cache=cache)(sides)
    # the CNN's last bits depend on how many images share its batch (cache: all, reference:
    # one), and the random summary weights amplify them a little: 1e-4, not 1e-5
    torch.testing.assert_close(got, expect, atol=2e-4, rtol=1e-4)
    assert (got - expect).abs().max() < 1e-3 * expect.abs().max()
    remove_passthrough(model)
