"""Turn what users pass to ``encode`` into a list of items, and decode images safely.

Validation of shapes and types happens up front (cheap, fails before any compute); images are
decoded only when their batch runs, so a million paths never sit in memory as pixels.
Every error names the item index, because "ValueError somewhere in a batch of 10,000" is
useless to someone cleaning a data set.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["ImageInput", "RawItem", "collect_items", "load_image", "DEFAULT_MAX_IMAGE_PIXELS"]

ImageInput = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview]
#: 40 megapixels: a 6000x6000 photo passes, a decompression bomb does not.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

_IMAGE_TYPES = (Image.Image, str, os.PathLike, bytes, bytearray, memoryview)


@dataclass
class RawItem:
    """An item before decoding: text (no prefix yet) and undecoded image references."""

    index: int
    text: str | None
    images: list[ImageInput]


def _as_image_list(value: Any, index: int) -> list[ImageInput]:
    if value is None:
        return []
    if isinstance(value, _IMAGE_TYPES):
        return [value]
    if isinstance(value, (list, tuple)):
        for j, img in enumerate(value):
            if not isinstance(img, _IMAGE_TYPES):
                raise ValueError(
                    f"item {index}: image {j} has unsupported type {type(img).__name__}; "
                    "expected PIL.Image, a file path or raw bytes"
                )
        return list(value)
    raise ValueError(
        f"item {index}: images have unsupported type {type(value).__name__}; "
        "expected PIL.Image, a file path, raw bytes or a list of them"
    )


def _as_sequence(value: Any, what: str) -> list[Any] | None:
    """A single value becomes a one-item batch; lists and tuples are batches."""
    if value is None:
        return None
    if isinstance(value, (str, *_IMAGE_TYPES)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    try:  # numpy arrays of strings, pandas Series, generators
        return list(value)
    except TypeError:
        raise ValueError(f"{what} must be a string/image or a list of them, got {type(value).__name__}") from None


def collect_items(text: Any = None, images: Any = None) -> list[RawItem]:
    """Zip texts and images by position into items, validating everything that is cheap."""
    texts = _as_sequence(text, "text")
    imgs = _as_sequence(images, "images")
    if texts is None and imgs is None:
        raise ValueError("encode() needs text=, images= or both")
    if texts is not None and imgs is not None and len(texts) != len(imgs):
        raise ValueError(
            f"text and images are zipped by position but have different lengths "
            f"({len(texts)} texts, {len(imgs)} image entries)"
        )
    n = len(texts) if texts is not None else len(imgs)  # type: ignore[arg-type]
    items: list[RawItem] = []
    for i in range(n):
        t = texts[i] if texts is not None else None
        if t is not None and not isinstance(t, str):
            raise ValueError(f"item {i}: text must be a string, got {type(t).__name__}")
        if t is not None and not t.strip():
            raise ValueError(f"item {i}: text is empty")
        im = _as_image_list(imgs[i], i) if imgs is not None else []
        if t is None and not im:
            raise ValueError(f"item {i}: has neither text nor images")
        items.append(RawItem(i, t, im))
    return items


def load_image(value: ImageInput, *, index: int, position: int = 0,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one image fully into RGB, or raise a ValueError naming item and image."""
    where = f"item {index}: image {position}"
    try:
        if isinstance(value, Image.Image):
            img = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            if len(value) == 0:
                raise ValueError(f"{where}: empty bytes")
            img = Image.open(io.BytesIO(bytes(value)))
        else:
            path = Path(os.fspath(value))
            if not path.is_file():
                raise ValueError(f"{where}: no such file {str(path)!r}")
            img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels:
            raise ValueError(f"{where}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
        # PIL may accept truncated files silently when this global is set by someone else.
        truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
        if img.width == 0 or img.height == 0:
            raise ValueError(f"{where}: image has zero size")
        return img.convert("RGB") if img.mode != "RGB" else img
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{where}: rejected as a decompression bomb ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{where}: cannot be decoded ({type(e).__name__}: {e})") from e


def decode_items(raw: Sequence[RawItem], max_pixels: int) -> list[list[Image.Image]]:
    return [
        [load_image(v, index=r.index, position=j, max_pixels=max_pixels) for j, v in enumerate(r.images)]
        for r in raw
    ]
