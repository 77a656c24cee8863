"""Readers of the training formats; each returns a list of :class:`Sample` in file order.

=================  =============================================================================
reader             format
=================  =============================================================================
``flickr8k``       ``captions_{split}.tsv`` = ``image<TAB>caption``; images in ``{split}/``
``vi_captions``    ``captions.tsv`` = ``image<TAB>caption``, images in ``images/``; no official
                   split: split by image name (``dev_fraction``, ``seed``)
``emoji``          ``emoji.tsv`` with a header: image, emoji, name_en, name_vi, keywords_en,
                   keywords_vi; one sample per language (name, optionally with keywords)
``stsb``           ``sts-{split}.csv``, tab-separated: score (0-5) in column 5, sentences in 6, 7
``en_vi_parallel`` ``pairs.tsv`` = ``page<TAB>paragraph_id<TAB>english<TAB>vietnamese``; split by page
``jsonl``          one JSON object a line: ``{"task": ..., "a": {"text": ..., "images": [...]},
                   "b": {...}, "score": ..., "group": ...}``; image paths relative to the file
=================  =============================================================================

Caption pairs are ``caption`` samples: the text is a ``query``, the image a ``document``.
Parallel paragraphs are ``retrieval`` samples (English ``query`` -> Vietnamese ``document``);
STS pairs are graded ``text_pair`` samples (score / 5).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Callable

from .samples import TRAIN_TASKS, Sample, Side
from .splits import split_of

__all__ = [
    "READERS",
    "read_flickr8k",
    "read_vi_captions",
    "read_emoji",
    "read_stsb",
    "read_en_vi_parallel",
    "read_jsonl",
    "read_source",
]

logger = logging.getLogger(__name__)

#: Default prefixes (keys of the model config's ``prefixes``) per task when a JSONL side names none.
DEFAULT_PREFIXES = {
    "caption": ("query", "document"),
    "retrieval": ("query", "document"),
    "text_pair": ("text_pair", "text_pair"),
    "instr": ("instr", "document"),
    "ocr": ("query", "ocr"),
    "vqa_single": ("vqa_single", "document"),
    "vqa_multi": ("vqa_multi", "document"),
}


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {list(allowed)}, got {split!r}")


def _tsv_rows(path: Path, min_cols: int) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < min_cols:
                raise ValueError(f"{path}:{lineno}: expected at least {min_cols} tab-separated columns, got {len(cols)}")
            rows.append(cols)
    return rows


def _captions(path: Path, image_dir: Path, source: str, keep: Callable[[str], bool]) -> list[Sample]:
    out = []
    for image, caption in ((r[0].strip(), r[1].strip()) for r in _tsv_rows(path, 2)):
        if not caption or not keep(image):
            continue
        out.append(Sample("caption", Side(caption, (), "query"), Side(None, (str(image_dir / image),), "document"),
                          group=f"{source}:{image}", source=source))
    return out


def read_flickr8k(directory: str | Path, split: str = "train", **_: Any) -> list[Sample]:
    """Flickr8k caption pairs of the official ``train`` or ``dev`` list."""
    _check_split(split, ("train", "dev"))
    d = Path(directory)
    return _captions(d / f"captions_{split}.tsv", d / split, "flickr8k", lambda _: True)


def read_vi_captions(directory: str | Path, split: str = "train", dev_fraction: float = 0.1,
                     seed: int = 0, **_: Any) -> list[Sample]:
    """Vietnamese caption pairs; the split is by image (all captions of an image on one side)."""
    _check_split(split, ("train", "dev", "all"))
    d = Path(directory)
    keep = (lambda _: True) if split == "all" else (lambda im: split_of(im, dev_fraction, seed) == split)
    return _captions(d / "captions.tsv", d / "images", "vi_captions", keep)


def read_emoji(directory: str | Path, split: str = "all", languages: tuple[str, ...] | list[str] = ("en", "vi"),
               keywords: bool = False, dev_fraction: float = 0.1, seed: int = 0, **_: Any) -> list[Sample]:
    """Emoji picture <-> CLDR name (one sample per language); ``keywords`` appends the keywords."""
    _check_split(split, ("train", "dev", "all"))
    d = Path(directory)
    with open(d / "emoji.tsv", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    need = {"image"} | {f"name_{lang}" for lang in languages}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{d / 'emoji.tsv'}: missing columns {sorted(need - set(rows[0]))}")
    out = []
    for row in rows:
        image = row["image"].strip()
        if split != "all" and split_of(image, dev_fraction, seed) != split:
            continue
        for lang in languages:
            name = (row.get(f"name_{lang}") or "").strip()
            if not name:
                continue
            kw = (row.get(f"keywords_{lang}") or "").strip()
            text = f"{name}: {kw.replace(' | ', ', ')}" if keywords and kw else name
            out.append(Sample("caption", Side(text, (), "query"), Side(None, (str(d / "images" / image),), "document"),
                              group=f"emoji:{image}", source="emoji", meta={"lang": lang}))
    return out


def read_stsb(directory: str | Path, split: str = "train", **_: Any) -> list[Sample]:
    """STS-B graded pairs: score (column 5, 0-5) / 5, sentences in columns 6 and 7.

    Some lines carry extra trailing columns (source notes); they are ignored.
    """
    _check_split(split, ("train", "dev"))
    d = Path(directory)
    path = d if d.is_file() else d / f"sts-{split}.csv"
    out = []
    for i, cols in enumerate(_tsv_rows(path, 7)):
        try:
            score = float(cols[4])
        except ValueError as e:
            raise ValueError(f"{path}: row {i + 1}: score {cols[4]!r} is not a number") from e
        s1, s2 = cols[5].strip(), cols[6].strip()
        if not s1 or not s2:
            continue
        out.append(Sample("text_pair", Side(s1, (), "text_pair"), Side(s2, (), "text_pair"),
                          score=min(max(score / 5.0, 0.0), 1.0), group=f"stsb:{split}:{i}", source="stsb"))
    return out


def read_en_vi_parallel(directory: str | Path, split: str = "train", dev_fraction: float = 0.1,
                        seed: int = 0, **_: Any) -> list[Sample]:
    """English -> Vietnamese paragraph pairs, split by page (a page's paragraphs stay together)."""
    _check_split(split, ("train", "dev", "all"))
    d = Path(directory)
    path = d if d.is_file() else d / "pairs.tsv"
    out = []
    for page, par, en, vi in ((r[0], r[1], r[2].strip(), r[3].strip()) for r in _tsv_rows(path, 4)):
        if not en or not vi or (split != "all" and split_of(page, dev_fraction, seed) != split):
            continue
        out.append(Sample("retrieval", Side(en, (), "query"), Side(vi, (), "document"),
                          group=f"en_vi:{page}#{par}", source="en_vi_parallel", meta={"page": page}))
    return out


def _jsonl_side(obj: Any, base: Path, default_prefix: str, where: str) -> Side:
    if isinstance(obj, str):
        obj = {"text": obj}
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a side must be an object with 'text' and/or 'images'")
    images = obj.get("images") or []
    if isinstance(images, str):
        images = [images]
    paths = tuple(str(p if Path(p).is_absolute() else base / p) for p in images)
    text = obj.get("text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise ValueError(f"{where}: text must be a non-empty string")
    try:
        return Side(text, paths, obj.get("prefix") or obj.get("task") or default_prefix)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def read_jsonl(path: str | Path, split: str | None = None, **_: Any) -> list[Sample]:
    """The generic format. ``task`` is one of the training tasks; ``score`` (optional) in
    [0, 1]; ``group`` (optional) marks mutual positives; an optional ``split`` field is
    matched against ``split`` when one is asked for. A side may name its ``prefix``."""
    path = Path(path)
    base = path.parent
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
            task = obj.get("task")
            if task not in TRAIN_TASKS:
                raise ValueError(f"{where}: unknown task {task!r}; expected one of {list(TRAIN_TASKS)}")
            if split is not None and obj.get("split", split) != split:
                continue
            pa, pb = DEFAULT_PREFIXES[task]
            score = obj.get("score")
            try:
                sample = Sample(task, _jsonl_side(obj.get("a"), base, pa, f"{where}: a"),
                                _jsonl_side(obj.get("b"), base, pb, f"{where}: b"),
                                None if score is None else float(score),
                                str(obj.get("group") or f"{path.name}:{lineno}"), source=path.stem)
            except ValueError as e:
                raise ValueError(str(e) if str(e).startswith(str(path)) else f"{where}: {e}") from None
            out.append(sample)
    return out


READERS: dict[str, tuple[Callable[..., list[Sample]], str]] = {
    # name -> (reader, default path under the data root)
    "flickr8k": (read_flickr8k, "flickr8k"),
    "vi_captions": (read_vi_captions, "vi_captions"),
    "emoji": (read_emoji, "emoji"),
    "stsb": (read_stsb, "stsb"),
    "en_vi_parallel": (read_en_vi_parallel, "en_vi_parallel"),
    "jsonl": (read_jsonl, ""),
}


def read_source(reader: str, root: str | Path, path: str | None = None, **options: Any) -> list[Sample]:
    """Read one configured source: ``reader`` names a format, ``path`` is relative to ``root``
    (default: the format's usual folder), ``options`` go to the reader (split, dev_fraction...)."""
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; known: {sorted(READERS)}")
    fn, default = READERS[reader]
    rel = path if path is not None else default
    if not rel:
        raise ValueError(f"reader {reader!r} needs a 'path'")
    full = Path(rel) if Path(rel).is_absolute() else Path(root) / rel
    if not full.exists():
        raise ValueError(f"data for reader {reader!r} not found at {full}")
    return fn(full, **options)
