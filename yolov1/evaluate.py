"""Evaluation: run a model over an evaluation dataset, decode, and score with the VOC devkit mAP.

Inference is batched, decode/NMS is vectorised over the batch, and each batch's detections reach the host in one
copy (no per-image device syncs). The network runs in fp32 unless eval.precision asks for bf16 on CUDA. Boxes are
compared in continuous 0-based pixels of each original image (see `yolov1.metrics` for why that equals the
devkit's +1 convention). Difficult objects are excluded as the devkit does. VOC2007 11-point AP is the headline
(the paper's 63.4); area AP is reported beside it.
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
from yolov1.encode import decode_batch
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


def _bf16_autocast(device: torch.device, eval_cfg: EvalConfig) -> bool:
    """Whether the network runs under bf16 autocast: only when eval.precision says bf16, and only on CUDA. bf16
    rounds scores to 8 bits, which makes ties and reorders detections, so AP moves; whatever train.precision
    says, scoring is fp32 by default."""
    return device.type == "cuda" and eval_cfg.precision == "bf16"


def _decode_to_host(preds: torch.Tensor, infos: list[dict], model_cfg: ModelConfig,
                    eval_cfg: EvalConfig) -> np.ndarray:
    """(N, S, S, 5B + C) predictions -> (D, 7) float64 host array, columns x1, y1, x2, y2 (pixels of each original
    image), score, label, image index; image by image, by score descending within each.

    Everything is computed where ``preds`` lives and moved to the host in ONE copy: on a GPU, per-image copies
    would each wait for the device (thousands of waits for VOC07 test). float64 holds the float32 boxes and scores
    and the integer labels and indices exactly; `_split_by_image` gives back the float32 / int64 columns.
    """
    flat = decode_batch(preds, boxes_per_cell=model_cfg.boxes_per_cell, num_classes=model_cfg.num_classes,
                        score_threshold=eval_cfg.score_threshold, nms_iou_threshold=eval_cfg.nms_iou_threshold,
                        max_detections=eval_cfg.max_detections)
    sizes = torch.tensor([[info["width"], info["height"]] for info in infos], dtype=torch.float32)  # (N, 2)
    sizes = sizes.to(preds.device, non_blocking=True)[flat.image_index]  # (D, 2)
    boxes = denormalize_xyxy(flat.boxes_xyxy, sizes[:, 0], sizes[:, 1])  # (D, 4) float32 pixels
    columns = (boxes, flat.scores[:, None], flat.labels[:, None], flat.image_index[:, None])
    return torch.cat([c.double() for c in columns], dim=1).cpu().numpy()  # (D, 7)


def _split_by_image(packed: np.ndarray, num_images: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`_decode_to_host`'s (D, 7) array -> per image (boxes (D_i, 4) float32, scores (D_i,) float32, labels int64)."""
    image = packed[:, 6].astype(np.int64)
    bounds = np.cumsum(np.bincount(image, minlength=num_images))[:-1]  # rows are grouped by image, in order
    return [(part[:, :4].astype(np.float32), part[:, 4].astype(np.float32), part[:, 5].astype(np.int64))
            for part in np.split(packed, bounds)]


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
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16_autocast(device, eval_cfg))
    for images, infos in loader:
        start = time.perf_counter()
        with autocast:
            preds = model(images_to_float(images.to(device, non_blocking=True)))  # (N, S, S, 5B + C); uint8 in
        packed = _decode_to_host(preds, infos, model_cfg, eval_cfg)  # (D, 7) float64; the batch's one transfer
        infer_seconds += time.perf_counter() - start
        detections.extend(_split_by_image(packed, len(infos)))
        for info in infos:
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
