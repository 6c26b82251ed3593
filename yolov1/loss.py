"""The YOLOv1 sum-squared loss (arXiv 1506.02640, section 2.2, equation 3), vectorised over the whole batch.

Predictions (N, S, S, 5B + C) and targets (N, S, S, 5 + C) use the grid layout of `yolov1.encode`: per cell,
B predictors [x, y, sqrt_w, sqrt_h, conf] then C class scores; targets [x, y, w, h, obj, one-hot C].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from yolov1.boxes import box_iou_aligned, cxcywh_to_xyxy
from yolov1.config import LossConfig

__all__ = ["YoloLoss"]


class YoloLoss(nn.Module):
    """The paper's loss: coord + obj + noobj + class, each summed over the batch and divided by N.

    In a cell that holds an object, the *responsible* predictor is the one of the B whose decoded box has the
    highest IoU with the truth (image-normalised frame, no gradient; ties go to the lowest index). Then:

    - coord = lambda_coord * sum over responsible predictors of (x - x^)^2 + (y - y^)^2
      + (sqrt_w - sqrt(w^))^2 + (sqrt_h - sqrt(h^))^2;
    - obj = sum over responsible predictors of (conf - t)^2, t = that IoU (detached) for confidence_target
      "iou" (paper), 1 for "one";
    - noobj = lambda_noobj * sum over every other predictor (empty cells AND the non-responsible ones of object
      cells) of conf^2;
    - class = sum over object cells of sum_c (p_c - onehot_c)^2.

    The net predicts sqrt(w), sqrt(h) directly (paper, Darknet), so no sqrt of a prediction is ever taken: that
    is what makes the paper's sqrt safe. Only the targets' w, h are square-rooted, clamped at 0 first, so empty
    cells (all zero) can never give NaN and gradients are finite everywhere.

    ``forward(predictions, targets)``: (N, S, S, 5B + C) and (N, S, S, 5 + C), any float dtype (computed in
    float32, so autocast bf16/fp16 outputs are safe) -> dict of scalar tensors "total", "coord", "obj", "noobj",
    "class"; the components are already weighted by their lambdas and sum to "total".
    """

    def __init__(self, cfg: LossConfig, *, boxes_per_cell: int, num_classes: int) -> None:
        super().__init__()
        if cfg.confidence_target not in ("iou", "one"):
            raise ValueError(f"train.loss.confidence_target: expected 'iou' or 'one', got {cfg.confidence_target!r}")
        self.lambda_coord = float(cfg.lambda_coord)
        self.lambda_noobj = float(cfg.lambda_noobj)
        self.iou_target = cfg.confidence_target == "iou"
        self.boxes_per_cell = boxes_per_cell
        self.num_classes = num_classes

    def forward(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        self._check_shapes(predictions, targets)
        b = self.boxes_per_cell
        pred = predictions.float()
        target = targets.float()
        n, s = pred.shape[0], pred.shape[1]
        boxes = pred[..., : 5 * b].reshape(n, s, s, b, 5)  # (N, S, S, B, 5)
        obj = target[..., 4]  # (N, S, S), 1 in object cells else 0

        responsible, iou = self._responsible(boxes.detach(), target[..., :4], obj)  # (N, S, S, B) each
        # Per-predictor target [x, y, sqrt_w, sqrt_h]; only the responsible predictor's entries are ever used.
        target_box = torch.cat((target[..., :2], target[..., 2:4].clamp(min=0).sqrt()), dim=-1)  # (N, S, S, 4)
        coord_err = (boxes[..., :4] - target_box.unsqueeze(-2)).square().sum(-1)  # (N, S, S, B)
        conf = boxes[..., 4]  # (N, S, S, B)
        conf_target = iou if self.iou_target else 1.0

        coord = self.lambda_coord * (responsible * coord_err).sum()
        obj_loss = (responsible * (conf - conf_target).square()).sum()
        # Every predictor that is not responsible is pushed to conf 0, INCLUDING the other B-1 predictors of a
        # cell that holds an object (paper eq. 3: 1^noobj_ij is "not responsible", not "empty cell"). The widely
        # copied implementations only penalise predictors of empty cells and miss these.
        noobj = self.lambda_noobj * ((1.0 - responsible) * conf.square()).sum()
        class_err = (pred[..., 5 * b:] - target[..., 5:]).square().sum(-1)  # (N, S, S)
        class_loss = (obj * class_err).sum()

        parts = {"coord": coord / n, "obj": obj_loss / n, "noobj": noobj / n, "class": class_loss / n}
        parts["total"] = parts["coord"] + parts["obj"] + parts["noobj"] + parts["class"]
        return parts

    def _responsible(self, boxes: Tensor, target_xywh: Tensor, obj: Tensor) -> tuple[Tensor, Tensor]:
        """Responsible-predictor mask (N, S, S, B) float 0/1 and the IoU of each predictor with the truth."""
        with torch.no_grad():
            s, b = boxes.shape[1], boxes.shape[3]
            pred_xyxy = cxcywh_to_xyxy(_to_image_frame(boxes[..., 0], boxes[..., 1], boxes[..., 2].square(),
                                                       boxes[..., 3].square(), s))  # (N, S, S, B, 4)
            t = target_xywh
            true_xyxy = cxcywh_to_xyxy(_to_image_frame(t[..., 0], t[..., 1], t[..., 2], t[..., 3], s))
            iou = box_iou_aligned(pred_xyxy, true_xyxy.unsqueeze(-2))  # (N, S, S, B)
            best = iou.argmax(dim=-1)  # (N, S, S); argmax returns the first maximum: ties -> lowest index
            mask = nn.functional.one_hot(best, b).to(iou.dtype) * obj.unsqueeze(-1)  # (N, S, S, B)
        return mask, iou

    def _check_shapes(self, predictions: Tensor, targets: Tensor) -> None:
        b, c = self.boxes_per_cell, self.num_classes
        p, t = tuple(predictions.shape), tuple(targets.shape)
        if len(p) != 4 or p[1] != p[2] or p[3] != 5 * b + c:
            raise ValueError(f"predictions: expected shape (N, S, S, 5B + C = {5 * b + c}), got {p}")
        if t != p[:3] + (5 + c,):
            raise ValueError(f"targets: expected shape {p[:3] + (5 + c,)} to match predictions {p}, got {t}")


def _to_image_frame(x: Tensor, y: Tensor, w: Tensor, h: Tensor, s: int) -> Tensor:
    """Cell-relative centres (..., S, S[, B]) + image-normalised sizes -> image-normalised cxcywh (..., 4)."""
    idx = torch.arange(s, device=x.device, dtype=x.dtype)
    extra = x.dim() - 3  # a trailing B dimension, or none
    col = idx.view(1, 1, s, *([1] * extra))  # j: x grows along dim 2
    row = idx.view(1, s, 1, *([1] * extra))  # i: y grows along dim 1
    return torch.stack(((x + col) / s, (y + row) / s, w, h), dim=-1)
