"""Ablation of unirep-mini's whole-image path on Flickr8k dev, from the training caches.

    python benchmarks/image_summary_ablation.py --data ../shared/data \
        --out benchmarks/results/image_summary_ablation.json

Each variant trains only an image summary (``unirep_core``'s ``ImageSummary``: input dropout,
MLP, optional ensemble) onto a frozen text side (cached e5 ``query:`` features through the head
of ``--model``) with symmetric InfoNCE at every Matryoshka size, 64 pictures x 4 captions per
batch, and reports Flickr8k dev text->image R@1/R@10 and image->text R@1 at 384 and 128 dims.
The variants change one thing at a time: the descriptor the summary reads (mean of the 224 px
grid cells, as stage 1 caches them; the mean of the 288 px map; the same plus the means of
MBConv blocks 10, 14, 15, optionally each part layer-normed) and the number of ensemble members. An ensemble of k members trains
k x the steps (each image updates one member), so every MLP gets the same number of updates.
Feature caches come from ``unirep-train --prepare-only`` of configs/mini.yaml (224 px) and
configs/mini-images.yaml (288 px + taps); missing features are computed (with progress).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from frozen_baseline import _retrieval  # same retrieval protocol as the baseline and the evaluator

VARIANTS = [
    # name, cache ("cells224" | "global288"), descriptor columns (None: all), members
    {"name": "224 px, mean of grid cells (previous summary input)", "cache": "cells224", "columns": None, "members": 1},
    {"name": "288 px, mean of the last map", "cache": "global288", "columns": 1280, "members": 1},
    {"name": "288 px, last map + blocks 10/14/15", "cache": "global288", "columns": None, "members": 1},
    {"name": "288 px, last map + blocks 10/14/15, 3 members", "cache": "global288", "columns": None, "members": 3},
    {"name": "288 px, last map + blocks 10/14/15 (each layer-normed), 5 members (shipped)", "cache": "global288",
     "columns": None, "members": 5, "norm": True},
]
BLOCKS = (1280, 112, 192, 320)  # last map, blocks 10, 14, 15
DIMS = (64, 128, 256, 384)


def _backbone_config(base: dict, kind: str) -> dict:
    import copy

    cfg = copy.deepcopy(base)
    vision = cfg["backbone"]["vision"]
    if kind == "cells224":
        vision.update(image_size=224, summary=None)
    else:
        vision.update(image_size=288, summary={"hidden": 1024, "images_alone": True, "input": "global",
                                               "taps": [10, 14, 15], "members": 3})
    cfg["calibration"] = None
    return cfg


def _split(samples):
    texts = [s.a.text for s in samples]
    images = [s.b.images[0] for s in samples]
    unique = list(dict.fromkeys(images))
    index = {p: k for k, p in enumerate(unique)}
    return texts, unique, [index[p] for p in images]


def train_summary(x_tr, t_tr, owner_tr, head, *, members: int, steps: int, seed: int, norm: bool = False,
                  per_image: int = 4, batch_size: int = 256, lr: float = 1e-3):
    import torch
    from tqdm.auto import tqdm

    from unirep_core.backbones.fusion import ImageSummary

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    summary = ImageSummary(x_tr.size(1), 1024, head.proj.in_features, dropout=0.5, members=members,
                           norm_blocks=BLOCKS if norm else ()).train()
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(20.0))))
    opt = torch.optim.AdamW([{"params": summary.parameters(), "lr": lr}, {"params": [log_scale], "lr": 1e-3}],
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.45 * (1 + np.cos(np.pi * s / steps))))
    with torch.no_grad():
        text_vecs = head(t_tr)
    captions = [np.flatnonzero(owner_tr == k) for k in range(len(x_tr))]
    for _ in tqdm(range(steps), desc=f"summary x{members}", leave=False):
        pics = rng.choice(len(x_tr), batch_size // per_image, replace=False)
        cap = np.concatenate([rng.permutation(captions[k])[:per_image] for k in pics])
        img = torch.from_numpy(owner_tr[cap])
        same = (img[:, None] == img[None, :]) & ~torch.eye(len(cap), dtype=torch.bool)
        iv, tv = head(summary(x_tr[img])), text_vecs[torch.from_numpy(cap)]
        loss = 0.0
        for d in DIMS:  # Matryoshka: every prefix is trained
            sim = (torch.nn.functional.normalize(tv[:, :d], dim=-1)
                   @ torch.nn.functional.normalize(iv[:, :d], dim=-1).T) * log_scale.exp().clamp(10, 100)
            sim = sim.masked_fill(same, float("-inf"))  # captions of one picture are not negatives
            labels = torch.arange(len(cap))
            loss = loss + (torch.nn.functional.cross_entropy(sim, labels)
                           + torch.nn.functional.cross_entropy(sim.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(summary.parameters(), 1.0)
        opt.step()
        sched.step()
    return summary.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the shared data root (flickr8k/)")
    p.add_argument("--model", default="unirep-mini", help="whose head maps the frozen text features")
    p.add_argument("--cache", default="runs/cache", help="feature cache folder (shared with unirep-train)")
    p.add_argument("--steps", type=int, default=500, help="steps per ensemble member")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/image_summary_ablation.json")
    args = p.parse_args(argv)

    import torch

    from unirep_core import UniRep
    from unirep_core.registry import registered_config_path
    from unirep_training.data.cache import ImageFeatureCache, TextFeatureCache
    from unirep_training.data.readers import read_flickr8k

    head_model = UniRep.from_pretrained(args.model, device="cpu").requires_grad_(False)
    base = json.loads(registered_config_path("unirep-mini").read_text("utf-8"))
    splits = {s: _split(read_flickr8k(Path(args.data) / "flickr8k", s)) for s in ("train", "dev")}
    text_cache = TextFeatureCache(args.cache, head_model)
    texts = {s: [head_model.check_task("query") + t for t in splits[s][0]] for s in splits}
    for s in splits:
        text_cache.ensure(texts[s])
    features = {}
    for kind in ("cells224", "global288"):
        bb = UniRep.from_config(_backbone_config(base, kind), device="cpu").requires_grad_(False).backbone
        cache = ImageFeatureCache(args.cache, bb)
        for s in splits:
            cache.ensure(splits[s][1])
            cells, desc = cache.get_features(splits[s][1])
            features[kind, s] = cells.flatten(2).mean(-1) if desc is None else desc
    results = {"what": __doc__.split("\n\n")[1].strip(), "model_head": args.model, "steps_per_member": args.steps,
               "seed": args.seed, "date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "variants": []}
    owner = {s: np.asarray(splits[s][2]) for s in splits}
    for v in VARIANTS:
        t0 = time.time()
        cols = v["columns"]
        x = {s: features[v["cache"], s][:, :cols] if cols else features[v["cache"], s] for s in splits}
        summary = train_summary(x["train"], text_cache.get(texts["train"]), owner["train"], head_model.head,
                                members=v["members"], steps=args.steps * v["members"], seed=args.seed,
                                norm=v.get("norm", False))
        with torch.no_grad():
            iv, tv = head_model.head(summary(x["dev"])), head_model.head(text_cache.get(texts["dev"]))
        dev_owner = torch.from_numpy(owner["dev"])
        row = {**v, "input_features": int(x["dev"].size(1)), "seconds": round(time.time() - t0, 1),
               "dev": {str(d): {k: round(x, 4) for k, x in _retrieval(tv[:, :d], iv[:, :d], dev_owner).items()}
                       for d in (384, 128)}}
        results["variants"].append(row)
        print(v["name"], row["dev"], file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
