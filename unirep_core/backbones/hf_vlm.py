"""Hugging Face vision-language decoders (chat processor + causal LM) as UniRep backbones.

Supported families (``model_type`` of the checkpoint's ``config.json``):

* ``qwen2_vl``   - Qwen2-VL (e.g. ``Qwen/Qwen2-VL-2B-Instruct``, GME-Qwen2-VL, VLM2Vec-Qwen2VL)
* ``qwen2_5_vl`` - Qwen2.5-VL
* ``qwen3_vl``   - Qwen3-VL (dense)

Other families (SmolVLM, Idefics3, LLaVA, ...) raise ``NotImplementedError``: their processors
take nested per-sample image lists, split images into tiles and use other chat templates,
which this class does not handle yet.

How an item becomes a sequence
------------------------------
Each item is one user turn of a chat: every image first (one ``<|vision_start|><|image_pad|>
<|vision_end|>`` block each; the processor expands ``<|image_pad|>`` to the image's merged
patch count), then the text (task prefix already applied). The prompt is rendered with the
processor's own chat template with ``add_generation_prompt=True`` and, by default, the
``<|endoftext|>`` token is appended after ``<|im_start|>assistant\\n``::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>TEXT<|im_end|>\\n
    <|im_start|>assistant\\n<|endoftext|>

This is the GME (gme-Qwen2-VL) recipe: the appended token is the "embedding slot" that has
attended to the whole prompt, so ``last`` pooling reads a state that saw every image and
every word, and it is the same token for every input. ``embed_token`` (config) changes or
(``null``) drops it. The sequences are padded on the LEFT (``padding_side = "left"``), so the
embedding slot is always at index ``-1``; the returned mask marks real tokens with 1.

Images are preprocessed with the PIL backend of the image processor by default
(``image_backend: "pil"``): it needs no torchvision and gives the same pixels on every
machine, so embeddings computed on a GPU box with torchvision match those computed on CPU.
Transformers 5 cannot build the Qwen-VL processors without torchvision (the video processor
is torchvision-only), so the processor is assembled here without a video processor when
torchvision is missing (videos are not supported by UniRep anyway).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from PIL import Image

from .base import Backbone, BackboneOutput, Item, ItemError

__all__ = ["HFVLMBackbone", "SUPPORTED_MODEL_TYPES"]

logger = logging.getLogger(__name__)

#: model_type -> (processor class, base model class) in ``transformers``
SUPPORTED_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLModel"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2_5_VLModel"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLModel"),
}

_DEFAULTS: dict[str, Any] = {
    "torch_dtype": "auto",
    "attn_implementation": "sdpa",
    "min_pixels": None,  # None: the checkpoint's image processor setting
    "max_pixels": None,
    "max_length": 2048,
    "lora": None,
    "image_backend": "pil",  # "pil" | "torchvision" | None (= torchvision when installed)
    "embed_token": "<|endoftext|>",  # appended after the generation prompt; None: nothing
    "system_prompt": None,  # None: the chat template's default system turn
    "revision": None,
    "local_files_only": False,
}

_DEFAULT_LORA = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    # attention + MLP projections of the language model only (the vision tower stays frozen)
    "target_modules": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
}

_TRAIN_HINT = 'LoRA needs the "peft" package: pip install "unirep[train]"'


def _resolve_dtype(name: Any) -> Any:
    if name is None or name == "auto":
        return "auto"
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch_dtype {name!r}")
    return dtype


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


_NO_VIDEO = object()
_HUB_KEYS = ("cache_dir", "force_download", "local_files_only", "revision", "token")


def _processor_class(name: str, image_backend: str, image_kwargs: dict[str, Any]) -> type:
    """A subclass of the family's processor class that loads its image processor with the given
    backend and overrides (``min_pixels``/``max_pixels``), and that leaves the video processor
    out (``None``) when torchvision is missing: transformers 5 has only torchvision video
    processors, so the stock ``from_pretrained`` / ``AutoProcessor`` raise ImportError there."""
    import transformers
    from transformers import AutoImageProcessor, AutoVideoProcessor

    base = getattr(transformers, name)
    with_video = _torchvision_available()

    class _Processor(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _get_arguments_from_pretrained(cls, path, processor_dict=None, **kwargs):
            kwargs.pop("subfolder", None)
            args = []
            for attribute in cls.get_attributes():
                if "tokenizer" in attribute:
                    args.append(cls._load_tokenizer_from_pretrained(attribute, path, **kwargs))
                elif attribute == "image_processor":
                    args.append(AutoImageProcessor.from_pretrained(
                            path, backend=image_backend, **image_kwargs, **kwargs
                        )
                    )
                elif attribute == "video_processor":
                    args.append(AutoVideoProcessor.from_pretrained(path, **kwargs) if with_video else None)
                else:  # pragma: no cover - not used by the supported families
                    raise NotImplementedError(f"{base.__name__}: cannot load sub-processor {attribute!r}")
            return args

        @classmethod
        def _resolve_subprocessors(cls, path, processor_dict, **kwargs):
            # transformers >= 5.25 loads sub-processors here (not in _get_arguments_from_pretrained)
            # and keeps any it is handed in kwargs: hand it our image processor and, without
            # torchvision, a placeholder video processor that becomes None below.
            hub = {k: v for k, v in kwargs.items() if k in _HUB_KEYS}
            kwargs["image_processor"] = AutoImageProcessor.from_pretrained(
                path, backend=image_backend, **image_kwargs, **hub
            )
            if not with_video:
                kwargs["video_processor"] = _NO_VIDEO
            processor_dict, rest = super()._resolve_subprocessors(path, processor_dict, **kwargs)
            if processor_dict.get("video_processor") is _NO_VIDEO:
                processor_dict["video_processor"] = None
            return processor_dict, rest

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and "video" in argument_name:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    _Processor.__name__ = _Processor.__qualname__ = base.__name__
    return _Processor


def _read_model_type(source: str, **hub_kwargs: Any) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, **hub_kwargs).model_type


class HFVLMBackbone(Backbone):
    """A Hugging Face VLM (Qwen2-VL family) read as a token encoder; see the module docstring."""

    padding_side = "left"

    def __init__(self, config: dict[str, Any], processor: Any, model: torch.nn.Module) -> None:
        super().__init__()
        self.config = dict(config)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.model = model
        text_config = model.config.get_text_config()
        self.hidden_size = int(text_config.hidden_size)
        self.num_layers = int(text_config.num_hidden_layers)
        self.max_length = self.config.get("max_length") or None
        self.embed_token = self.config.get("embed_token", _DEFAULTS["embed_token"]) or ""
        self.system_prompt = self.config.get("system_prompt")
        self.tokenizer.padding_side = self.padding_side
        if self.tokenizer.pad_token is None:  # pragma: no cover - all Qwen tokenizers have one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.trained_modules = ()
        if self.config.get("lora"):
            self.trained_modules = self._add_lora(self.config["lora"])
        # template overhead of an empty item, for cost()
        self._overhead = self._count_tokens(self._render(Item(text="", images=[])))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HFVLMBackbone":
        config = {**_DEFAULTS, **dict(config)}
        config.setdefault("kind", "hf_vlm")
        source = str(config["source"])
        hub_kwargs: dict[str, Any] = {"local_files_only": bool(config.get("local_files_only"))}
        if config.get("revision"):
            hub_kwargs["revision"] = config["revision"]

        model_type = _read_model_type(source, **hub_kwargs)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise NotImplementedError(
                f"hf_vlm backbone: model_type {model_type!r} of {source!r} is not supported yet; "
                f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))} (Qwen2-VL, Qwen2.5-VL, Qwen3-VL). "
                "SmolVLM/Idefics3 and other VLMs are not implemented."
            )
        processor_name, model_name = SUPPORTED_MODEL_TYPES[model_type]

        image_backend = config.get("image_backend")
        if image_backend is None:
            image_backend = "torchvision" if _torchvision_available() else "pil"
        # The Qwen image processors' __init__ turns min_pixels / max_pixels into their pixel
        # budget size={shortest_edge, longest_edge}; passing them per call is deprecated.
        image_kwargs = {k: int(config[k]) for k in ("min_pixels", "max_pixels") if config.get(k)}
        processor = _processor_class(processor_name, image_backend, image_kwargs).from_pretrained(
            source, **hub_kwargs
        )

        import transformers
        from transformers.utils import logging as hf_logging

        model_cls = getattr(transformers, model_name)
        # The base model (no LM head): checkpoints of *ForConditionalGeneration load into it,
        # transformers drops the "model." prefix and lm_head and renames legacy keys.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # library output stays quiet (as the fusion backbone)
        try:
            model = model_cls.from_pretrained(
                source,
                dtype=_resolve_dtype(config.get("torch_dtype")),
                attn_implementation=config.get("attn_implementation") or None,
                **hub_kwargs,
            )
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        model.eval()
        return cls(config, processor, model)

    def _add_lora(self, lora: dict[str, Any] | bool) -> tuple[str, ...]:
        try:
            import peft
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(_TRAIN_HINT) from exc
        spec = {**_DEFAULT_LORA, **(lora if isinstance(lora, dict) else {})}
        lora_config = peft.LoraConfig(
            r=int(spec["r"]),
            lora_alpha=int(spec["alpha"]),
            lora_dropout=float(spec["dropout"]),
            target_modules=spec["target_modules"],
            bias="none",
        )
        for p in self.model.parameters():
            p.requires_grad_(False)
        # in place: the module tree stays model.language_model.layers.N..., only the targeted
        # Linear layers gain lora_A / lora_B children
        peft.inject_adapter_in_model(lora_config, self.model)
        names = []
        for name, module in self.named_modules():
            if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
                names.append(name)
                for p in module.parameters():
                    p.requires_grad_(True)
        if not names:
            raise ValueError(f"lora.target_modules {spec['target_modules']!r} matched no module")
        return tuple(names)

    # ------------------------------------------------------------------ prompts
    def _render(self, item: Item) -> str:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in item.images]
        if item.text or not item.images:
            content.append({"type": "text", "text": item.text or ""})
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": content})
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt + self.embed_token

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def _image_tokens(self, image: Image.Image | None) -> int:
        """Number of LM tokens (``<|image_pad|>`` count) of one image: exact from its size (no
        pixel is processed), or, for ``None`` (``cost`` on undecoded items), the count of an
        image at the ``max_pixels`` budget (what photos usually hit)."""
        ip = self.image_processor
        merge = int(getattr(ip, "merge_size", 2))
        if isinstance(image, Image.Image):
            width, height = image.size
            if hasattr(ip, "get_number_of_image_patches"):
                return int(ip.get_number_of_image_patches(height, width, {})) // (merge * merge)
            pixels = min(max(height * width, self._min_pixels()), self._max_pixels())  # pragma: no cover
        else:
            pixels = self._max_pixels()
        patch = int(getattr(ip, "patch_size", 14))
        return max(1, pixels // (patch * merge) ** 2)

    def _min_pixels(self) -> int:
        size = self.image_processor.size
        return int(size.get("shortest_edge") or 56 * 56) if hasattr(size, "get") else 56 * 56

    def _max_pixels(self) -> int:
        size = self.image_processor.size
        return int(size.get("longest_edge") or 28 * 28 * 1280) if hasattr(size, "get") else 28 * 28 * 1280

    def _fit(self, position: int, item: Item) -> str:
        """Render the item, cutting the END of its text so the sequence fits ``max_length``.

        Image tokens are never cut (a partial image is not a valid input): an item whose
        images alone do not fit raises :class:`ItemError`.
        """
        prompt = self._render(item)
        if not self.max_length:
            return prompt
        extra = sum(self._image_tokens(im) - 1 for im in item.images)  # each pad expands to n tokens
        text = item.text or ""
        for _ in range(4):  # word-piece boundaries can shift by a token; re-check
            excess = self._count_tokens(prompt) + extra - self.max_length
            if excess <= 0 or not text:
                break
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            keep = max(0, len(enc["input_ids"]) - excess)
            text = text[: enc["offset_mapping"][keep - 1][1]] if keep > 0 else ""
            prompt = self._render(Item(text=text, images=item.images))
        length = self._count_tokens(prompt) + extra
        if length > self.max_length:
            raise ItemError(
                position,
                f"{len(item.images)} images need {length} tokens with the prompt, more than this "
                f"model's sequence length of {self.max_length} (lower max_pixels or raise max_length)",
            )
        return prompt

    # ------------------------------------------------------------------ Backbone API
    def prepare(self, items: Sequence[Item]) -> dict[str, Any]:
        if not items:
            raise ValueError("prepare() needs at least one item")
        texts = [self._fit(pos, item) for pos, item in enumerate(items)]
        images = [im if im.mode == "RGB" else im.convert("RGB") for item in items for im in item.images]
        batch = self.processor(
            text=texts,
            images=images or None,  # flat list, in prompt order: the processor splits by placeholders
            padding=True,
            padding_side=self.padding_side,
            return_tensors="pt",
        )
        out = {k: v for k, v in dict(batch).items() if v is not None}
        if "pixel_values" not in out:
            # text-only batch: positions count real tokens only (the model would otherwise number
            # left padding too; harmless under RoPE but not bit-identical to the unpadded item)
            mask = out["attention_mask"].long()
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out["position_ids"] = pos.unsqueeze(0).expand(3, -1, -1).contiguous()
        return out

    def encode_tokens(self, batch: dict[str, Any], *, output_hidden_states: bool = False) -> BackboneOutput:
        inputs = dict(batch)
        mask = inputs["attention_mask"]
        outputs = self.model(
            **inputs,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        states = tuple(outputs.hidden_states) if output_hidden_states and outputs.hidden_states is not None else None
        return BackboneOutput(last_hidden_state=hidden, attention_mask=mask, hidden_states=states)

    def cost(self, item: Item) -> int:
        n = self._overhead
        if item.text:
            n += len(self.tokenizer(item.text, add_special_tokens=False)["input_ids"])
        for im in item.images:
            n += self._image_tokens(im) + 2  # vision_start / vision_end
        return min(n, self.max_length) if self.max_length else n

    def export_config(self) -> dict[str, Any]:
        return dict(self.config)
