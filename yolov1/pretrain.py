"""The paper's classification pretraining (section 2.2): the detector's backbone + average pool + FC, trained
on a torchvision ``ImageFolder`` tree, saved as a backbone checkpoint that ``model.pretrained`` loads.

The paper pretrains Darknet's first 20 conv layers on ImageNet at 224 px; the same code runs on any ImageFolder
tree, e.g. object crops cut from a VOC-format dataset by `make_crops` (how the generated data is used here).
Progress goes through ``on_epoch_end(epoch, metrics)``; this module never tracks or prints.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from yolov1.backbones import BACKBONE_CHECKPOINT_KIND, backbone_arch
from yolov1.checkpoint import save_checkpoint
from yolov1.config import ModelConfig, PretrainConfig
from yolov1.io import make_staging_dir
from yolov1.model import build_backbone

__all__ = [
    "BackboneClassifier", "CropReport", "PretrainResult", "build_classifier", "image_folder_datasets",
    "make_crops", "pretrain", "save_backbone", "topk_correct",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropReport:
    """What `make_crops` wrote: crops per class, and objects left out (difficult, or smaller than min_size)."""

    per_class: dict[str, int]
    skipped_difficult: int
    skipped_small: int


@dataclass
class PretrainResult:
    """The trained classifier and the last epoch's metrics (``loss``, ``top1``, ``top5``, ``lr``)."""

    model: BackboneClassifier
    classes: list[str]
    metrics: dict[str, float]
    history: list[dict[str, float]]


class BackboneClassifier(nn.Module):
    """``backbone`` -> global average pool -> FC: (N, 3, H, W) RGB in [0, 1] -> (N, K) class logits.

    For Darknet this is the paper's pretraining network: the first 20 conv layers, an average-pooling layer and a
    fully connected layer. ``backbone`` has exactly the detector's state-dict keys.
    """

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.pool(self.backbone(images)).flatten(1))  # (N, K)


def build_classifier(model_cfg: ModelConfig, num_classes: int) -> BackboneClassifier:
    """The pretraining network for the detector `model_cfg` describes (its backbone, freshly initialised)."""
    backbone, channels = build_backbone(model_cfg)
    return BackboneClassifier(backbone, channels, num_classes)


def make_crops(devkit_root: str | os.PathLike, image_sets: Sequence[str], classes: Sequence[str],
               out_dir: str | os.PathLike, *, min_size: int = 8) -> CropReport:
    """Cut every non-difficult object of a VOC-format dataset into ``out_dir/<class>/<image id>_<k>.png``.

    `image_sets` are ``"<year>/<split>"`` lists under ``devkit_root`` (``VOCdevkit``); boxes come from the XML
    (parsed by `yolov1.voc`, 0-based continuous xyxy pixels) and are rounded outwards. Objects marked difficult
    or with a side under `min_size` pixels are counted, not written. The folder appears all at once: crops go to
    a staging folder that replaces `out_dir` at the end. Every class gets a folder (ImageFolder needs them).
    """
    from PIL import Image

    from yolov1.voc import parse_annotation, read_image_set

    devkit, out_dir = Path(devkit_root), Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out_dir.parent, f".{out_dir.name}.staging-")
    counts: Counter[str] = Counter()
    difficult = small = 0
    try:
        for name in classes:
            (staging / name).mkdir()
        for image_set in image_sets:
            year, _, split = image_set.partition("/")
            for image_id in read_image_set(devkit, year, split):
                ann = parse_annotation(devkit / f"VOC{year}" / "Annotations" / f"{image_id}.xml", classes=classes,
                                       on_bad_object="error")
                with Image.open(devkit / f"VOC{year}" / "JPEGImages" / ann.filename) as image:
                    image = image.convert("RGB")
                    for k, obj in enumerate(ann.objects):
                        box = (math.floor(obj.xmin), math.floor(obj.ymin), math.ceil(obj.xmax), math.ceil(obj.ymax))
                        if obj.difficult:
                            difficult += 1
                        elif min(box[2] - box[0], box[3] - box[1]) < min_size:
                            small += 1
                        else:
                            image.crop(box).save(staging / obj.class_name / f"{year}_{image_id}_{k}.png")
                            counts[obj.class_name] += 1
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report = CropReport({c: counts[c] for c in classes}, difficult, small)
    logger.info("wrote %d crops to %s; skipped %d difficult and %d smaller than %d px", sum(counts.values()),
                out_dir, difficult, small, min_size)
    return report


def image_folder_datasets(cfg: PretrainConfig, seed: int) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names) from ``cfg.image_folder`` (and ``cfg.val_folder``, or a seeded
    ``cfg.val_fraction`` split of the image folder). Samples: (image (3, s, s) float in [0, 1], class index),
    s = ``cfg.input_size``; training images get a random resized crop (scale 0.35-1), a horizontal flip and, when
    ``cfg.hue`` / ``cfg.saturation`` / ``cfg.exposure`` ask for it, a random colour change (hue shift in
    [-hue, hue] of the colour circle, saturation and brightness factors in [1/s, s] and [1/e, e]). Colour
    augmentation makes a classifier learn shape where colour alone would tell the classes apart."""
    from torchvision import datasets
    from torchvision.transforms import v2

    size = cfg.input_size
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    colour = []
    if cfg.hue > 0 or cfg.saturation > 1 or cfg.exposure > 1:
        colour = [v2.ColorJitter(brightness=(1 / cfg.exposure, cfg.exposure),
                                 saturation=(1 / cfg.saturation, cfg.saturation), hue=cfg.hue)]
    train_tf = v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                           *colour, *to_tensor])
    val_tf = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *to_tensor])

    def folder(key: str, path: str, transform) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(path, transform=transform)
        except (FileNotFoundError, OSError) as err:
            raise FileNotFoundError(f"pretrain.{key}: {path}: not an ImageFolder tree ({err})") from None

    train = folder("image_folder", cfg.image_folder, train_tf)
    if cfg.val_folder is not None:
        val = folder("val_folder", cfg.val_folder, val_tf)
        if val.classes != train.classes:
            raise ValueError(f"pretrain.val_folder: classes {val.classes} differ from pretrain.image_folder's "
                             f"{train.classes}")
        return train, val, list(train.classes)
    n_val = int(round(len(train) * cfg.val_fraction))
    if not 0 < n_val < len(train):
        raise ValueError(f"pretrain.val_fraction: {cfg.val_fraction} of {len(train)} images leaves no train or no "
                         "validation image (set pretrain.val_folder or change the fraction)")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    val = folder("image_folder", cfg.image_folder, val_tf)
    return Subset(train, order[n_val:]), Subset(val, order[:n_val]), list(train.classes)


def topk_correct(logits: Tensor, labels: Tensor, k: int) -> int:
    """How many of the (N, K) `logits` rows have their (N,) `labels` among the top min(k, K) scores."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def pretrain(model_cfg: ModelConfig, cfg: PretrainConfig, train_set: Dataset, val_set: Dataset,
             classes: Sequence[str], *, seed: int, device: str | torch.device = "cpu",
             on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> PretrainResult:
    """Train `build_classifier(model_cfg, len(classes))` for ``cfg.epochs`` epochs: SGD (momentum, weight
    decay), cross-entropy, cosine learning rate over all steps; top-1 / top-5 on `val_set` after each epoch
    (top-5 is top-min(5, K)). Seeded: same data and seed, same weights on CPU with ``num_workers: 0``."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_classifier(model_cfg, len(classes)).to(device)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) > cfg.batch_size,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs * len(loader)))
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(images), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain: non-finite loss {loss.item()} in epoch {epoch} (lower "
                                         "pretrain.lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, seen = total + loss.item() * len(labels), seen + len(labels)
        metrics = {"loss": total / max(seen, 1), **evaluate_classifier(model, val_set, cfg, device),
                   "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        logger.info("pretrain epoch %d/%d: loss %.4f, top-1 %.3f, top-5 %.3f", epoch, cfg.epochs, metrics["loss"],
                    metrics["top1"], metrics["top5"])
        if on_epoch_end:
            on_epoch_end(epoch, metrics)
    return PretrainResult(model.eval(), list(classes), history[-1] if history else {}, history)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Dataset, cfg: PretrainConfig, device: torch.device
                        ) -> dict[str, float]:
    """``{"top1", "top5"}`` accuracy of `model` on `dataset` (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    top1 = top5 = n = 0
    for images, labels in DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers):
        logits = model(images.to(device))
        labels = labels.to(device)
        top1, top5, n = top1 + topk_correct(logits, labels, 1), top5 + topk_correct(logits, labels, 5), n + len(labels)
    model.train(was_training)
    return {"top1": top1 / max(n, 1), "top5": top5 / max(n, 1)}


def save_backbone(path: str | os.PathLike, model: BackboneClassifier, model_cfg: ModelConfig,
                  classes: Sequence[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the backbone checkpoint ``model.pretrained`` takes, atomically, loadable with weights_only:
    ``{"kind": "yolov1-backbone", "arch": backbone_arch(model_cfg), "state_dict": backbone tensors (the
    detector's ``backbone.`` keys without the prefix), "classes", **extra}`` (the FC layer is not kept)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    payload = {"kind": BACKBONE_CHECKPOINT_KIND, "arch": backbone_arch(model_cfg), "state_dict": state,
               "classes": list(classes), **(extra or {})}
    return save_checkpoint(path, payload)
