"""Building the model to train: base config + overrides, freezing, parameter groups, text LoRA."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unirep_core import UniRep
from unirep_core.config import CONFIG_NAME
from unirep_core.registry import registered_config_path, shipped_model_dir

from .config import ModelSection, deep_merge

__all__ = ["build_model", "trainable_groups", "add_text_lora", "base_config"]

logger = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"


def _source_dir(name_or_path: str) -> tuple[dict[str, Any], Path | None]:
    """(config dict, directory with trained weights or None) of a name or saved directory."""
    shipped = shipped_model_dir(name_or_path)
    if shipped is not None:
        return json.loads((shipped / CONFIG_NAME).read_text("utf-8")), shipped
    registered = registered_config_path(name_or_path)
    if registered is not None:
        return json.loads(registered.read_text("utf-8")), None
    path = Path(name_or_path).expanduser()
    if (path / CONFIG_NAME).is_file():
        return json.loads((path / CONFIG_NAME).read_text("utf-8")), path
    raise ValueError(f"model.name_or_path {name_or_path!r} is neither a registered model nor a saved directory")


def base_config(section: ModelSection) -> tuple[dict[str, Any], Path | None]:
    if section.config is not None:
        cfg = section.config
        if isinstance(cfg, str):
            cfg = json.loads(Path(cfg).read_text("utf-8"))
        weights_dir = None
    elif not section.load_weights and registered_config_path(section.name_or_path) is not None:
        # Training from scratch: the registered architecture, not the config a shipped
        # (earlier) version of the model was saved with.
        cfg = json.loads(registered_config_path(section.name_or_path).read_text("utf-8"))  # type: ignore[union-attr]
        weights_dir = None
    else:
        cfg, weights_dir = _source_dir(section.name_or_path)
    cfg = deep_merge(cfg, section.overrides or {})
    cfg["calibration"] = None  # refitted at export
    return cfg, weights_dir if section.load_weights else None


def build_model(section: ModelSection, device: torch.device | str) -> UniRep:
    """The model to train, all base weights frozen, trained parts (head, ``trained_modules``,
    optional text LoRA) requiring gradients, in eval mode (dropout off: the frozen backbone's
    features must be deterministic for the feature caches to be exact)."""
    cfg, weights_dir = base_config(section)
    model = UniRep.from_config(cfg, device="cpu")
    if weights_dir is not None and (weights_dir / WEIGHTS_NAME).is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights_dir / WEIGHTS_NAME))
        own = model.trained_state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(state) - set(usable))
        if skipped:
            logger.warning("not loading %d tensors of %s (shape/config changed): %s", len(skipped), weights_dir,
                           skipped[:5])
        model.load_state_dict(usable, strict=False)
        logger.info("loaded %d trained tensors from %s", len(usable), weights_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    if section.text_lora:
        add_text_lora(model, section.text_lora)
    for p in model.head.parameters():
        p.requires_grad_(True)
    unknown = sorted(set(section.freeze) - set(model.backbone.trained_modules) - {"head"})
    if unknown:
        raise ValueError(f"model.freeze names {unknown}, which are not trained modules of this model "
                         f"({['head', *model.backbone.trained_modules]})")
    for name in model.backbone.trained_modules:
        for p in model.backbone.get_submodule(name).parameters():
            p.requires_grad_(name not in section.freeze)
    if "head" in section.freeze:
        for p in model.head.parameters():
            p.requires_grad_(False)
    # Trained parameters live in float32 (master weights) even when the base model runs in
    # bf16/fp16: Adam updates of half-precision weights underflow. peft casts the LoRA input to
    # the adapter's dtype and the output back, so a bf16 backbone keeps running in bf16.
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
    if section.gradient_checkpointing:
        inner = getattr(model.backbone, "model", None)
        if inner is None or not hasattr(inner, "gradient_checkpointing_enable"):
            raise ValueError("model.gradient_checkpointing is supported for hf_vlm backbones only")
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device).eval()


def add_text_lora(model: UniRep, spec: dict[str, Any]) -> None:
    """LoRA adapters (peft) on the query/value projections of the top text-encoder layers of a
    fusion backbone; the adapters join ``backbone.trained_modules`` and the spec is written to
    ``backbone.text.lora`` in the model config (loading it back needs core support, see the
    training README)."""
    from unirep_core.backbones.fusion import FusionBackbone

    bb = model.backbone
    if not isinstance(bb, FusionBackbone):
        raise ValueError("model.text_lora applies to fusion backbones; hf_vlm takes backbone.lora in the model config")
    try:
        import peft
    except ImportError as e:  # pragma: no cover
        raise ImportError('text LoRA needs peft: pip install "unirep[train]"') from e
    layers = [int(i) for i in spec.get("layers", [bb.num_layers - 1])]
    targets = spec.get("targets", ["query", "value"])
    pattern = rf"encoder\.layer\.({'|'.join(map(str, layers))})\.attention\.self\.({'|'.join(targets)})$"
    cfg = peft.LoraConfig(r=int(spec.get("r", 8)), lora_alpha=int(spec.get("alpha", 16)),
                          lora_dropout=float(spec.get("dropout", 0.0)), target_modules=pattern, bias="none")
    peft.inject_adapter_in_model(cfg, bb.text)
    names = [f"text.{n}" for n, _ in bb.text.named_modules() if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]
    if not names:
        raise ValueError(f"model.text_lora matched no layer (layers {layers})")
    bb.trained_modules = tuple(bb.trained_modules) + tuple(names)
    bb.config["trained_modules"] = list(bb.trained_modules)
    model.config.backbone.setdefault("text", {})["lora"] = dict(spec)
    model.config.backbone["trained_modules"] = list(bb.trained_modules)


def group_of(module_name: str) -> str:
    return "adapters" if "lora" in module_name else module_name.split(".")[0]


def trainable_groups(model: UniRep, objective: nn.Module | None = None) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Named trainable parameters by component: ``head``, each backbone trained module
    (``projector``...), ``adapters`` (all LoRA), ``loss`` (temperature, calibration)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"head": list(model.head.named_parameters(prefix="head"))}
    for name in model.backbone.trained_modules:
        mod = model.backbone.get_submodule(name)
        groups.setdefault(group_of(name), []).extend(
            (f"backbone.{name}.{n}", p) for n, p in mod.named_parameters() if p.requires_grad)
    if objective is not None:
        groups["loss"] = [(f"loss.{n}", p) for n, p in objective.named_parameters() if p.requires_grad]
    return {g: ps for g, ps in groups.items() if ps}
