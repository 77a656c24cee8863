"""The frozen-feature baseline of the training issue, on any caption data set.

    python benchmarks/frozen_baseline.py --data ../shared/data [--steps 1500] \
        --out benchmarks/results/frozen_baseline.json

What the untrained parts of unirep-mini give when aligned the cheapest way: every image is
EfficientNet-Lite0's pooled feature map (mean of the grid cells, the same 224 px features the
trainer caches), mapped by one linear layer into the frozen e5 text space; captions are e5's
own ``query:`` embeddings, untouched. The map is trained with symmetric InfoNCE (one caption
per image in a batch, temperature learned) on the train split, and scored on the dev split
with the same retrieval protocol as ``unirep_training.evaluate`` (text->image R@1/5/10, image
->text R@1 over all captions of the dev images). Features come from the training package's
caches (``runs/cache`` by default), so after ``unirep-train --prepare-only`` this takes
minutes.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = {
    # reader name -> (train options, dev options); vi_captions' split is the one mini.yaml records
    "flickr8k": ({"split": "train"}, {"split": "dev"}),
    "vi_captions": ({"split": "train", "dev_fraction": 0.15, "seed": 0},
                    {"split": "dev", "dev_fraction": 0.15, "seed": 0}),
}


def _pairs(samples):
    """(captions, image paths of each caption) of caption samples."""
    texts, images = [], []
    for s in samples:
        t, i = (s.a, s.b) if s.a.text is not None else (s.b, s.a)
        texts.append(t.text)
        images.append(i.images[0])
    return texts, images


def _features(model, image_cache, text_cache, texts, images):
    import torch

    prefixed = [model.check_task("query") + t for t in texts]
    text_cache.ensure(prefixed, show_progress=True)
    unique = list(dict.fromkeys(images))
    image_cache.ensure(unique, show_progress=True)
    cells = image_cache.get(unique)  # (N, C, g, g)
    pooled = cells.flatten(2).mean(-1)
    index = {p: k for k, p in enumerate(unique)}
    owner = torch.tensor([index[p] for p in images])
    return text_cache.get(prefixed), pooled, owner


def _retrieval(text_vecs, image_vecs, owner) -> dict[str, float]:
    import torch

    t = torch.nn.functional.normalize(text_vecs, dim=-1)
    i = torch.nn.functional.normalize(image_vecs, dim=-1)
    sim = t @ i.T
    pos = sim[torch.arange(len(owner)), owner]
    rank_t2i = (sim > pos[:, None]).sum(1)
    out = {f"t2i_R@{k}": float((rank_t2i < k).float().mean()) for k in (1, 5, 10)}
    best = torch.full((len(image_vecs),), -2.0).scatter_reduce(0, owner, pos, "amax")
    rank_i2t = (sim.T > best[:, None]).sum(1)
    out["i2t_R@1"] = float((rank_i2t < 1).float().mean())
    return out


def train_map(text_tr, img_tr, owner_tr, *, steps: int, batch_size: int, seed: int, lr: float = 1e-3):
    """Linear image->e5 map trained with symmetric InfoNCE; returns the map."""
    import torch
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(img_tr.size(1), text_tr.size(1))
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(20.0))))
    opt = torch.optim.AdamW([{"params": lin.parameters()}, {"params": [log_scale]}], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    text_n = torch.nn.functional.normalize(text_tr, dim=-1)
    for _ in tqdm(range(steps), desc="align", leave=False):
        idx = torch.randint(0, len(owner_tr), (batch_size,), generator=g)
        # one caption per image: other captions of the same picture are not negatives
        _, first = np.unique(owner_tr[idx].numpy(), return_index=True)
        idx = idx[torch.from_numpy(first)]
        img = torch.nn.functional.normalize(lin(img_tr[owner_tr[idx]]), dim=-1)
        logits = text_n[idx] @ img.T * log_scale.exp().clamp(max=100.0)
        labels = torch.arange(len(idx))
        loss = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return lin


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the shared data root (flickr8k/, vi_captions/)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--cache", default="runs/cache", help="feature cache folder (shared with unirep-train)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/frozen_baseline.json")
    args = p.parse_args(argv)

    import torch

    from unirep_core import UniRep
    from unirep_core.registry import registered_config_path
    from unirep_training.data.cache import ImageFeatureCache, TextFeatureCache
    from unirep_training.data.readers import read_source

    # The untrained architecture (e5 + packaged EfficientNet-Lite0), never trained weights.
    config = json.loads(registered_config_path("unirep-mini").read_text("utf-8"))
    # pinned to the baseline's features (224 px, mean of the grid cells, stage 1's cache), not
    # whatever image path the registered architecture has since gained
    config["backbone"]["vision"].update(image_size=224, summary=None)
    model = UniRep.from_config(config, device="cpu")
    model.requires_grad_(False)
    image_cache = ImageFeatureCache(args.cache, model.backbone)
    text_cache = TextFeatureCache(args.cache, model)
    results: dict = {
        "what": "linear map of pooled EfficientNet-Lite0 features to frozen e5 (query: captions), InfoNCE",
        "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "datasets": {},
    }
    for name in args.datasets:
        train_opts, dev_opts = DATASETS[name]
        t0 = time.time()
        tr = _features(model, image_cache, text_cache, *_pairs(read_source(name, args.data, **train_opts)))
        dv = _features(model, image_cache, text_cache, *_pairs(read_source(name, args.data, **dev_opts)))
        lin = train_map(*tr, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
        with torch.no_grad():
            metrics = _retrieval(dv[0], lin(dv[1]), dv[2])
        results["datasets"][name] = {
            "train_split": train_opts, "dev_split": dev_opts, "train_captions": len(tr[2]),
            "dev_captions": len(dv[2]), "dev_images": int(dv[1].size(0)), "seconds": round(time.time() - t0, 1),
            "dev": {k: round(v, 4) for k, v in metrics.items()},
        }
        print(name, results["datasets"][name]["dev"], file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
