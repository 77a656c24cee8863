"""The training loop: mixed-task batches, Matryoshka losses, per-component clipping, a NaN
guard, checkpoints that resume bit-for-bit, periodic dev evaluation, and export."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from unirep_core import Calibrator, UniRep
from unirep_core.device import pick_device

from .config import TrainConfig
from .data.cache import ImageFeatureCache, TextFeatureCache, text_path_is_frozen
from .data.readers import read_source
from .data.sampler import TaskMixSampler
from .data.samples import Sample, Side, duplicate_matrix
from .encoder import SideEncoder, install_passthrough, remove_passthrough
from .metrics import recall_at_k, spearman, truncate
from .modeling import build_model, trainable_groups
from .objective import Objective
from .pairs import build_pairset, calibration_pairs, fit_calibration, pair_cosines, subset

__all__ = ["Trainer", "load_sources", "latest_checkpoint"]

logger = logging.getLogger(__name__)
CALIBRATION_SALT = "calibration"


def load_sources(sources: Sequence[Any], root: str | Path, seed: int) -> dict[str, list[Sample]]:
    out = {}
    for src in sources:
        samples = read_source(src.reader, root, src.path, **src.options)
        if src.max_samples is not None and len(samples) > src.max_samples:
            samples = subset(samples, src.max_samples, seed=f"{seed}:{src.name}")
        if not samples:
            raise ValueError(f"data source {src.name!r} ({src.reader}) has no samples")
        out[src.name] = samples
    return out


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def _lr_lambda(warmup: int, total: int, schedule: str, floor: float):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t
        return floor + (1.0 - floor) * shape

    return f


class Trainer:
    """``Trainer(config).train()`` runs (or resumes) a run; :meth:`export` writes the model."""

    def __init__(self, config: TrainConfig, *, command: str | None = None, resume: str | None = "auto",
                 show_progress: bool | None = None):
        self.config = config
        self.command = command if command is not None else " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
        run = config.run
        if run.threads:
            torch.set_num_threads(int(run.threads))
        self.show_progress = run.progress if show_progress is None else show_progress
        self.out = config.output_dir
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(run.seed)
        self.device = pick_device(run.device)

        self.model: UniRep = build_model(config.model, self.device)
        self.dims = self.model.dims
        self.objective = Objective(config.losses, self.dims).to(self.device)

        self.train_sets = load_sources(config.data.train, config.data.root, run.seed)
        self.dev_sets = load_sources(config.data.dev, config.data.root, run.seed) if config.data.dev else {}
        tasks = {s.task for samples in self.train_sets.values() for s in samples}
        self.objective.check_tasks(sorted(tasks))

        self.image_cache, self.text_cache = self._build_caches()
        self.encoder = SideEncoder(self.model, image_cache=self.image_cache, text_cache=self.text_cache)

        sizes = {s.name: int(s.batch_size or config.data.batch_size) for s in config.data.train}
        self.sampler = TaskMixSampler(self.train_sets, {s.name: s.weight for s in config.data.train}, sizes,
                                      seed=run.seed, curriculum=config.curriculum,
                                      per_group={s.name: s.per_group for s in config.data.train})

        self.groups = trainable_groups(self.model, self.objective)
        param_groups = []
        opt = config.optim
        for gname, named in self.groups.items():
            decay = [p for n, p in named if p.dim() >= 2 and gname != "loss"]
            no_decay = [p for n, p in named if not (p.dim() >= 2 and gname != "loss")]
            for params, wd in ((decay, opt.weight_decay), (no_decay, 0.0)):
                if params:
                    param_groups.append({"params": params, "lr": opt.lr_of(gname), "weight_decay": wd, "name": gname})
        self.optimizer = torch.optim.AdamW(param_groups, betas=opt.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(opt.warmup_steps, run.steps, opt.schedule, opt.min_lr_ratio))
        self.step = 0
        self.skipped: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.log_path = self.out / "train_log.jsonl"
        if resume and resume != "none":
            path = latest_checkpoint(self.out) if resume == "auto" else Path(resume)
            if path is not None:
                self.load_checkpoint(path)
            elif resume != "auto":
                raise ValueError(f"no checkpoint at {resume}")

    # -- caches -----------------------------------------------------------------------------
    def _all_sides(self) -> list[Side]:
        sets = list(self.train_sets.values()) + list(self.dev_sets.values())
        return [side for samples in sets for s in samples for side in (s.a, s.b)]

    def _build_caches(self) -> tuple[ImageFeatureCache | None, TextFeatureCache | None]:
        from unirep_core.backbones.fusion import FusionBackbone

        cc = self.config.cache
        if not isinstance(self.model.backbone, FusionBackbone):
            return None, None
        sides = self._all_sides()
        image_cache = text_cache = None
        if cc.images:
            image_cache = ImageFeatureCache(self.config.cache_dir, self.model.backbone, cc.image_dtype,
                                            self.model.config.limits.get("max_image_pixels"))
            paths = [p for side in sides for p in side.images]
            if paths:
                image_cache.ensure(paths, batch_size=cc.batch_size, show_progress=self.show_progress)
        if cc.text and text_path_is_frozen(self.model):
            text_cache = TextFeatureCache(self.config.cache_dir, self.model)
            texts = [self.model.check_task(s.prefix) + s.text for s in sides if s.text is not None and not s.images]
            if texts:
                text_cache.ensure(texts, batch_size=max(cc.batch_size, 64), show_progress=self.show_progress)
        return image_cache, text_cache

    # -- one step -----------------------------------------------------------------------------
    def _batch_loss(self, samples: list[Sample]) -> tuple[torch.Tensor, dict[str, float]]:
        by_task: dict[str, list[Sample]] = {}
        for s in samples:
            by_task.setdefault(s.task, []).append(s)
        total = None
        logs: dict[str, float] = {}
        for task, group in by_task.items():
            a = self.encoder([s.a for s in group])
            b = self.encoder([s.b for s in group])
            groups = torch.from_numpy(duplicate_matrix(group)).to(a.device)
            scores = None
            if any(s.score is not None for s in group):
                if not all(s.score is not None for s in group):
                    raise ValueError(f"a batch of task {task!r} mixes graded and ungraded samples")
                scores = torch.tensor([s.score for s in group], dtype=torch.float32, device=a.device)
            loss, part = self.objective(task, a, b, groups=groups, scores=scores)
            w = len(group) / len(samples)
            total = loss * w if total is None else total + loss * w
            logs.update(part if len(by_task) == 1 else {f"{task}/{k}": v for k, v in part.items()})
        assert total is not None
        return total, logs

    def _trained_parts_train(self, on: bool) -> None:
        """Dropout of the trained parts is on during steps only; the frozen backbone stays in
        eval mode (its features must match the caches) and evaluation sees no dropout."""
        bb = self.model.backbone
        parts = [bb.get_submodule(name) for name in bb.trained_modules] + [self.model.head]
        for part in parts:  # a part frozen by model.freeze stays as it was loaded: no dropout
            part.train(on and any(p.requires_grad for p in part.parameters()))

    def train_step(self) -> dict[str, Any]:
        """Run step ``self.step`` (skipping the update when loss or gradients are not finite)."""
        step = self.step
        name, samples = self.sampler.batch(step)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self._trained_parts_train(True)
        try:
            loss, logs = self._batch_loss(samples)
        finally:
            self._trained_parts_train(False)
        reason = None
        norms: dict[str, float] = {}
        if not torch.isfinite(loss):
            reason = f"loss is {float(loss.detach())}"
        else:
            loss.backward()
            for gname, named in self.groups.items():
                params = [p for _, p in named if p.grad is not None]
                if not params:
                    continue
                limit = self.config.optim.clip_of(gname)
                norm = torch.nn.utils.clip_grad_norm_(params, limit if limit else float("inf"))
                norms[gname] = float(norm)
                if not math.isfinite(norms[gname]):
                    reason = f"gradient of {gname} is {norms[gname]}"
        if reason is None:
            self.optimizer.step()
            self.objective.after_step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped.append({"step": step, "source": name, "reason": reason})
            logger.warning("step %d (%s): %s - update skipped", step, name, reason)
        self.scheduler.step()
        self.step += 1
        dt = time.perf_counter() - t0
        return {"step": step, "source": name, "loss": float(loss.detach()), "skipped": reason is not None,
                "seconds": dt, "pairs": len(samples), **{f"grad_norm/{k}": v for k, v in norms.items()}, **logs}

    # -- loop -------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train until ``run.steps`` (or ``stop_at``), checkpointing every ``checkpoint_every``
        steps and at the end; return the last dev metrics (if any dev sources)."""
        run = self.config.run
        end = min(run.steps, stop_at) if stop_at is not None else run.steps
        bar = tqdm(total=run.steps, initial=self.step, desc="train", unit="step", disable=not self.show_progress,
                   dynamic_ncols=True)
        ema = None
        window: list[tuple[float, int]] = []
        last_metrics: dict[str, Any] = {}
        while self.step < end:
            rec = self.train_step()
            if math.isfinite(rec["loss"]):
                ema = rec["loss"] if ema is None else 0.9 * ema + 0.1 * rec["loss"]
            window = (window + [(rec["seconds"], rec["pairs"])])[-20:]
            secs = sum(w[0] for w in window)
            bar.set_postfix(loss=f"{ema:.4f}" if ema is not None else "nan", src=rec["source"],
                            pairs_s=f"{sum(w[1] for w in window) / max(secs, 1e-9):.1f}", refresh=False)
            bar.update(1)
            if run.log_every and (self.step % run.log_every == 0 or rec["skipped"]):
                rec["lr"] = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
                self._log(rec)
            if run.eval_every and self.step % run.eval_every == 0 and self.dev_sets and self.step < end:
                last_metrics = self.evaluate_dev()
            if run.checkpoint_every and self.step % run.checkpoint_every == 0 and self.step < end:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        if self.dev_sets and self.step >= run.steps:
            last_metrics = self.evaluate_dev()
        return last_metrics

    def _log(self, rec: dict[str, Any]) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=float) + "\n")

    # -- dev evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, sides: Sequence[Side], batch_size: int | None = None) -> np.ndarray:
        """Full-size embeddings through the training encoder (caches), in order."""
        bs = batch_size or max(self.config.data.batch_size, 32)
        out = []
        for i in range(0, len(sides), bs):
            out.append(self.encoder(list(sides[i : i + bs])).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.dim), np.float32)

    def evaluate_dev(self) -> dict[str, Any]:
        """Quick dev metrics at every size: Spearman on graded sources, R@1 both ways otherwise."""
        t0 = time.perf_counter()
        metrics: dict[str, dict[str, float]] = {str(d): {} for d in self.dims}
        for name, samples in self.dev_sets.items():
            ps = build_pairset(subset(samples, self.config.data.dev_max_pairs, seed=self.config.run.seed), name)
            q, c = self.embed(ps.queries), self.embed(ps.candidates)
            for d in self.dims:
                if ps.graded:
                    cos = pair_cosines(q, c, ps.pairs[:, 0], ps.pairs[:, 1], [d])[d]
                    metrics[str(d)][f"{name}/spearman"] = spearman(cos, ps.scores)  # type: ignore[arg-type]
                else:
                    sim = truncate(q, d) @ truncate(c, d).T
                    rel = ps.relevant()
                    metrics[str(d)][f"{name}/R@1"] = recall_at_k(sim, rel, (1,))[1]
                    metrics[str(d)][f"{name}/R@1_reverse"] = recall_at_k(sim.T, rel.T, (1,))[1]
        rec = {"step": self.step, "dev": metrics, "seconds": time.perf_counter() - t0}
        self.history.append(rec)
        self._log(rec)
        full = metrics[str(self.dims[-1])]
        summary = " ".join(f"{k}={v:.3f}" for k, v in full.items())
        (tqdm.write if self.show_progress else logger.info)(f"dev @ step {self.step} (dim {self.dims[-1]}): {summary}")
        return metrics

    # -- checkpoints ----------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        state = self.model.trained_state_dict()
        state.update({f"loss.{k}": v.detach().cpu().contiguous() for k, v in self.objective.state_dict().items()})
        return state

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        root = self.out / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:08d}"
        tmp = root / f"step-{self.step:08d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(self._trainable_state(), str(tmp / "trainable.safetensors"))
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng},
                   tmp / "optimizer.pt")
        state = {"step": self.step, "sampler": self.sampler.state_dict(), "skipped": self.skipped,
                 "history": self.history, "config": self.config.to_dict(), "command": self.command}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=float), "utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[: -self.config.run.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint %s", final)
        return final

    def load_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        state = json.loads((path / "state.json").read_text("utf-8"))
        if state.get("config", {}).get("losses") != self.config.to_dict().get("losses") or \
                state.get("config", {}).get("model") != self.config.to_dict().get("model"):
            logger.warning("resuming %s with a changed model/losses config", path)
        tensors = load_file(str(path / "trainable.safetensors"))
        model_state = {k: v for k, v in tensors.items() if not k.startswith("loss.")}
        expected = set(self.model.trained_state_dict())
        if set(model_state) != expected:
            raise ValueError(f"checkpoint {path} does not match the model (missing "
                             f"{sorted(expected - set(model_state))[:3]}, unexpected {sorted(set(model_state) - expected)[:3]})")
        self.model.load_state_dict(model_state, strict=False)
        self.objective.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("loss.")})
        blob = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        rng = blob["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.skipped = list(state.get("skipped", []))
        self.history = list(state.get("history", []))
        logger.info("resumed from %s at step %d", path, self.step)

    # -- export --------------------------------------------------------------------------------
    def fit_calibration(self) -> tuple[dict[str, list[float]] | None, dict[str, Any]]:
        """Per-size ``(a_d, b_d)`` fitted on the ``fit`` half of the dev sources."""
        ex = self.config.export
        cos_parts: dict[int, list[np.ndarray]] = {d: [] for d in self.dims}
        labels: list[np.ndarray] = []
        counts = {}
        for name, samples in self.dev_sets.items():
            ps = build_pairset(samples, name)
            q, c = self.embed(ps.queries), self.embed(ps.candidates)
            qi, ci, y = calibration_pairs(ps, q, c, half="fit", salt=CALIBRATION_SALT,
                                          negatives_random=ex.negatives_random, negatives_hard=ex.negatives_hard,
                                          seed=self.config.run.seed, max_queries=ex.max_queries)
            if not len(y):
                continue
            for d, v in pair_cosines(q, c, qi, ci, self.dims).items():
                cos_parts[d].append(v)
            labels.append(y)
            counts[name] = int(len(y))
        info = {"half": "fit", "salt": CALIBRATION_SALT, "pairs": counts,
                "negatives_random": ex.negatives_random, "negatives_hard": ex.negatives_hard,
                "max_queries": ex.max_queries,
                "rule": "per dev query: its positive(s) label 1, hardest + random non-relevant candidates label 0; "
                        "graded pairs: score as soft label; groups split in halves by SHA-1 (fit/eval)"}
        if not labels:
            logger.warning("no dev pairs to fit the calibration on: exporting the default calibration")
            return None, info
        y_all = np.concatenate(labels)
        params = fit_calibration({d: np.concatenate(v) for d, v in cos_parts.items()}, y_all)
        return params, info

    def data_split(self) -> dict[str, Any]:
        def describe(srcs, sets):
            return [{"name": s.name, "reader": s.reader, "path": s.path, "options": dict(s.options),
                     "max_samples": s.max_samples, "weight": s.weight, "samples": len(sets[s.name]),
                     "groups": len({x.group for x in sets[s.name]})} for s in srcs]

        return {"root": str(self.config.data.root),
                "rule": "vi_captions split by image, en_vi_parallel by page, emoji by image: "
                        "dev if sha1('split:<seed>\\0<key>') < dev_fraction (unirep_training.data.splits.split_of)",
                "train": describe(self.config.data.train, self.train_sets),
                "dev": describe(self.config.data.dev, self.dev_sets)}

    def export(self, directory: str | Path | None = None) -> Path:
        """Write the saved-model format with the calibration fitted on held-out dev pairs."""
        out = Path(directory) if directory is not None else self.config.export_dir
        params, cal_info = self.fit_calibration()
        model = self.model
        remove_passthrough(model)  # the saved model runs its real vision tower
        try:
            model.calibrator = Calibrator(params, self.dims)
            cal_info["params"] = params
            cfg = model.config
            if self.config.export.name:
                cfg.name = self.config.export.name
            cfg.meta = {
                **(cfg.meta or {}),
                "training": {"command": self.command, "config_file": self.config.source_path,
                             "config": self.config.to_dict(), "step": self.step, "seed": self.config.run.seed,
                             "skipped_steps": self.skipped, "base": self.config.model.name_or_path},
                "data_split": self.data_split(),
                "calibration": cal_info,
                "dev_metrics": self.history[-1] if self.history else None,
            }
            model.save_pretrained(out, weights_dtype=self.config.export.weights_dtype)
            if self.config.model.text_lora:
                logger.warning("%s holds text-encoder LoRA weights (backbone.text.lora): loading it needs a "
                               "unirep_core whose fusion backbone applies backbone.text.lora", out)
        finally:
            if self.image_cache is not None:
                install_passthrough(model)
        logger.debug("exported %s", out)
        return out
