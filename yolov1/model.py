"""The YOLOv1 network (Redmon et al., arXiv 1506.02640, Figure 3), Fast YOLO and ResNet-backbone variants.

Input (N, 3, H, W) float RGB in [0, 1]; output (N, S, S, 5B + C) with, per cell, B predictors
[x, y, sqrt_w, sqrt_h, conf] then C class scores, all linear (see `yolov1.encode` for the layout). Every model has
``.backbone`` (the part pretraining covers: Darknet's first 20 conv layers or a ResNet's conv stages) and ``.head``
(what the paper adds for detection, section 2.2: four conv layers, then the FC or 1x1-conv output layers).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from yolov1.backbones import check_pretrained_source, load_pretrained, resnet_features
from yolov1.config import ModelConfig

__all__ = ["YOLOv1", "build_backbone", "build_model", "check_pretrained", "count_parameters"]

logger = logging.getLogger(__name__)

# Layer specs: ("conv", kernel, out_channels, stride) or ("pool",). Every conv has padding kernel // 2 (Darknet's
# pad=1) and is followed by leaky ReLU 0.1; every pool is a 2x2 max-pool with stride 2.
# The 4 conv layers the paper adds for detection (the last 4 of Figure 3); the head of every backbone starts so.
_DETECTION_CONVS = [("conv", 3, 1024, 1), ("conv", 3, 1024, 2), ("conv", 3, 1024, 1), ("conv", 3, 1024, 1)]
_YOLOV1 = (
    # Figure 3 of the paper == Darknet's yolov1.cfg convolutional part: 24 conv layers, total stride 64. The first
    # 20 (stride 32) are the ImageNet-pretrained backbone; the last 4 are `_DETECTION_CONVS`, in the head.
    [("conv", 7, 64, 2), ("pool",)]
    + [("conv", 3, 192, 1), ("pool",)]
    + [("conv", 1, 128, 1), ("conv", 3, 256, 1), ("conv", 1, 256, 1), ("conv", 3, 512, 1), ("pool",)]
    + [("conv", 1, 256, 1), ("conv", 3, 512, 1)] * 4
    + [("conv", 1, 512, 1), ("conv", 3, 1024, 1), ("pool",)]
    + [("conv", 1, 512, 1), ("conv", 3, 1024, 1)] * 2
    + _DETECTION_CONVS
)
# Fast YOLO ("9 convolutional layers instead of 24 and fewer filters", section 2): Darknet's original
# yolo-tiny.cfg as ported layer by layer in gliese581gg/YOLO_tensorflow (YOLO_tiny_tf.py): six 3x3 convs of
# 16..512 filters each followed by a 2x2/2 max-pool, then three 3x3x1024 convs; total stride 64. Its FC head
# starts with a 256-wide leaky FC layer before the 4096-wide one (`_FAST_FC_BOTTLENECK`).
# (Darknet's later yolov1-tiny.cfg has 8 convs: ...512, 1024, 256 and no hidden FC; the paper says 9.)
# Backbone: the six conv + pool pairs; the three 1024-wide convs are the head's conv layers.
_FAST = [
    spec for c in (16, 32, 64, 128, 256, 512) for spec in (("conv", 3, c, 1), ("pool",))
] + [("conv", 3, 1024, 1)] * 3
_HEAD_CONVS = {"yolov1": len(_DETECTION_CONVS), "fast": 3}  # trailing conv specs of each variant in the head
_FAST_FC_BOTTLENECK = 256
_PAPER_STRIDE = 64
_LAST_LAYER_STD = 0.01  # times 1/sqrt(fan_in): initial outputs ~1e-2 x the feature scale, confidences near 0


class YOLOv1(nn.Module):
    """The YOLOv1 / Fast YOLO detector on a Darknet or ResNet backbone, with an FC (paper) or 1x1-conv head.

    ``forward``: (N, 3, H, W) float RGB in [0, 1], H = W = ``cfg.input_size`` -> (N, S, S, 5B + C), per cell
    [x, y, sqrt_w, sqrt_h, conf] * B (x, y cell-relative; sqrt_w, sqrt_h of image-normalised sizes) then C class
    scores; no activation on the outputs (the paper's linear last layer).

    ``backbone``: Darknet's first 20 conv layers (Fast YOLO: its 6 conv + pool pairs), or a torchvision ResNet's
    conv stages (stride 32, ImageNet normalisation inside; see `yolov1.backbones.ResNetFeatures`).
    ``head``: the conv layers the detector adds (the paper's 4 for yolov1 and every ResNet, the 3 1024-wide
    ones for Fast YOLO; width scaled by ``width_multiplier``), then the output layers.

    The paper's stride is 64 (448 px -> S = 7). A ResNet reaches 64 the paper's way: the head's second conv
    (3x3, stride 2) halves its stride-32 map. When ``input_size / grid_size`` is 32, 16 or 8, the LAST one, two
    or three downsampling steps run with stride 1 instead, so the final map is always S x S: for Darknet the
    3x3/2 conv, then max-pools from the end (a stride-1 max-pool keeps Darknet's semantics: 2x2 window, same
    size, overhanging the right/bottom edge); for a ResNet the head's 3x3/2 conv, then layer4, then layer3.

    Head ``"fc"`` (paper): flatten the (1024, S, S) map -> FC ``head_hidden`` -> leaky 0.1 -> dropout -> FC
    S*S*(5B + C) -> reshape. Fast YOLO's FC head has an extra 256-wide leaky FC first (as yolo-tiny.cfg).
    Head ``"conv"`` is NOT the paper: one 1x1 conv from the S x S feature map to 5B + C channels (no hidden
    layer, no dropout, ``head_hidden`` unused); far fewer weights, so it trains much faster on a CPU.

    Weights files written before the backbone/head split (all 24 Darknet convs under ``backbone.``) still load:
    `load_state_dict` renames their keys (`_upgrade_legacy_keys`).
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
        self.backbone, head_convs, channels = _backbone_and_head_convs(cfg)
        self._moved_layers = len(head_convs) if cfg.backbone == "darknet" else 0
        self.head = nn.Sequential(*head_convs, *_output_layers(cfg, channels, self.out_channels))
        _init_weights(self.head if cfg.backbone != "darknet" else self, last=self.head[-1])
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)

    def upgrade_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """A copy of `state_dict` with pre-split Darknet key names renamed to this model's (else unchanged)."""
        upgraded = dict(state_dict)
        _upgrade_legacy_keys(self, upgraded, "")
        return upgraded

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)  # (N, channels, S', S'), S' = S or 2S (the head may halve it)
        n, s = images.shape[0], self.grid_size
        if self.cfg.head == "conv":
            return self.head(features).permute(0, 2, 3, 1).contiguous()  # (N, S, S, 5B + C)
        return self.head(features).reshape(n, s, s, self.out_channels)


def build_model(cfg: ModelConfig, *, load_pretrained_weights: bool = True) -> YOLOv1:
    """The network `cfg` describes, freshly initialised, with ``cfg.pretrained`` loaded into its backbone.

    ``load_pretrained_weights=False`` skips ``cfg.pretrained`` (for rebuilding a net whose trained weights are
    loaded next). A pretrained source that cannot be had or does not fit raises
    `yolov1.backbones.PretrainedWeightsError` here, before any training.
    """
    model = YOLOv1(cfg)
    if load_pretrained_weights:
        load_pretrained(model.backbone, cfg)
    logger.info("built %s (%s backbone, %s head), %d parameters", cfg.variant if cfg.backbone == "darknet"
                else "yolov1", cfg.backbone, cfg.head, count_parameters(model))
    return model


def check_pretrained(cfg: ModelConfig, *, probe: Callable[[str], str | None] | None = None) -> str:
    """Check ahead of training that ``cfg.pretrained`` can be had and fits `cfg`'s backbone, which is built on the
    meta device (shapes only: no memory, no initialisation). Returns what was checked; raises
    `yolov1.backbones.PretrainedWeightsError` (see `yolov1.backbones.check_pretrained_source`, `probe`)."""
    if cfg.pretrained == "none":
        return "model.pretrained: none"
    with torch.device("meta"):
        backbone, _ = build_backbone(cfg)
    return check_pretrained_source(cfg, backbone.state_dict(), probe=probe)


def build_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The backbone of `cfg`'s detector, freshly initialised (``cfg.pretrained`` not loaded), and its output
    channels: what `yolov1.pretrain` trains as a classifier and ``model.pretrained`` loads back. Its state-dict
    keys are those of ``build_model(cfg).backbone``."""
    backbone, head_convs, _ = _backbone_and_head_convs(cfg)
    if cfg.backbone == "darknet":
        _init_weights(backbone, last=None)
    return backbone, head_convs[0].in_channels


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _scaled(channels: int, multiplier: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 8, at least 8."""
    return max(8, int(round(channels * multiplier / 8)) * 8)


def _backbone_and_head_convs(cfg: ModelConfig) -> tuple[nn.Module, list[nn.Module], int]:
    """(backbone, the head's conv layers, channels out of them). The last log2(64 / stride) downsampling steps,
    counted over backbone + head convs together, run at stride 1."""
    n_stride1 = int(math.log2(_PAPER_STRIDE // (cfg.input_size // cfg.grid_size)))
    if cfg.backbone == "darknet":
        specs = _YOLOV1 if cfg.variant == "yolov1" else _FAST
        downsampling = [i for i, spec in enumerate(specs) if spec[0] == "pool" or spec[3] == 2]
        stride1 = set(downsampling[len(downsampling) - n_stride1:])
        split = len(specs) - _HEAD_CONVS[cfg.variant]
        backbone_layers, channels = _conv_layers(specs[:split], 3, cfg, stride1, offset=0)
        head_convs, channels = _conv_layers(specs[split:], channels, cfg, stride1, offset=split)
        return nn.Sequential(*backbone_layers), head_convs, channels
    # ResNet: stride 32; the head's 3x3/2 conv is the last downsampling step, then layer4's, then layer3's.
    backbone, channels = resnet_features(cfg.backbone, stride1_stages=max(0, n_stride1 - 1))
    stride1 = {1} if n_stride1 >= 1 else set()  # index 1 of _DETECTION_CONVS is the stride-2 conv
    head_convs, channels = _conv_layers(_DETECTION_CONVS, channels, cfg, stride1, offset=0)
    return backbone, head_convs, channels


def _conv_layers(specs: list[tuple], in_ch: int, cfg: ModelConfig, stride1: set[int], offset: int
                 ) -> tuple[list[nn.Module], int]:
    """Conv (+ BN) + leaky 0.1 per conv spec, max-pools per pool spec; `stride1` holds indices (+ `offset`)."""
    layers: list[nn.Module] = []
    for i, spec in enumerate(specs, start=offset):
        if spec[0] == "pool":
            layers.append(_MaxPoolStride1() if i in stride1 else nn.MaxPool2d(2, 2))
            continue
        _, k, out, s = spec
        out = _scaled(out, cfg.width_multiplier)
        layers.append(nn.Conv2d(in_ch, out, k, 1 if i in stride1 else s, k // 2, bias=not cfg.batch_norm))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.LeakyReLU(0.1, inplace=True))
        in_ch = out
    return layers, in_ch


def _output_layers(cfg: ModelConfig, channels: int, out_channels: int) -> list[nn.Module]:
    s = cfg.grid_size
    if cfg.head == "conv":
        return [nn.Conv2d(channels, out_channels, 1)]
    layers: list[nn.Module] = [nn.Flatten(1)]  # reshape, not view: fine for channels_last maps
    in_features = channels * s * s
    if cfg.variant == "fast" and cfg.backbone == "darknet":
        layers += [nn.Linear(in_features, _FAST_FC_BOTTLENECK), nn.LeakyReLU(0.1, inplace=True)]
        in_features = _FAST_FC_BOTTLENECK
    return layers + [
        nn.Linear(in_features, cfg.head_hidden),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.head_hidden, s * s * out_channels),
    ]


def _upgrade_legacy_keys(model: YOLOv1, state_dict, prefix, *_args) -> None:
    """Rename a pre-split Darknet state dict in place: ``backbone.{n + j}`` -> ``head.{j}`` and ``head.{j}`` ->
    ``head.{moved + j}``, where n is the backbone's length and `moved` the number of layers that moved."""
    n, moved = len(model.backbone), model._moved_layers
    backbone, head = prefix + "backbone.", prefix + "head."

    def split(key: str, start: str) -> tuple[int, str]:
        index, rest = key[len(start):].split(".", 1)
        return int(index), rest

    if not moved or not any(k.startswith(backbone) and split(k, backbone)[0] >= n for k in state_dict):
        return
    renamed = {}
    for key in [k for k in state_dict if k.startswith(head)]:
        i, rest = split(key, head)
        renamed[f"{head}{i + moved}.{rest}"] = state_dict.pop(key)
    for key in [k for k in state_dict if k.startswith(backbone) and split(k, backbone)[0] >= n]:
        i, rest = split(key, backbone)
        renamed[f"{head}{i - n}.{rest}"] = state_dict.pop(key)
    state_dict.update(renamed)


class _MaxPoolStride1(nn.Module):
    """Darknet's 2x2 max-pool with stride 1: same output size, window [x, x+1] clipped at the right/bottom edge."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, stride=1, padding=1)  # -inf padding, (H + 1, W + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x)[..., 1:, 1:]  # drop the window overhanging the top/left edge: (H, W)


def _init_weights(module: nn.Module, last: nn.Module) -> None:
    """Kaiming (fan-in, leaky 0.1) for every layer of `module` but `last`, which starts small so outputs start
    near 0. A ResNet backbone keeps torchvision's own initialisation (only the head is passed here)."""
    for m in module.modules():
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
