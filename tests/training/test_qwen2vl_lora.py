"""The same trainer trains an hf_vlm (tiny random Qwen2-VL) backbone through LoRA adapters."""
import json

import numpy as np
import pytest
import torch

from tests.core.tiny_qwen2vl import build_tiny_qwen2vl
from tests.tiny_models import make_image
from unirep_core import UniRep
from unirep_training.trainer import Trainer

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen_train"))


def _model_config(source):
    return {
        "name": "tiny-qwen2vl-lora",
        "backbone": {"kind": "hf_vlm", "source": str(source), "torch_dtype": "float32", "max_length": 256,
                     "min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 4,
                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "pooling": {"mode": "last"},
        "prefixes": {"query": "find the image: ", "document": "describe the image: ", "text_pair": "similar sentence: ",
                     "instr": "given instruction: ", "ocr": "read the text: ", "vqa_single": "answer: ",
                     "vqa_multi": "answer: "},
        "head": {"input_dim": 64, "dims": [16, 32, 64], "init": "identity"},
    }


def test_tiny_qwen2vl_lora_trains_and_exports(tiny_config, qwen_dir, tmp_path):
    cfg = tiny_config(f"model.config={json.dumps(_model_config(qwen_dir))}", "run.steps=3",
                      "data.batch_size=3", "optim.lr.adapters=0.01", "optim.lr.head=0.01",
                      "data.dev=[{name: sts_dev, reader: stsb, split: dev}]")
    tr = Trainer(cfg, command="test", resume="none")
    assert tr.image_cache is None and tr.text_cache is None  # caches are a fusion-only shortcut
    assert set(tr.groups) == {"head", "adapters", "loss"}
    lora_b = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(not p.any() for p in lora_b.values())  # LoRA starts as a no-op
    frozen = {n: p.detach().clone() for n, p in tr.model.backbone.named_parameters() if "lora" not in n}
    tr.train()
    assert not tr.skipped and tr.step == 3
    changed = [n for n, p in tr.model.named_parameters() if "lora_B" in n and p.detach().abs().sum() > 0]
    assert changed, "no LoRA weight was updated"
    for n, p in tr.model.backbone.named_parameters():
        if "lora" not in n:
            assert torch.equal(p.detach(), frozen[n]), n  # base weights stay frozen
    out = tr.export(tmp_path / "qwen_export")
    loaded = UniRep.from_pretrained(out, device="cpu")
    kw = {"text": ["a red photo", "the cat"], "images": [make_image(1), make_image(2)]}
    np.testing.assert_allclose(loaded.encode(**kw), tr.model.encode(**kw), atol=1e-5)
    assert loaded.calibrator.fitted


def test_bf16_backbone_keeps_fp32_trainable_weights(tiny_config, qwen_dir):
    mc = _model_config(qwen_dir)
    mc["backbone"]["torch_dtype"] = "bfloat16"
    cfg = tiny_config(f"model.config={json.dumps(mc)}", "run.steps=2", "data.batch_size=2", "data.dev=[]",
                      "data.train=[{name: sts, reader: stsb, split: train}]")
    tr = Trainer(cfg, command="test", resume="none")
    trained = [p for ps in tr.groups.values() for _, p in ps]
    assert all(p.dtype == torch.float32 for p in trained)
    assert {p.dtype for n, p in tr.model.backbone.named_parameters() if "lora" not in n} == {torch.bfloat16}
    tr.train()
    assert not tr.skipped and tr.step == 2
