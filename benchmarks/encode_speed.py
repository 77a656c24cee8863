"""Encode throughput of a UniRep model on this machine: texts/s and images/s at batch 32,
plus the time of a cold ``from_pretrained`` (empty cache) and a warm one.

    python benchmarks/encode_speed.py [--model unirep-mini] [--data ../shared/data] [--n 512]

Texts are Flickr8k dev captions (short) and en-vi parallel paragraphs (passage length);
images are Flickr8k dev photos. Writes benchmarks/results/encode_speed.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _load_time(model: str, cache: str | None) -> float:
    env = dict(os.environ)
    if cache:
        env["UNIREP_CACHE"] = cache
    code = ("import time; t=time.perf_counter(); from unirep_core import UniRep; "
            f"UniRep.from_pretrained({model!r}); print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unirep-mini")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--n", type=int, default=512, help="items per measurement")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import torch

    from unirep_core import UniRep

    data = Path(args.data)
    with open(data / "flickr8k" / "captions_dev.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if len(r) >= 2]
    captions = [r[1] for r in rows][: args.n]
    images = [str(data / "flickr8k" / "dev" / r[0]) for r in rows[::5]][: args.n // 2]
    with open(data / "en_vi_parallel" / "pairs.tsv", encoding="utf-8") as f:
        paras = [r[2] for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 4 and len(r[2]) > 200]
    paras = paras[: args.n // 2]

    tmp = tempfile.mkdtemp()
    try:
        cold = _load_time(args.model, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    warm = _load_time(args.model, None)

    model = UniRep.from_pretrained(args.model)
    model.encode(text=captions[:32], batch_size=args.batch_size)  # warm-up

    def rate(**kw) -> float:
        n = len(kw.get("text") or kw.get("images"))
        t = time.perf_counter()
        model.encode(batch_size=args.batch_size, show_progress=False, **kw)
        return n / (time.perf_counter() - t)

    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "cold_from_pretrained_s": round(cold, 2),
        "warm_from_pretrained_s": round(warm, 2),
        "short_texts_per_s": round(rate(text=captions, task="query"), 1),
        "passages_per_s": round(rate(text=paras, task="document"), 1),
        "images_per_s": round(rate(images=images), 1),
        "n": {"short_texts": len(captions), "passages": len(paras), "images": len(images)},
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "encode_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
