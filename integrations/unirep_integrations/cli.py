"""``unirep index`` and ``unirep search``: the main job, on any database URI."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register", "DEFAULT_DB"]

DEFAULT_DB = "qdrant:./unirep-index"
_WRITE_CHUNK = 64


def register(sub: Any) -> None:
    db_help = f"database URI (default: $UNIREP_DB or {DEFAULT_DB}); see unirep_integrations.stores"

    idx = sub.add_parser("index", help="embed files (text passages, images, JSONL) into a vector database")
    idx.add_argument("paths", nargs="+", help="files or folders (.txt .md .jpg .jpeg .png .webp .jsonl)")
    idx.add_argument("--db", default=None, help=db_help)
    idx.add_argument("--collection", default="unirep")
    idx.add_argument("--model", default="unirep-mini")
    idx.add_argument("--coarse-dim", type=int, default=None)
    idx.add_argument("--batch-size", type=int, default=32, help="items per encoder batch")
    idx.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process; ray: Ray Data actors encode, many machines (extra: ray)")
    idx.add_argument("--address", default=None, help="ray: the cluster to join ('auto'; default: start Ray here)")
    idx.add_argument("--actors", type=int, default=None,
                     help="ray: encoder actors, one model each (default: one per GPU, else one per 4 CPUs)")
    idx.set_defaults(func=_index)

    srch = sub.add_parser("search", help="two-stage search: truncated vector retrieves, full vector scores")
    srch.add_argument("text", nargs="?", default=None)
    srch.add_argument("--image", default=None, help="an image path (alone or with the text)")
    srch.add_argument("--db", default=None, help=db_help)
    srch.add_argument("--collection", default="unirep")
    srch.add_argument("--model", default="unirep-mini")
    srch.add_argument("--k", type=int, default=10)
    srch.add_argument("--candidates", type=int, default=100)
    srch.add_argument("--filter", default=None, help='JSON, e.g. \'{"lang": "vi", "year": {"gte": 2020}}\'')
    srch.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    srch.set_defaults(func=_search)


def _open(args: argparse.Namespace):
    from unirep_core import UniRep

    from .stores import open_store

    model = UniRep.from_pretrained(args.model)
    options = {"coarse_dim": args.coarse_dim} if getattr(args, "coarse_dim", None) else {}
    return open_store(args.db or os.environ.get("UNIREP_DB", DEFAULT_DB), model, collection=args.collection, **options)


def _index(args: argparse.Namespace) -> int:
    if getattr(args, "engine", "local") == "ray":
        return _index_ray(args)
    from tqdm.auto import tqdm

    from .base import AddResult, content_id
    from .corpus import iter_corpus

    items = list(iter_corpus(args.paths))  # references only: images are read batch by batch
    store = _open(args)
    store.encode_batch_size = args.batch_size
    total = AddResult()
    bar = tqdm(total=len(items), desc="index", unit="item")
    try:
        for start in range(0, len(items), _WRITE_CHUNK):
            chunk = items[start : start + _WRITE_CHUNK]
            good, origin_of = [], {}
            for it in chunk:
                try:
                    if it.error is not None:
                        raise ValueError(it.error)
                    if it.text is None and it.image is None:
                        raise ValueError("record has neither text nor image")
                    item_id = it.id or content_id(store.model.name, it.text, [it.image] if it.image else [])
                except (ValueError, OSError) as e:
                    total.failed[it.origin] = str(e)
                    continue
                origin_of[item_id] = it.origin
                good.append((item_id, it))
            if good:
                result = store.add(texts=[it.text for _, it in good], images=[it.image for _, it in good],
                                   metadatas=[it.metadata for _, it in good], ids=[i for i, _ in good])
                result.failed = {origin_of.get(k, k): v for k, v in result.failed.items()}
                total.merge(result)
            bar.update(len(chunk))
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted after {len(total.added)} added: run the same command again to finish "
              "(stored items are skipped, nothing is duplicated)", file=sys.stderr)
        return 130
    finally:
        bar.close()
        close = getattr(store, "close", None)
        if close:
            close()
    return _summary(total, args)


def _index_ray(args: argparse.Namespace) -> int:
    from .ray import IngestError, index_with_ray

    try:
        total = index_with_ray(args.paths, args.db or os.environ.get("UNIREP_DB", DEFAULT_DB), model=args.model,
                               collection=args.collection, coarse_dim=args.coarse_dim, batch_size=args.batch_size,
                               actors=args.actors, address=args.address)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to finish "
              "(stored items are skipped, nothing is duplicated)", file=sys.stderr)
        return 130
    except IngestError as e:
        print(f"unirep index: {e}", file=sys.stderr)
        return 1
    return _summary(total, args)


def _summary(total: Any, args: argparse.Namespace) -> int:
    print(f"{len(total.added)} added, {len(total.skipped)} skipped (already indexed), {len(total.failed)} failed"
          f" -> {args.db or os.environ.get('UNIREP_DB', DEFAULT_DB)} [{args.collection}]")
    for origin, reason in total.failed.items():
        print(f"  failed: {origin}: {reason}", file=sys.stderr)
    return 1 if total.failed and not total.added and not total.skipped else 0


def _search(args: argparse.Namespace) -> int:
    if args.text is None and args.image is None:
        raise ValueError("give a query text, --image PATH, or both")
    try:
        flt = json.loads(args.filter) if args.filter else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--filter is not valid JSON ({e.msg})") from None
    store = _open(args)
    try:
        hits = store.search(text=args.text, image=args.image, k=args.k, candidates=args.candidates, filter=flt)
    finally:
        close = getattr(store, "close", None)
        if close:
            close()
    if args.json:
        for h in hits:
            print(json.dumps({"id": h.id, "score": round(h.score, 4), "similarity": round(h.similarity, 4),
                              "source": h.source or h.payload.get("file"), "text": h.text, "payload": h.payload},
                             ensure_ascii=False))
        return 0
    if not hits:
        print("no results")
        return 0
    print(f"{'#':>2}  {'score':>5}  {'cos':>6}  source / text")
    for rank, h in enumerate(hits, 1):
        source = h.source or h.payload.get("file", "")
        snippet = (h.text or "").replace("\n", " ")
        snippet = snippet if len(snippet) <= 90 else snippet[:87] + "..."
        print(f"{rank:>2}  {h.score:5.3f}  {h.similarity:+.3f}  {source}")
        if snippet:
            print(f"{'':>17}{snippet}")
    return 0
