"""Walk files into items for ``unirep index``: passages of text files, images, JSONL records."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["CorpusItem", "iter_corpus", "split_passages", "TEXT_SUFFIXES", "IMAGE_SUFFIXES"]

TEXT_SUFFIXES = (".txt", ".md")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_MAX_PASSAGE_CHARS = 1200
_MIN_PASSAGE_CHARS = 40


@dataclass
class CorpusItem:
    text: str | None = None
    image: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    origin: str = ""  # where it came from, for error messages
    error: str | None = None  # set when the record could not be read


def split_passages(text: str) -> list[str]:
    """Paragraphs (blank-line separated); short ones such as headings join the next one,
    long ones are cut at sentence ends to at most ~1,200 characters."""
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p.lstrip("# ").strip() if p.startswith("#") else p for p in paragraphs if p]
    merged: list[str] = []
    carry = ""
    for p in paragraphs:
        p = f"{carry} {p}".strip() if carry else p
        if len(p) < _MIN_PASSAGE_CHARS:
            carry = p
            continue
        carry = ""
        merged.extend(_cut(p))
    if carry:
        if merged:
            merged[-1] = f"{merged[-1]} {carry}"
        else:
            merged.append(carry)
    return merged


def _cut(p: str) -> list[str]:
    if len(p) <= _MAX_PASSAGE_CHARS:
        return [p]
    out, current = [], ""
    for sentence in re.split(r"(?<=[.!?…])\s+", p):
        if current and len(current) + len(sentence) + 1 > _MAX_PASSAGE_CHARS:
            out.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
        while len(current) > _MAX_PASSAGE_CHARS:  # one huge sentence
            out.append(current[:_MAX_PASSAGE_CHARS])
            current = current[_MAX_PASSAGE_CHARS:]
    if current:
        out.append(current)
    return out


def _files(paths: Sequence[str | os.PathLike]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ValueError(f"no such file or directory: {str(path)!r}")
        if path.is_dir():
            yield from sorted(f for f in path.rglob("*") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(path).parts))
        else:
            yield path


def iter_corpus(paths: Sequence[str | os.PathLike]) -> Iterator[CorpusItem]:
    """Items of every supported file under ``paths`` (other files are ignored)."""
    for f in _files(paths):
        suffix = f.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            text = f.read_text(encoding="utf-8", errors="replace")
            for n, passage in enumerate(split_passages(text)):
                yield CorpusItem(text=passage, metadata={"file": str(f), "passage": n}, origin=f"{f}#{n}")
        elif suffix in IMAGE_SUFFIXES:
            yield CorpusItem(image=str(f), metadata={"file": str(f)}, origin=str(f))
        elif suffix == ".jsonl":
            yield from _jsonl(f)


def _jsonl(path: Path) -> Iterator[CorpusItem]:
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            origin = f"{path}:{line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield CorpusItem(origin=origin, error=f"invalid JSON ({e.msg})")
                continue
            if not isinstance(rec, dict):
                yield CorpusItem(origin=origin, error="record is not a JSON object")
                continue
            image = rec.get("image")
            if isinstance(image, str) and not os.path.isabs(image):
                image = str(path.parent / image)
            meta = rec.get("metadata") or {}
            if not isinstance(meta, dict):
                yield CorpusItem(origin=origin, error="metadata is not an object")
                continue
            yield CorpusItem(text=rec.get("text"), image=image, metadata={**meta, "file": str(path), "line": line_no},
                             id=str(rec["id"]) if rec.get("id") is not None else None, origin=origin)
