"""Dev-set quality of one or more UniRep models, every metric at every Matryoshka size.

    python benchmarks/quality.py --models unirep-mini runs/unirep-mini/export \
        --data ../shared/data --out benchmarks/results/quality.json [--limit 500]
    python benchmarks/quality.py --models unirep-mini --labels "unirep-mini (shipped)" --merge ...

``--labels`` names the rows (default: the model ids); ``--merge`` keeps the other models
already in ``--out`` (re-measure one model without re-running the rest).

Runs ``unirep_training.evaluate.evaluate_model`` on each model (a registered name is the
untrained base: e5's own text embeddings, an untrained projector) and prints a Markdown
table of the headline metrics; the JSON holds everything.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADLINE = ["sts_spearman", "flickr8k_t2i_R@1", "flickr8k_t2i_R@10", "flickr8k_i2t_R@1", "flickr8k_rerank_MRR",
            "vi_captions_t2i_R@1", "en_vi_R@1", "ece"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="benchmarks/results/quality.json")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--labels", nargs="+", default=None, help="row names, one per model")
    p.add_argument("--merge", action="store_true", help="keep the other models already in --out")
    args = p.parse_args(argv)
    labels = args.labels or args.models
    if len(labels) != len(args.models):
        p.error(f"--labels needs one name per model ({len(args.models)}), got {len(labels)}")

    import torch

    from unirep_core import UniRep
    from unirep_training.evaluate import evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    kept = json.loads(out.read_text("utf-8")) if args.merge and out.is_file() else {}
    results = {}
    for name, label in zip(args.models, labels):
        model = UniRep.from_pretrained(name, device="cpu")
        results[label] = evaluate_model(model, args.data, batch_size=args.batch_size, limit=args.limit,
                                       show_progress=True)
    # the models just measured first, then those kept from the earlier file
    results.update({k: v for k, v in kept.items() if k not in results})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")

    table = ["| model | dim | " + " | ".join(HEADLINE) + " |", "|---|---|" + "---|" * len(HEADLINE)]
    for name, res in results.items():
        for dim, m in res["metrics"].items():
            cells = [f"{m[k]:.3f}" if k in m else "-" for k in HEADLINE]
            table.append(f"| {name} | {dim} | " + " | ".join(cells) + " |")
    print("\n".join(table))
    out.with_suffix(".md").write_text("\n".join(table) + "\n", "utf-8")
    plot(results, out.with_suffix(".png"))
    print(f"\nwrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}", file=sys.stderr)
    return 0


def plot(results: dict, path: Path) -> None:
    """One panel per headline metric: its value at each Matryoshka size, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True)
    for ax, key in zip(axes.ravel(), HEADLINE):
        for name, res in results.items():
            dims = [int(d) for d in res["metrics"]]
            vals = [res["metrics"][str(d)].get(key, float("nan")) for d in dims]
            ax.plot(dims, vals, marker="o", label=Path(name).name if "/" in name else name)
        ax.set_title(key + (" (lower is better)" if key == "ece" else ""))
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("Matryoshka size (dimensions)")
    fig.suptitle("UniRep dev-set quality vs embedding size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
