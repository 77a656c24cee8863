"""The ``unirep`` command. Core commands live here; other packages add theirs through the
``unirep.commands`` entry-point group (each entry: ``register(subparsers)``), so the core
never imports integrations or training."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import entry_points
from typing import Sequence

import numpy as np

__all__ = ["main", "build_parser"]


def _encode(args: argparse.Namespace) -> int:
    from .model import UniRep

    texts, images = list(args.text or []), list(args.image or [])
    model = UniRep.from_pretrained(args.model, device=args.device)
    labels: list[str] = []
    parts = []
    if texts:
        parts.append(model.encode(text=texts, task=args.task, embedding_dim=args.dim))
        labels += [f"text:{t}" for t in texts]
    if images:
        parts.append(model.encode(images=images, task=args.task, embedding_dim=args.dim))
        labels += [f"image:{p}" for p in images]
    if not parts:
        raise SystemExit("unirep encode: give at least one --text or --image")
    vectors = np.concatenate(parts)
    if args.json:
        print(json.dumps({"model": model.name, "dim": int(vectors.shape[1]),
                          "items": [{"input": l, "vector": v.round(6).tolist()} for l, v in zip(labels, vectors)]},
                         ensure_ascii=False))
        return 0
    print(f"model {model.name}: {len(labels)} vectors of size {vectors.shape[1]} (unit norm)")
    for label, v in zip(labels, vectors):
        head = " ".join(f"{x:+.3f}" for x in v[:6])
        print(f"  {label[:48]:<48} [{head} ...]")
    sims, scores = model.similarity(vectors, vectors), model.score(vectors, vectors)
    print("cosine similarity (calibrated score):")
    width = max(len(l[:28]) for l in labels)
    for i, label in enumerate(labels):
        row = "  ".join(f"{sims[i, j]:+.3f} ({scores[i, j]:.2f})" for j in range(len(labels)))
        print(f"  {label[:28]:<{width}}  {row}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .registry import list_models

    print("\n".join(list_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unirep", description="UniRep multimodal embeddings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="embed texts and images, print vectors and similarities")
    enc.add_argument("--text", "-t", action="append", help="a text (repeatable)")
    enc.add_argument("--image", "-i", action="append", help="an image path (repeatable)")
    enc.add_argument("--model", default="unirep-mini")
    enc.add_argument("--task", default="query")
    enc.add_argument("--dim", type=int, default=None, help="Matryoshka size")
    enc.add_argument("--device", default=None)
    enc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    enc.set_defaults(func=_encode)

    mod = sub.add_parser("models", help="list registered model names")
    mod.set_defaults(func=_models)

    for ep in entry_points(group="unirep.commands"):
        try:
            ep.load()(sub)
        except ImportError as e:  # a plugin whose optional dependency is missing
            logging.getLogger(__name__).debug("unirep command %s unavailable: %s", ep.name, e)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"unirep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
