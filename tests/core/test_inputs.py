"""Bad input raises ValueError naming the item; good input of every accepted kind works."""
import io

import numpy as np
import pytest
from PIL import Image

from tests.tiny_models import make_image


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_kinds_give_identical_vectors(tiny_model, tmp_path):
    img = make_image(3)
    path = tmp_path / "a.png"
    img.save(path)
    by_pil = tiny_model.encode(images=[img])
    by_path = tiny_model.encode(images=[str(path)])
    by_pathlib = tiny_model.encode(images=path)
    by_bytes = tiny_model.encode(images=[_png_bytes(img)])
    np.testing.assert_allclose(by_pil, by_path, atol=1e-6)
    np.testing.assert_allclose(by_pil, by_pathlib, atol=1e-6)
    np.testing.assert_allclose(by_pil, by_bytes, atol=1e-6)


def test_single_string_is_one_item(tiny_model):
    assert tiny_model.encode(text="hello").shape == (1, tiny_model.dim)


def test_text_and_images_zip_by_position(tiny_model):
    texts = ["a red dog", "a blue cat"]
    imgs = [make_image(1), [make_image(2), make_image(3)]]
    fused = tiny_model.encode(text=texts, images=imgs)
    assert fused.shape == (2, tiny_model.dim)
    # each item alone gives the same vector: zipping is positional, nothing leaks across items
    for i in range(2):
        alone = tiny_model.encode(text=[texts[i]], images=[imgs[i]])
        np.testing.assert_allclose(fused[i], alone[0], atol=1e-5)
    # fused differs from text-only and image-only of the same item
    assert not np.allclose(fused[0], tiny_model.encode(text=texts[0])[0], atol=1e-3)
    assert not np.allclose(fused[0], tiny_model.encode(images=[imgs[0]])[0], atol=1e-3)


def test_items_may_mix_missing_text_or_images(tiny_model):
    v = tiny_model.encode(text=["only text", None], images=[None, make_image(5)])
    np.testing.assert_allclose(v[0], tiny_model.encode(text="only text")[0], atol=1e-5)
    np.testing.assert_allclose(v[1], tiny_model.encode(images=make_image(5))[0], atol=1e-5)


def test_multi_image_item_depends_on_every_image(tiny_model):
    a, b, c = make_image(1), make_image(2), make_image(3)
    v = tiny_model.encode(images=[[a, b], [a, c], [a]])
    assert not np.allclose(v[0], v[1], atol=1e-3)
    assert not np.allclose(v[0], v[2], atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"text": ["ok", ""]}, r"item 1: text is empty"),
        ({"text": ["ok", "   "]}, r"item 1: text is empty"),
        ({"text": ["ok", 5]}, r"item 1: text must be a string"),
        ({"text": ["a", "b"], "images": [None]}, r"different lengths"),
        ({"text": ["a", None], "images": [None, None]}, r"item 1: has neither text nor images"),
        ({"images": [3.5]}, r"item 0: images have unsupported type float"),
        ({"images": [[make_image(1), 7]]}, r"item 0: image 1 has unsupported type int"),
        ({}, r"needs text=, images= or both"),
        ({"text": ["x"], "task": "summarise"}, r"unknown task 'summarise'"),
        ({"text": ["x"], "embedding_dim": 12}, r"embedding_dim=12 is not allowed; allowed sizes: \[8, 16, 32\]"),
        ({"text": ["x"], "batch_size": 0}, r"batch_size must be a positive integer"),
        ({"text": ["x"], "convert_to": "pandas"}, r"convert_to='pandas'"),
        ({"text": ["ok", "y" * 2001]}, r"item 1: text has 2001 characters, over the limit of 2000"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_item(tiny_model, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_model.encode(**kwargs)


def test_corrupt_truncated_missing_and_bomb_images_name_the_item(tiny_model, tmp_path):
    good = _png_bytes(make_image(1))
    truncated = _png_bytes(make_image(2, size=200))[:300]
    with pytest.raises(ValueError, match=r"item 2: image 0: cannot be decoded"):
        tiny_model.encode(images=[good, good, b"not an image at all"])
    with pytest.raises(ValueError, match=r"item 1: image 0: cannot be decoded"):
        tiny_model.encode(images=[good, truncated])
    with pytest.raises(ValueError, match=r"item 0: image 1: no such file"):
        tiny_model.encode(images=[[good, str(tmp_path / "missing.png")]])
    with pytest.raises(ValueError, match=r"item 0: image 0: empty bytes"):
        tiny_model.encode(images=[b""])
    # A 2500x2000 PNG is 5 MP: over the tiny model's 4 MP limit, rejected before decoding.
    bomb = io.BytesIO()
    Image.new("L", (2500, 2000)).save(bomb, format="PNG")
    with pytest.raises(ValueError, match=r"item 1: image 0: 2500x2000 = 5000000 pixels exceeds the limit"):
        tiny_model.encode(images=[good, bomb.getvalue()])


def test_too_many_images_for_the_sequence_names_the_item(tiny_model):
    # tiny model: 4 tokens per image, 128 positions -> 32 images cannot fit
    with pytest.raises(ValueError, match=r"item 1: 32 images need 128 tokens"):
        tiny_model.encode(images=[make_image(0), [make_image(i) for i in range(32)]])
