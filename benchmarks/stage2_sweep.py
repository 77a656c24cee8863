"""Collects the stage-2 sweep of 2026-12-07 into benchmarks/results/stage2_sweep.{json,md}.

Each variant was trained with its command below (after stage 1, configs/mini.yaml) and measured
on the full dev splits with
    python benchmarks/quality.py --models <its export> --data ../shared/data --out runs/q_<variant>.json
then this script reads those files (and the shipped row of benchmarks/results/quality.json).
"""
import json
from pathlib import Path

BASE = "unirep-train --config configs/experiments/mini-images-grouped.yaml --set run.threads=1"


def run(tag: str, *sets: str) -> str:
    """The variant's command; its own output folder, or --resume auto would continue another's run."""
    out = f"runs/s2{tag}"
    return " ".join([BASE, *(f"--set {s}" for s in sets), f"--set run.output_dir={out} --set export.dir={out}/export"])


V = {
    "shipped (2026-11-22)": ("benchmarks/results/quality.json", "unirep-mini (shipped: stage 2)",
                             "unirep-train --config configs/mini-images.yaml (at 5d342a4: batch 192, 1 caption/picture, "
                             "dropout 0.3, head lr 1e-4, 1000 steps)"),
    # A: the experiment config as it is (64 pictures x 4 captions, dropout 0.5, head lr 2e-4, 1000 steps)
    "A": ("runs/q_a.json", None, run("a")),
    "B": ("runs/q_b.json", None, run("b", "optim.lr.head=3e-4")),
    "D": ("runs/q_d.json", None, run("d", "run.steps=500")),
    "E": ("runs/q_e.json", None, run("e", "run.steps=500", "optim.lr.head=1e-4")),
    "F": ("runs/q_f.json", None, run("f", "optim.lr.head=1e-4", "data.train.0.per_group=2", "data.train.1.per_group=2")),
    "G": ("runs/q_g.json", None, run("g", "optim.lr.head=1e-4", "data.train.0.per_group=1", "data.train.1.per_group=1",
                                     "model.overrides.backbone.vision.summary.dropout=0.3")),
}
KEYS = ["sts_spearman", "flickr8k_t2i_R@1", "flickr8k_t2i_R@10", "flickr8k_i2t_R@1", "vi_captions_t2i_R@10", "en_vi_R@1", "ece"]
FLOOR = {"sts_spearman": 0.872, "flickr8k_t2i_R@1": 0.18, "flickr8k_t2i_R@10": 0.55, "flickr8k_i2t_R@1": 0.22}
out, rows = {}, []
for name, (path, key, cmd) in V.items():
    p = Path(path)
    if not p.is_file():
        continue
    d = json.loads(p.read_text())
    res = d[key or list(d)[0]]["metrics"]
    out[name] = {"command": cmd, "metrics": {dim: {k: res[dim][k] for k in KEYS} for dim in ("128", "384")}}
    m = res["384"]
    ok = all(m[k] >= v for k, v in FLOOR.items())
    rows.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + f" | {'yes' if ok else 'no'} | {cmd} |")
Path("benchmarks/results/stage2_sweep.json").write_text(json.dumps({"floors": FLOOR, "variants": out}, indent=2) + "\n")
head = "| variant | " + " | ".join(KEYS) + " | floors hold | command |\n|---|" + "---|" * (len(KEYS) + 2)
Path("benchmarks/results/stage2_sweep.md").write_text(head + "\n" + "\n".join(rows) + "\n")
print(head); print("\n".join(rows))
