"""Box formats, IoU and per-class NMS.

Formats (the name of every argument says which one it holds):
- ``xyxy``: (x1, y1, x2, y2), top-left and bottom-right corners, x1 <= x2, y1 <= y2.
- ``cxcywh``: (cx, cy, w, h), centre and size.
Frames: *image-normalised* coordinates lie in [0, 1] (x / width, y / height); *pixel* coordinates are continuous
0-based pixels, so a box covering a whole W x H image is (0, 0, W, H).
Pairwise IoU and NMS delegate to torchvision.ops; everything works on any leading batch dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms as _tv_batched_nms
from torchvision.ops import box_iou as _tv_box_iou

__all__ = [
    "cxcywh_to_xyxy",
    "xyxy_to_cxcywh",
    "normalize_xyxy",
    "denormalize_xyxy",
    "box_iou",
    "box_iou_aligned",
    "batched_nms",
]


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, in the same frame (normalised or pixel)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh, in the same frame (normalised or pixel)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def normalize_xyxy(boxes_xyxy: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    """(..., 4) pixel xyxy -> (..., 4) image-normalised xyxy. ``width``/``height`` broadcast against (...)."""
    scale = _scale(boxes_xyxy, width, height)
    return boxes_xyxy / scale


def denormalize_xyxy(boxes_xyxy: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    """(..., 4) image-normalised xyxy -> (..., 4) pixel xyxy. ``width``/``height`` broadcast against (...)."""
    return boxes_xyxy * _scale(boxes_xyxy, width, height)


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M); torchvision's ``box_iou``. Empty inputs give (0, M)/(N, 0)."""
    return _tv_box_iou(boxes1_xyxy, boxes2_xyxy)


def box_iou_aligned(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of aligned pairs: (..., 4) and (..., 4) xyxy -> (...). Degenerate pairs (zero union) give 0, never NaN."""
    lt = torch.maximum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    rb = torch.minimum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    wh = (rb - lt).clamp(min=0)  # (..., 2)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1_xyxy[..., 2] - boxes1_xyxy[..., 0]).clamp(min=0) * (boxes1_xyxy[..., 3] - boxes1_xyxy[..., 1]).clamp(min=0)
    area2 = (boxes2_xyxy[..., 2] - boxes2_xyxy[..., 0]).clamp(min=0) * (boxes2_xyxy[..., 3] - boxes2_xyxy[..., 1]).clamp(min=0)
    union = area1 + area2 - inter
    return inter / union.clamp(min=eps)


def batched_nms(boxes_xyxy: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-group NMS (torchvision): (K, 4) xyxy, (K,) scores, (K,) int64 group ids -> kept indices, by score descending.

    Boxes of different groups never suppress each other; pass ``labels`` as ``idxs`` for per-class NMS, or
    ``image_index * num_classes + labels`` for per-image, per-class NMS over a whole batch in one call.
    """
    if boxes_xyxy.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes_xyxy.device)
    # float64: torchvision offsets each group by id * (max coordinate + 1); with ids ~ 1e3 and normalised boxes,
    # float32 loses ~1e-4 and flips decisions near the threshold.
    return _tv_batched_nms(boxes_xyxy.double(), scores.double(), idxs, iou_threshold)


def _scale(boxes: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    return torch.stack((w, h, w, h), dim=-1)
