"""Evaluation: run a model over an evaluation dataset, decode, and score with the VOC devkit mAP.

Inference is batched and decode/NMS is vectorised over the batch. Boxes are compared in continuous 0-based pixels
of each original image (see `yolov1.metrics` for why that equals the devkit's +1 convention). Difficult objects
are excluded as the devkit does. VOC2007 11-point AP is the headline (the paper's 63.4); area AP is reported beside it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from yolov1.boxes import denormalize_xyxy
from yolov1.config import EvalConfig, ModelConfig
from yolov1.data import images_to_float
from yolov1.encode import decode
from yolov1.metrics import VOCResult, evaluate_both

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """mAP by both methods plus what the pictures need: per-image detections and ground truths, in pixels."""

    voc07: VOCResult
    area: VOCResult
    images_per_second: float
    num_images: int
    image_ids: list[str]
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per image: boxes (D, 4) pixels, scores, labels
    ground_truths: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per image: boxes (G, 4), labels, difficult

    def summary(self, class_names) -> dict:
        """JSON-able metrics: headline mAPs, per-class AP by both methods, speed."""
        ap07 = self.voc07.to_dict(class_names)
        area = self.area.to_dict(class_names)
        return {
            "map_voc07": _maybe(self.voc07.map),
            "map_area": _maybe(self.area.map),
            "ap_voc07": ap07["ap"],
            "ap_area": area["ap"],
            "images_per_second": None if np.isnan(self.images_per_second) else round(self.images_per_second, 2),
            "num_images": self.num_images,
        }


def _maybe(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


def collate_eval(batch):
    """Eval-mode samples (image, target, info) -> (images (N, 3, H, W), infos list)."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[2] for b in batch]


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, *, model_cfg: ModelConfig, eval_cfg: EvalConfig,
             device: torch.device | str = "cpu", num_workers: int = 0, limit: int | None = None) -> Evaluation:
    """Score `model` on an eval-mode dataset yielding (image (3, H, W) float, target, info).

    ``info`` holds the original image's ``width``, ``height`` and ground truth ``boxes`` (G, 4) pixel xyxy,
    ``labels`` (G,) and ``difficult`` (G,). ``limit`` evaluates the first N images only (validation subsets).
    """
    device = torch.device(device)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=eval_cfg.batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_eval, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    detections, ground_truths, image_ids = [], [], []
    infer_seconds = 0.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for images, infos in loader:
        start = time.perf_counter()
        with autocast:
            preds = model(images_to_float(images.to(device, non_blocking=True)))  # (N, S, S, 5B + C); uint8 in
        decoded = decode(preds, boxes_per_cell=model_cfg.boxes_per_cell, num_classes=model_cfg.num_classes,
                         score_threshold=eval_cfg.score_threshold, nms_iou_threshold=eval_cfg.nms_iou_threshold,
                         max_detections=eval_cfg.max_detections)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        infer_seconds += time.perf_counter() - start
        for det, info in zip(decoded, infos, strict=True):
            boxes = denormalize_xyxy(det.boxes_xyxy.float().cpu(), info["width"], info["height"])
            detections.append((boxes.numpy(), det.scores.float().cpu().numpy(), det.labels.cpu().numpy()))
            ground_truths.append((np.asarray(info["boxes"], dtype=np.float64).reshape(-1, 4),
                                  np.asarray(info["labels"], dtype=np.int64),
                                  np.asarray(info["difficult"], dtype=bool)))
            image_ids.append(str(info["image_id"]))
    model.train(was_training)
    kwargs = dict(num_classes=model_cfg.num_classes, iou_threshold=eval_cfg.match_iou_threshold,
                  inclusive_pixels=False,  # continuous pixels: identical to the devkit's +1 rule on VOC integers
                  match_comparison=eval_cfg.match_comparison)  # ">=": the official devkit's rule
    both = evaluate_both(detections, ground_truths, **kwargs)  # one matching pass, two AP methods
    voc07, area = both["voc07"], both["area"]
    n = len(detections)
    ips = n / infer_seconds if infer_seconds > 0 else float("nan")
    log.info("evaluated %d images: mAP voc07 %.4f, area %.4f, %.1f images/s", n, voc07.map, area.map, ips)
    return Evaluation(voc07, area, ips, n, image_ids, detections, ground_truths)
