"""The YOLOv1 network (Redmon et al., arXiv 1506.02640, Figure 3) and Fast YOLO, built from a `ModelConfig`.

Input (N, 3, H, W) float RGB in [0, 1] (no normalisation inside); output (N, S, S, 5B + C) with, per cell, B
predictors [x, y, sqrt_w, sqrt_h, conf] then C class scores, all linear (see `yolov1.encode` for the layout).
"""

from __future__ import annotations

import logging
import math

from torch import Tensor, nn

from yolov1.config import ModelConfig

__all__ = ["YOLOv1", "build_model", "count_parameters"]

logger = logging.getLogger(__name__)

# Layer specs: ("conv", kernel, out_channels, stride) or ("pool",). Every conv has padding kernel // 2 (Darknet's
# pad=1) and is followed by leaky ReLU 0.1; every pool is a 2x2 max-pool with stride 2.
_YOLOV1 = (
    # Figure 3 of the paper == Darknet's yolov1.cfg convolutional part: 24 conv layers, total stride 64.
    [("conv", 7, 64, 2), ("pool",)]
    + [("conv", 3, 192, 1), ("pool",)]
    + [("conv", 1, 128, 1), ("conv", 3, 256, 1), ("conv", 1, 256, 1), ("conv", 3, 512, 1), ("pool",)]
    + [("conv", 1, 256, 1), ("conv", 3, 512, 1)] * 4
    + [("conv", 1, 512, 1), ("conv", 3, 1024, 1), ("pool",)]
    + [("conv", 1, 512, 1), ("conv", 3, 1024, 1)] * 2
    + [("conv", 3, 1024, 1), ("conv", 3, 1024, 2)]
    + [("conv", 3, 1024, 1), ("conv", 3, 1024, 1)]
)
# Fast YOLO ("9 convolutional layers instead of 24 and fewer filters", section 2): Darknet's original
# yolo-tiny.cfg as ported layer by layer in gliese581gg/YOLO_tensorflow (YOLO_tiny_tf.py): six 3x3 convs of
# 16..512 filters each followed by a 2x2/2 max-pool, then three 3x3x1024 convs; total stride 64. Its FC head
# starts with a 256-wide leaky FC layer before the 4096-wide one (`_FAST_FC_BOTTLENECK`).
# (Darknet's later yolov1-tiny.cfg has 8 convs: ...512, 1024, 256 and no hidden FC; the paper says 9.)
_FAST = [
    spec for c in (16, 32, 64, 128, 256, 512) for spec in (("conv", 3, c, 1), ("pool",))
] + [("conv", 3, 1024, 1)] * 3
_FAST_FC_BOTTLENECK = 256
_PAPER_STRIDE = 64
_LAST_LAYER_STD = 0.01  # times 1/sqrt(fan_in): initial outputs ~1e-2 x the feature scale, confidences near 0


class YOLOv1(nn.Module):
    """The YOLOv1 / Fast YOLO detector: a Darknet conv backbone and an FC (paper) or 1x1-conv head.

    ``forward``: (N, 3, H, W) float RGB in [0, 1], H = W = ``cfg.input_size`` -> (N, S, S, 5B + C), per cell
    [x, y, sqrt_w, sqrt_h, conf] * B (x, y cell-relative; sqrt_w, sqrt_h of image-normalised sizes) then C class
    scores; no activation on the outputs (the paper's linear last layer).

    The paper's stride is 64 (448 px -> S = 7). When ``input_size / grid_size`` is 32, 16 or 8, the LAST one,
    two or three downsampling steps of the backbone (the 3x3/2 conv, then max-pools, from the end) run with
    stride 1 instead, so the final feature map is always S x S. A stride-1 max-pool keeps Darknet's semantics
    (2x2 window, output the same size, the window overhanging the right/bottom edge).

    Head ``"fc"`` (paper): flatten the (1024, S, S) map -> FC ``head_hidden`` -> leaky 0.1 -> dropout -> FC
    S*S*(5B + C) -> reshape. Fast YOLO's FC head has an extra 256-wide leaky FC first (as yolo-tiny.cfg).
    Head ``"conv"`` is NOT the paper: one 1x1 conv from the S x S feature map to 5B + C channels (no hidden
    layer, no dropout, ``head_hidden`` unused); far fewer weights, so it trains much faster on a CPU.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        stride, rem = divmod(cfg.input_size, cfg.grid_size)
        if rem or stride not in (8, 16, 32, 64):
            raise ValueError(
                f"model.input_size: input_size / grid_size must be 8, 16, 32 or 64, "
                f"got {cfg.input_size} / {cfg.grid_size}"
            )
        if cfg.variant not in ("yolov1", "fast"):
            raise ValueError(f"model.variant: expected 'yolov1' or 'fast', got {cfg.variant!r}")
        if cfg.head not in ("fc", "conv"):
            raise ValueError(f"model.head: expected 'fc' or 'conv', got {cfg.head!r}")
        self.cfg = cfg
        self.grid_size = cfg.grid_size
        self.out_channels = 5 * cfg.boxes_per_cell + cfg.num_classes
        specs = _YOLOV1 if cfg.variant == "yolov1" else _FAST
        self.backbone, channels = _make_backbone(
            specs, cfg.width_multiplier, cfg.batch_norm, n_stride1=int(math.log2(_PAPER_STRIDE // stride))
        )
        self.head = _make_head(cfg, channels, self.out_channels)
        _init_weights(self)

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)  # (N, channels, S, S)
        n, s = images.shape[0], self.grid_size
        if self.cfg.head == "conv":
            return self.head(features).permute(0, 2, 3, 1).contiguous()  # (N, S, S, 5B + C)
        return self.head(features).reshape(n, s, s, self.out_channels)


def build_model(cfg: ModelConfig) -> YOLOv1:
    """The network `cfg` describes (variant, input size, S, B, C, BN, width, head), freshly initialised."""
    model = YOLOv1(cfg)
    logger.info("built %s (%s head), %d parameters", cfg.variant, cfg.head, count_parameters(model))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _scaled(channels: int, multiplier: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 8, at least 8."""
    return max(8, int(round(channels * multiplier / 8)) * 8)


def _make_backbone(
    specs: list[tuple], multiplier: float, batch_norm: bool, n_stride1: int
) -> tuple[nn.Sequential, int]:
    downsampling = [i for i, spec in enumerate(specs) if spec[0] == "pool" or spec[3] == 2]
    stride1 = set(downsampling[len(downsampling) - n_stride1:])
    layers: list[nn.Module] = []
    in_ch = 3
    for i, spec in enumerate(specs):
        if spec[0] == "pool":
            layers.append(_MaxPoolStride1() if i in stride1 else nn.MaxPool2d(2, 2))
            continue
        _, k, out, s = spec
        out = _scaled(out, multiplier)
        layers.append(nn.Conv2d(in_ch, out, k, 1 if i in stride1 else s, k // 2, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.LeakyReLU(0.1, inplace=True))
        in_ch = out
    return nn.Sequential(*layers), in_ch


def _make_head(cfg: ModelConfig, channels: int, out_channels: int) -> nn.Sequential:
    s = cfg.grid_size
    if cfg.head == "conv":
        return nn.Sequential(nn.Conv2d(channels, out_channels, 1))
    layers: list[nn.Module] = [nn.Flatten(1)]  # reshape, not view: fine for channels_last maps
    in_features = channels * s * s
    if cfg.variant == "fast":
        layers += [nn.Linear(in_features, _FAST_FC_BOTTLENECK), nn.LeakyReLU(0.1, inplace=True)]
        in_features = _FAST_FC_BOTTLENECK
    layers += [
        nn.Linear(in_features, cfg.head_hidden),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.head_hidden, s * s * out_channels),
    ]
    return nn.Sequential(*layers)


class _MaxPoolStride1(nn.Module):
    """Darknet's 2x2 max-pool with stride 1: same output size, window [x, x+1] clipped at the right/bottom edge."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, stride=1, padding=1)  # -inf padding, (H + 1, W + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x)[..., 1:, 1:]  # drop the window overhanging the top/left edge: (H, W)


def _init_weights(model: YOLOv1) -> None:
    """Kaiming (fan-in, leaky 0.1) for every layer but the last, which starts small so outputs start near 0."""
    last = model.head[-1]
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if m is last:
                fan_in = m.weight[0].numel()
                nn.init.normal_(m.weight, std=_LAST_LAYER_STD / math.sqrt(fan_in))
            else:
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
