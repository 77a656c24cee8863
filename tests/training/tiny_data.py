"""Tiny synthetic data in every format the training readers understand (never ../shared/data)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import make_image

__all__ = ["write_tiny_data", "COLOURS"]

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "grey", "orange", "purple", "cyan"]
RGB = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 230, 20),
       "black": (10, 10, 10), "white": (245, 245, 245), "pink": (250, 150, 200), "brown": (120, 70, 20),
       "grey": (128, 128, 128), "orange": (250, 140, 0), "purple": (130, 30, 160), "cyan": (0, 220, 220)}


def _picture(colour: str, seed: int, size: int = 48):
    img = make_image(seed, size)
    # a large patch of the named colour, so captions and pictures are learnably related
    from PIL import ImageDraw

    ImageDraw.Draw(img).rectangle([4, 4, size - 4, size - 4], fill=RGB[colour])
    return img


def write_tiny_data(root: str | Path) -> Path:
    root = Path(root)
    # flickr8k: 8 train images x 2 captions, 4 dev images x 2 captions
    fl = root / "flickr8k"
    for split, colours in (("train", COLOURS[:8]), ("dev", COLOURS[8:12])):
        (fl / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for i, c in enumerate(colours):
            name = f"{split}_{c}.jpg"
            _picture(c, i).save(fl / split / name, quality=95)
            lines += [f"{name}\ta {c} photo .", f"{name}\tthe {c} picture with a dog"]
        (fl / f"captions_{split}.tsv").write_text("\n".join(lines) + "\n", "utf-8")
    # vi_captions: 6 images x 2 captions
    vi = root / "vi_captions"
    (vi / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, c in enumerate(COLOURS[:6]):
        name = f"{i:07d}.jpg"
        _picture(c, 100 + i).save(vi / "images" / name)
        lines += [f"{name}\tmột bức ảnh màu {c}", f"{name}\tảnh {c} với con chó"]
    (vi / "captions.tsv").write_text("\n".join(lines) + "\n", "utf-8")
    # emoji: header + 4 rows
    em = root / "emoji"
    (em / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image\temoji\tname_en\tname_vi\tkeywords_en\tkeywords_vi"]
    for i, c in enumerate(COLOURS[:4]):
        name = f"{i:05d}.png"
        _picture(c, 200 + i, 32).save(em / "images" / name)
        rows.append(f"{name}\tX\t{c} circle\thình tròn {c}\t{c} | circle\ttròn | {c}")
    (em / "emoji.tsv").write_text("\n".join(rows) + "\n", "utf-8")
    # stsb: genre, file, year, id, score, s1, s2 (+ sometimes extra columns)
    st = root / "stsb"
    st.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 10), ("dev", 6)):
        rows = []
        for i in range(n):
            a, b = COLOURS[i % 12], COLOURS[(i * 5 + 1) % 12]
            score = 5.0 if i % 3 == 0 else (2.5 if i % 3 == 1 else 0.4)
            s2 = f"a {a} dog" if score == 5.0 else f"a {b} cat"
            extra = "\tsource-a\tsource-b" if i == 1 else ""
            rows.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score:.3f}\ta {a} dog\t{s2}{extra}")
        (st / f"sts-{split}.csv").write_text("\n".join(rows) + "\n", "utf-8")
    # en_vi_parallel: 6 pages x 2 paragraphs
    ev = root / "en_vi_parallel"
    ev.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(6):
        for k in range(2):
            c = COLOURS[(2 * p + k) % 12]
            rows.append(f"text/page{p}.html\tpar_{k}\tThe {c} button opens menu {p}.\tNút {c} mở trình đơn {p}.")
    (ev / "pairs.tsv").write_text("\n".join(rows) + "\n", "utf-8")
    # generic JSONL: retrieval text pairs + one text+image -> text (vqa_single) sample
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as f:
        for i, c in enumerate(COLOURS[:6]):
            f.write(json.dumps({"task": "retrieval", "a": {"text": f"where is the {c} house"},
                                "b": {"text": f"the {c} house is on the hill {i}"}}) + "\n")
    with open(root / "vqa.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"task": "vqa_single", "a": {"text": "what colour is it", "images": ["flickr8k/train/train_red.jpg"]},
                            "b": {"text": "red"}, "group": "q1"}) + "\n")
        f.write(json.dumps({"task": "text_pair", "a": "a dog", "b": {"text": "a puppy"}, "score": 0.9}) + "\n")
    return root
