"""The trainer on the tiny fusion model: learning, exact resume, NaN guard, export round trip, CLI."""
import argparse
import json
import math

import numpy as np
import pytest
import torch

from tests.tiny_models import make_image
from unirep_core import UniRep
from unirep_training.cli import main as train_main, register
from unirep_training.data import read_flickr8k
from unirep_training.trainer import Trainer, latest_checkpoint

CAPTIONS_ONLY = "data.train=[{name: captions, reader: flickr8k, split: train, weight: 1, batch_size: 8}]"


def _params(trainer):
    state = trainer.model.trained_state_dict()
    state.update({f"loss.{k}": v.clone() for k, v in trainer.objective.state_dict().items()})
    return state


def test_few_steps_reduce_the_loss(tiny_config):
    cfg = tiny_config(CAPTIONS_ONLY, "run.steps=20", "optim.lr.head=0.01", "optim.lr.projector=0.01",
                      "losses.calibration.weight=0", "losses.uniformity.weight=0", "data.dev=[]")
    tr = Trainer(cfg, command="test", resume="none")
    batch = read_flickr8k(cfg.data.root + "/flickr8k", "train")[::2]  # one caption per image

    def loss():
        with torch.no_grad():
            return float(tr._batch_loss(batch)[0])

    before = loss()
    tr.train()
    assert loss() < 0.7 * before
    assert not tr.skipped
    log = [json.loads(l) for l in tr.log_path.read_text().splitlines()]
    assert log[-1]["step"] == 19 and "grad_norm/projector" in log[-1] and "loss@8" in log[-1]


def test_resume_equals_uninterrupted(tiny_config):
    steps = ["run.steps=3", "run.checkpoint_every=0"]
    whole = Trainer(tiny_config(*steps, name="whole"), command="test", resume="none")
    whole.train()
    # "killed" after step 2: a checkpoint, then a fresh trainer (new objects, same config) resumes
    first = Trainer(tiny_config(*steps, name="split"), command="test", resume="none")
    first.train(stop_at=2)
    assert first.step == 2 and latest_checkpoint(first.out).name == "step-00000002"
    sources = [first.sampler.source_at(k) for k in range(3)]
    assert "captions" in sources  # the image path and the projector are exercised
    del first
    second = Trainer(tiny_config(*steps, name="split"), command="test")  # resume="auto"
    assert second.step == 2
    second.train()
    assert second.step == 3
    a, b = _params(whole), _params(second)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    assert whole.optimizer.state_dict()["state"].keys() == second.optimizer.state_dict()["state"].keys()
    assert whole.scheduler.last_epoch == second.scheduler.last_epoch == 3


def test_nan_guard_skips_poisoned_step(tiny_config, caplog):
    tr = Trainer(tiny_config("run.steps=3"), command="test", resume="none")
    tr.train(stop_at=1)
    before = {k: v.clone() for k, v in _params(tr).items()}
    real = tr.encoder.encode
    calls = {"n": 0}

    def poisoned(sides):
        calls["n"] += 1
        out = real(sides)
        return out * float("nan") if calls["n"] == 1 else out

    tr.encoder.encode = poisoned
    with caplog.at_level("WARNING"):
        rec = tr.train_step()
    assert rec["skipped"] and math.isnan(rec["loss"])
    assert tr.skipped == [{"step": 1, "source": rec["source"], "reason": "loss is nan"}]
    assert "update skipped" in caplog.text
    after = _params(tr)
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=0, rtol=0)
    tr.train()  # training continues normally
    assert tr.step == 3 and len(tr.skipped) == 1
    assert any(not torch.equal(before[k], _params(tr)[k]) for k in before)


def test_export_round_trip(tiny_config, tmp_path):
    tr = Trainer(tiny_config("run.steps=4"), command="unirep-train --config configs/tiny.yaml", resume="none")
    tr.train()
    out = tr.export(tmp_path / "exported")
    loaded = UniRep.from_pretrained(out, device="cpu")
    texts = ["a red photo .", "the blue picture with a dog", "hello world"]
    images = [make_image(i) for i in range(3)]
    for kw in ({"text": texts}, {"images": images}, {"text": texts, "images": images}):
        np.testing.assert_allclose(loaded.encode(**kw, task="query"), tr.model.encode(**kw, task="query"), atol=1e-6)
    cal = json.loads((out / "config.json").read_text())["calibration"]
    assert loaded.calibrator.fitted and set(cal) == {"8", "16", "32"}
    assert loaded.calibrator.params == tr.model.calibrator.params
    assert all(a > 0 for a, _ in loaded.calibrator.params.values())
    meta = loaded.config.meta
    assert meta["training"]["command"] == "unirep-train --config configs/tiny.yaml" and meta["training"]["step"] == 4
    assert [s["name"] for s in meta["data_split"]["train"]] == ["captions", "sts", "pairs"]
    assert meta["calibration"]["half"] == "fit" and meta["calibration"]["pairs"]
    # a calibrated score is a probability and grows with similarity
    v = loaded.encode(text=texts, task="query")
    s = loaded.score(v, v)
    assert ((0 <= s) & (s <= 1)).all() and s[0, 0] > s[0, 2]


def test_cli_trains_and_exports(tiny_config, tmp_path, capsys):
    cfg = tiny_config()
    sets = [f"run.output_dir={tmp_path / 'cli'}", f"model.name_or_path={cfg.model.name_or_path}",
            f"data.root={cfg.data.root}", f"cache.dir={cfg.cache.dir}", "run.steps=2"]
    argv = ["-q", "--config", cfg.source_path, "--no-progress"] + [x for s in sets for x in ("--set", s)]
    assert train_main(argv) == 0
    assert (tmp_path / "cli" / "export" / "config.json").is_file()
    assert "exported" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli" / "export" / "config.json").read_text())["meta"]
    assert meta["training"]["command"].startswith("unirep-train -q --config")
    # bad config: one clear line
    assert train_main(["-q", "--config", cfg.source_path, "--set", "run.steps=0"]) == 2
    # the `unirep train` subcommand
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "x.yaml", "--set", "run.steps=5", "--stop-at", "3"])
    assert args.command == "train" and args.overrides == ["run.steps=5"] and args.stop_at == 3 and callable(args.func)


def test_text_lora_on_fusion_trains_without_text_cache(tiny_config):
    pytest.importorskip("peft")
    cfg = tiny_config("run.steps=2", "model.text_lora={layers: [1], r: 2, alpha: 4}", "data.dev=[]",
                      "data.train=[{name: sts, reader: stsb, split: train}]", "optim.lr.adapters=0.01")
    tr = Trainer(cfg, command="test", resume="none")
    assert tr.text_cache is None  # the text path is trainable now: no frozen text features
    assert "adapters" in tr.groups
    names = [n for n in tr.model.trained_state_dict() if "lora" in n]
    assert names and all(".layer.1." in n for n in names)
    tr.train()
    assert any(p.detach().abs().sum() > 0 for n, p in tr.model.named_parameters() if "lora_B" in n)
    assert tr.model.config.backbone["text"]["lora"] == {"layers": [1], "r": 2, "alpha": 4}


def test_stage_two_freezes_the_projector_and_trains_the_summary(tiny_config, tmp_path):
    """configs/mini-images.yaml's recipe: add the whole-image path to a trained model, keep the
    projector as loaded, export both."""
    summary = "model.overrides={backbone: {vision: {dropout: 0.3, summary: {hidden: 16}}}}"
    cfg = tiny_config(CAPTIONS_ONLY, "run.steps=4", "model.freeze=[projector]", summary, "data.dev=[]",
                      "optim.lr.image_summary=0.01", name="stage2")
    tr = Trainer(cfg, command="test", resume="none")
    before = {k: v.clone() for k, v in tr.model.trained_state_dict().items()}
    assert any(k.startswith("backbone.image_summary.") for k in before)
    tr.train()
    after = tr.model.trained_state_dict()
    for k in before:
        if k.startswith("backbone.projector."):
            assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.image_summary."))
    assert not tr.model.backbone.projector.training and not tr.model.backbone.image_summary.training
    out = tr.export(tmp_path / "export")
    loaded = UniRep.from_pretrained(out, device="cpu")
    img = [make_image(11)]
    np.testing.assert_allclose(loaded.encode(images=img), tr.model.encode(images=img), atol=1e-5)

    with pytest.raises(ValueError, match="not trained modules"):
        Trainer(tiny_config("model.freeze=[vision]", name="bad"), command="test", resume="none")
