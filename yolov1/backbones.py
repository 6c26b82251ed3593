"""Backbones for the detector (torchvision ResNets) and loading pretrained weights into any backbone.

`model.pretrained` is ``"none"``, ``"imagenet"`` (torchvision's official weights for a ResNet, fetched into
``$TORCH_HOME/hub/checkpoints`` or read from there offline) or a path: a plain state dict (e.g. a torchvision
ResNet's), a detector weights file, or a backbone checkpoint written by `yolov1.pretrain`. Every file is read
with ``torch.load(weights_only=True)``; every backbone tensor must be present with the right shape, and a tensor
the backbone does not have is refused unless it belongs to a classifier head the detector replaces (``fc.``,
``head.``), so a ResNet-34 file never loads silently into a ResNet-18.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from yolov1.config import ModelConfig
from yolov1.redact import redact

__all__ = [
    "BACKBONE_CHECKPOINT_KIND", "IMAGENET_WEIGHTS", "LoadReport", "PretrainedWeightsError", "ResNetFeatures",
    "backbone_arch", "check_pretrained_source", "imagenet_file", "load_pretrained", "load_backbone_state",
    "resnet_features",
]

logger = logging.getLogger(__name__)

RESNET_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
# Pinned weight enums (not DEFAULT, which may move between torchvision releases): name of the enum class, member.
IMAGENET_WEIGHTS = {
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34": ("ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
}
BACKBONE_CHECKPOINT_KIND = "yolov1-backbone"  # the "kind" field of a `yolov1.pretrain` checkpoint
_HEAD_PREFIXES = ("fc.", "head.", "classifier.")  # classifier / detector heads: never part of a backbone
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(ValueError):
    """A ``model.pretrained`` value whose weights cannot be had or do not fit; the message names the file and
    what to do. A ValueError, so the stages report it as a one-line configuration error."""


@dataclass(frozen=True)
class LoadReport:
    """What `load_backbone_state` did: the tensors copied into the backbone and the head tensors left out."""

    source: str
    loaded: tuple[str, ...]
    ignored: tuple[str, ...]


class _Normalize(nn.Module):
    """(x - mean) / std per RGB channel with ImageNet's statistics; buffers are not saved in the state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class ResNetFeatures(nn.Sequential):
    """A torchvision ResNet's conv stages: (N, 3, H, W) RGB in [0, 1] -> (N, C, H / stride, W / stride).

    The input is normalised with ImageNet's mean and std inside (the detector's contract is [0, 1] RGB; the
    torchvision weights expect normalised input). State-dict keys are torchvision's (``conv1.weight``,
    ``layer1.0.bn1.running_mean``, ...) minus ``fc.*``, so a torchvision state dict loads as it is.
    C is 512 (ResNet-18/34) or 2048 (ResNet-50); stride is 32, or 16 / 8 when `stride1_stages` makes the last
    one or two stages (layer4, then layer3) keep their input size (stride 1, no dilation).
    """

    def __init__(self, arch: str, stride1_stages: int = 0) -> None:
        import torchvision

        if arch not in RESNET_CHANNELS:
            raise ValueError(f"model.backbone: expected one of {sorted(RESNET_CHANNELS)}, got {arch!r}")
        if not 0 <= stride1_stages <= 2:
            raise ValueError(f"stride1_stages must be 0, 1 or 2, got {stride1_stages}")
        net = getattr(torchvision.models, arch)(weights=None)
        layers = OrderedDict(normalize=_Normalize())
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            layers[name] = getattr(net, name)
        super().__init__(layers)
        for stage in ("layer4", "layer3")[:stride1_stages]:
            _unstride(getattr(self, stage)[0])
        self.out_channels = RESNET_CHANNELS[arch]


def resnet_features(arch: str, stride1_stages: int = 0) -> tuple[ResNetFeatures, int]:
    """`ResNetFeatures` for `arch` and its output channels."""
    features = ResNetFeatures(arch, stride1_stages)
    return features, features.out_channels


def backbone_arch(cfg: ModelConfig) -> dict[str, Any]:
    """The ModelConfig fields that fix the backbone's tensor shapes (what a backbone checkpoint must match)."""
    if cfg.backbone == "darknet":
        return {"backbone": "darknet", "variant": cfg.variant, "width_multiplier": float(cfg.width_multiplier),
                "batch_norm": bool(cfg.batch_norm)}
    return {"backbone": cfg.backbone}


def imagenet_file(arch: str) -> tuple[str, Path]:
    """(URL, local path) of torchvision's ImageNet weights for `arch`: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    import torchvision

    if arch not in IMAGENET_WEIGHTS:
        raise PretrainedWeightsError(
            f"model.pretrained: imagenet weights exist for {sorted(IMAGENET_WEIGHTS)}, not for backbone {arch!r} "
            "(pretrain the darknet backbone with `yolov1 pretrain` and give its checkpoint's path)")
    enum_name, member = IMAGENET_WEIGHTS[arch]
    url = getattr(getattr(torchvision.models, enum_name), member).url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_pretrained(backbone: nn.Module, cfg: ModelConfig) -> LoadReport | None:
    """Load ``cfg.pretrained`` into `backbone` (built from `cfg`); None when it is ``"none"``.

    Raises `PretrainedWeightsError` naming the file when the weights cannot be fetched or read, were written for
    another architecture, or lack / add / reshape any backbone tensor.
    """
    source = cfg.pretrained
    if source == "none":
        return None
    if source == "imagenet":
        state = _imagenet_state_dict(cfg.backbone)
        source = f"imagenet ({imagenet_file(cfg.backbone)[1]})"
    else:
        state = _file_state_dict(Path(source), cfg)
    report = load_backbone_state(backbone, state, source=source)
    logger.info("pretrained %s backbone from %s: %d tensors loaded, %d head tensors ignored", cfg.backbone,
                source, len(report.loaded), len(report.ignored))
    return report


def load_backbone_state(backbone: nn.Module, state_dict: dict[str, Tensor], *, source: str) -> LoadReport:
    """Copy `state_dict` into `backbone`, all or nothing.

    Keys may carry a ``backbone.`` prefix (a detector's state dict). Keys under ``fc.``, ``head.`` or
    ``classifier.`` are left out and reported; every other key must be one of the backbone's with the same
    shape, and every backbone key must be present, else `PretrainedWeightsError` lists the differences.
    """
    given, ignored = _fitting(backbone.state_dict(), state_dict, source=source, name=type(backbone).__name__)
    backbone.load_state_dict(given, strict=True)
    return LoadReport(source=source, loaded=tuple(given), ignored=ignored)


def check_pretrained_source(cfg: ModelConfig, wanted: dict[str, Tensor], *,
                            probe: Callable[[str], str | None] | None = None) -> str:
    """Check, without loading anything into a model, that ``cfg.pretrained`` can be had and fits a backbone whose
    state dict (only the shapes matter: meta tensors do) is `wanted`; returns what was checked, in words.

    A file is read (weights_only) and matched tensor by tensor. ``imagenet``: torchvision's file in
    ``$TORCH_HOME/hub/checkpoints`` is read and matched; when it is not there, ``probe(url)`` (None: reachable,
    else the reason) decides whether training could download it. Raises `PretrainedWeightsError` as
    `load_pretrained` would, naming the file and what to do.
    """
    source = cfg.pretrained
    if source == "none":
        return "model.pretrained: none"
    if source == "imagenet":
        url, path = imagenet_file(cfg.backbone)
        if not path.is_file():
            why = "no way to check the network was given" if probe is None else probe(url)
            if why is not None:
                raise _imagenet_missing(url, path, f"{url} cannot be fetched ({redact(why)})")
            return f"model.pretrained: imagenet: {url} answers (training downloads it to {path})"
        state, shown = _read(path, "model.pretrained: imagenet"), f"imagenet ({path})"
    else:
        state, shown = _file_state_dict(Path(source), cfg), source
    given, _ = _fitting(wanted, state, source=shown, name=f"{cfg.backbone} backbone")
    return f"model.pretrained: {shown}: {len(given)} backbone tensors fit"


def _fitting(wanted: dict[str, Tensor], state_dict: dict[str, Tensor], *, source: str,
             name: str) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """(the tensors of `state_dict` that fill `wanted`, the head keys left out); raises `PretrainedWeightsError`
    listing missing, unexpected and reshaped tensors. `wanted` may be meta tensors: only shapes are compared."""
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    ignored = tuple(sorted(k for k in state_dict if k.startswith(_HEAD_PREFIXES)))
    given = {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    shapes = [f"{k}: file {tuple(given[k].shape)}, model {tuple(wanted[k].shape)}"
              for k in wanted if k in given and (not isinstance(given[k], Tensor) or given[k].shape != wanted[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} backbone tensors missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} tensors the backbone does not have (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(shapes)} with another shape (e.g. {shapes[:2]})" if shapes else ""]
        raise PretrainedWeightsError(
            f"model.pretrained: {source} does not fit this {name} (weights of another architecture?): "
            f"{'; '.join(p for p in parts if p)}")
    return {k: given[k] for k in wanted}, ignored


def _imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    url, path = imagenet_file(arch)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s to %s", url, path)
        try:  # looked up at call time (tests replace it); writes a temp file and renames, so never a torn file
            hash_prefix = torch.hub.HASH_REGEX.search(path.name)  # torchvision names files <arch>-<sha256 prefix>.pth
            torch.hub.download_url_to_file(url, str(path), hash_prefix.group(1) if hash_prefix else None,
                                           progress=False)
        except Exception as err:  # URLError, timeouts, hash mismatch: all mean "not available here"
            raise _imagenet_missing(url, path, f"downloading {url} failed ({redact(str(err))})") from None
    return _read(path, "model.pretrained: imagenet")


def _imagenet_missing(url: str, path: Path, why: str) -> PretrainedWeightsError:
    """The error for torchvision's ImageNet file that is not at `path` and cannot be had now, and what to do."""
    return PretrainedWeightsError(
        f"model.pretrained: imagenet: {path} not found and {why}. On a machine with internet, download {url} and "
        f"copy the file to {path} (the folder is $TORCH_HOME/hub/checkpoints; TORCH_HOME is "
        f"{os.environ.get('TORCH_HOME', 'unset')})")


def _file_state_dict(path: Path, cfg: ModelConfig) -> dict[str, Tensor]:
    """The tensors of a state-dict file, a detector weights file or a `yolov1.pretrain` backbone checkpoint."""
    if not path.is_file():
        raise PretrainedWeightsError(f"model.pretrained: {path}: no such file (expected 'none', 'imagenet' or "
                                     "the path of a state dict or a `yolov1 pretrain` checkpoint)")
    state = _read(path, "model.pretrained")
    if state.get("kind") == BACKBONE_CHECKPOINT_KIND:
        arch, want = state.get("arch"), backbone_arch(cfg)
        if arch != want:
            raise PretrainedWeightsError(f"model.pretrained: {path} was pretrained for {arch}, but the model "
                                         f"config describes {want}")
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise PretrainedWeightsError(f"model.pretrained: {path}: not a state dict (non-tensor entries {bad[:3]})")
    return state


def _read(path: Path, key: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for pickled objects, RuntimeError / EOFError for damage
        raise PretrainedWeightsError(f"{key}: {path} cannot be loaded as plain tensors with weights_only=True "
                                     f"({redact(str(err))[:300]})") from None
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{key}: {path} holds a {type(state).__name__}, not a state dict")
    return state


def _unstride(block: nn.Module) -> None:
    """Make a ResNet stage's first block keep its input size: its stride-2 conv and shortcut run at stride 1."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
