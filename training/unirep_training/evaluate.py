"""Dev-set evaluation of a saved UniRep model, every metric at every Matryoshka size.

``python -m unirep_training.evaluate --model DIR --data ../shared/data --out results.json``

Metrics (keys of ``results["metrics"][str(dim)]``):

* ``sts_spearman``: Spearman correlation of cosine vs gold score on STS-B dev (``text_pair`` prefix).
* ``flickr8k_t2i_R@k`` / ``flickr8k_i2t_R@k``: Flickr8k dev, 1000 images x 5 captions. Text->image:
  a caption's positive is its image. Image->text: any of the image's captions counts.
* ``flickr8k_rerank_MRR``: reranking. For each dev caption, the candidate list is its image
  plus the ``rerank_candidates - 1`` most similar other images at the *smallest* Matryoshka
  size (what a first-stage truncated search returns); MRR of the positive when the list is
  reranked with the size being evaluated.
* ``vi_captions_t2i_R@k``: Vietnamese captions of the dev images (split recorded in the model's
  ``meta``, else the default split), when the data is there.
* ``en_vi_R@1``: cross-lingual retrieval, English paragraph (``query``) -> Vietnamese paragraph
  (``document``) among all paragraphs of the dev pages.
* ``ece`` (and ``ece_<set>``): expected calibration error (10 equal-width bins) of the model's
  calibrated score on dev pairs of the ``eval`` calibration half (the pairs export did NOT fit
  the calibration on): per query its positive, its hardest and random negatives; STS pairs
  with score/5 as a soft label.

Every set is encoded once at full size and truncated in numpy.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import readers
from .data.samples import Sample, Side
from .metrics import ece, mrr, recall_at_k, spearman, truncate
from .pairs import PairSet, build_pairset, calibration_pairs, pair_cosines, subset

__all__ = ["evaluate_model", "encode_sides", "retrieval_metrics", "rerank_mrr", "main"]

logger = logging.getLogger(__name__)
KS = (1, 5, 10)


def encode_sides(model: Any, sides: Sequence[Side], *, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
    """Full-size vectors of sides through ``model.encode`` (grouped by prefix), in order."""
    out = np.zeros((len(sides), model.dim), dtype=np.float32)
    by_prefix: dict[str, list[int]] = {}
    for i, s in enumerate(sides):
        by_prefix.setdefault(s.prefix, []).append(i)
    for prefix, idx in by_prefix.items():
        texts = [sides[i].text for i in idx]
        images = [list(sides[i].images) or None for i in idx]
        kwargs: dict[str, Any] = {}
        if any(t is not None for t in texts):
            kwargs["text"] = texts
        if any(im for im in images):
            kwargs["images"] = images
        out[idx] = model.encode(**kwargs, task=prefix, batch_size=batch_size, show_progress=show_progress)
    return out


def retrieval_metrics(q: np.ndarray, c: np.ndarray, relevant: np.ndarray, dim: int, prefix: str,
                      both_directions: bool = True, ks: Sequence[int] = KS) -> dict[str, float]:
    sim = truncate(q, dim) @ truncate(c, dim).T
    out = {f"{prefix}_t2i_R@{k}" if both_directions else f"{prefix}_R@{k}": v
           for k, v in recall_at_k(sim, relevant, ks).items()}
    if both_directions:
        has = relevant.any(axis=0)
        out.update({f"{prefix}_i2t_R@{k}": v for k, v in recall_at_k(sim.T[has], relevant.T[has], ks).items()})
    return out


def rerank_mrr(q: np.ndarray, c: np.ndarray, relevant: np.ndarray, dims: Sequence[int],
               n_candidates: int = 20) -> dict[int, float]:
    """MRR at each size of candidate lists = relevant + hardest negatives at the smallest size."""
    coarse = truncate(q, min(dims)) @ truncate(c, min(dims)).T
    lists = []
    for row in range(len(q)):
        pos = np.flatnonzero(relevant[row])
        neg = np.flatnonzero(~relevant[row])
        hard = neg[np.argsort(-coarse[row, neg], kind="stable")[: max(0, n_candidates - len(pos))]]
        lists.append(np.concatenate([pos, hard]))
    out = {}
    for d in dims:
        qd, cd = truncate(q, d), truncate(c, d)
        width = max(len(l) for l in lists)
        sim = np.full((len(q), width), -np.inf, dtype=np.float32)
        rel = np.zeros((len(q), width), dtype=bool)
        for row, l in enumerate(lists):
            sim[row, : len(l)] = cd[l] @ qd[row]
            rel[row, : len(l)] = relevant[row, l]
        out[int(d)] = mrr(sim, rel)
    return out


def _split_options(model: Any, reader: str) -> dict[str, Any]:
    """Split options (dev_fraction, seed) recorded by export for ``reader``, else defaults."""
    split = (model.config.meta or {}).get("data_split", {})
    for entry in list(split.get("dev", [])) + list(split.get("train", [])):
        if entry.get("reader") == reader:
            return {k: v for k, v in entry.get("options", {}).items() if k in ("dev_fraction", "seed")}
    return {}


def _load(reader: str, root: Path, model: Any, **options: Any) -> list[Sample] | None:
    path = root / readers.READERS[reader][1]
    if not path.exists():
        logger.warning("evaluate: %s not found, skipping", path)
        return None
    return readers.read_source(reader, root, **{**_split_options(model, reader), **options})


def evaluate_model(model: Any, data_root: str | Path, *, batch_size: int = 32, limit: int | None = None,
                   rerank_candidates: int = 20, ece_bins: int = 10, negatives_random: int | None = None,
                   negatives_hard: int | None = None, show_progress: bool = False) -> dict[str, Any]:
    """All dev metrics of ``model`` (see the module docstring) as a JSON-ready dict."""
    root = Path(data_root)
    t0 = time.time()
    dims = list(model.dims)
    metrics: dict[str, dict[str, float]] = {str(d): {} for d in dims}
    counts: dict[str, Any] = {}
    meta_cal = (model.config.meta or {}).get("calibration", {})
    salt = meta_cal.get("salt", "calibration")
    n_rand = int(negatives_random if negatives_random is not None else meta_cal.get("negatives_random", 3))
    n_hard = int(negatives_hard if negatives_hard is not None else meta_cal.get("negatives_hard", 3))
    ece_parts: dict[str, tuple[dict[int, np.ndarray], np.ndarray]] = {}

    def enc(ps: PairSet) -> tuple[np.ndarray, np.ndarray]:
        return (encode_sides(model, ps.queries, batch_size=batch_size, show_progress=show_progress),
                encode_sides(model, ps.candidates, batch_size=batch_size, show_progress=show_progress))

    def calib(name: str, ps: PairSet, q: np.ndarray, c: np.ndarray) -> None:
        # pairs of the eval half only (export fitted the calibration on the other half)
        qi, ci, y = calibration_pairs(ps, q, c, half="eval", salt=salt, negatives_random=n_rand,
                                      negatives_hard=n_hard, seed=0)
        if len(y):
            ece_parts[name] = (pair_cosines(q, c, qi, ci, dims), y)

    # STS-B dev
    sts = _load("stsb", root, model, split="dev")
    if sts:
        sts = subset(sts, limit)
        ps = build_pairset(sts, "stsb")
        q, c = enc(ps)
        for d in dims:
            cos = pair_cosines(q, c, ps.pairs[:, 0], ps.pairs[:, 1], [d])[d]
            metrics[str(d)]["sts_spearman"] = spearman(cos, ps.scores)  # type: ignore[arg-type]
        counts["stsb"] = {"pairs": len(sts)}
        calib("stsb", ps, q, c)

    # Flickr8k dev: t2i, i2t, reranking
    fl = _load("flickr8k", root, model, split="dev")
    if fl:
        fl = subset(fl, limit)
        ps = build_pairset(fl, "flickr8k")
        q, c = enc(ps)
        rel = ps.relevant()
        for d in dims:
            metrics[str(d)].update(retrieval_metrics(q, c, rel, d, "flickr8k"))
        for d, v in rerank_mrr(q, c, rel, dims, rerank_candidates).items():
            metrics[str(d)]["flickr8k_rerank_MRR"] = v
        counts["flickr8k"] = {"captions": len(ps.queries), "images": len(ps.candidates)}
        calib("flickr8k", ps, q, c)

    # Vietnamese captions (dev images)
    vi = _load("vi_captions", root, model, split="dev")
    if vi:
        vi = subset(vi, limit)
        ps = build_pairset(vi, "vi_captions")
        q, c = enc(ps)
        for d in dims:
            metrics[str(d)].update(retrieval_metrics(q, c, ps.relevant(), d, "vi_captions"))
        counts["vi_captions"] = {"captions": len(ps.queries), "images": len(ps.candidates)}
        calib("vi_captions", ps, q, c)

    # English -> Vietnamese
    ev = _load("en_vi_parallel", root, model, split="dev")
    if ev:
        ev = subset(ev, limit)
        ps = build_pairset(ev, "en_vi")
        q, c = enc(ps)
        for d in dims:
            metrics[str(d)].update(retrieval_metrics(q, c, ps.relevant(), d, "en_vi", both_directions=False, ks=(1,)))
        counts["en_vi_parallel"] = {"english": len(ps.queries), "vietnamese": len(ps.candidates)}
        calib("en_vi", ps, q, c)

    # Calibration (ECE) of the model's score on held-out pairs
    if ece_parts:
        for d in dims:
            all_p, all_y = [], []
            for name, (cos_by_dim, y) in ece_parts.items():
                p = model.calibrator(cos_by_dim[d], d)
                metrics[str(d)][f"ece_{name}"] = ece(p, y, ece_bins)
                all_p.append(p)
                all_y.append(y)
            metrics[str(d)]["ece"] = ece(np.concatenate(all_p), np.concatenate(all_y), ece_bins)
        counts["ece_pairs"] = {name: int(len(y)) for name, (_, y) in ece_parts.items()}
    return {
        "model": model.name,
        "dims": dims,
        "metrics": metrics,
        "counts": counts,
        "settings": {"rerank_candidates": rerank_candidates, "ece_bins": ece_bins, "calibration_half": "eval",
                     "negatives_random": n_rand, "negatives_hard": n_hard, "limit": limit,
                     "calibration_fitted": bool(model.calibrator.fitted)},
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unirep_training.evaluate",
                                     description="Dev metrics of a UniRep model at every Matryoshka size")
    parser.add_argument("--model", required=True, help="saved model directory or registered name")
    parser.add_argument("--data", required=True, help="data root (flickr8k/, stsb/, ... below it)")
    parser.add_argument("--out", default=None, help="write the results JSON here (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="at most N samples per dev set (quick check)")
    parser.add_argument("--rerank-candidates", type=int, default=20)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    import torch

    from unirep_core import UniRep

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = UniRep.from_pretrained(args.model, device=args.device)
        results = evaluate_model(model, args.data, batch_size=args.batch_size, limit=args.limit,
                                 rerank_candidates=args.rerank_candidates, show_progress=not args.quiet)
    except ValueError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2, ensure_ascii=False)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", "utf-8")
        logger.info("wrote %s", args.out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
