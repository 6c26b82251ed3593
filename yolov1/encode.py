"""YOLOv1 grid tensors: encode ground-truth boxes into a target grid, decode network predictions into detections.

Letters, used across the project: N batch, S grid size (cells per side), B boxes (predictors) per cell,
C classes, K objects in one image, D detections of one image; P = S*S*B predictors per image.

Grid tensors are indexed [..., i, j, channel] with i the row (y) and j the column (x). The cell *responsible*
for a box with image-normalised centre (cx, cy) is j = min(floor(cx*S), S-1), i = min(floor(cy*S), S-1); the
box's cell-relative centre is x = cx*S - j, y = cy*S - i (0..1 across the cell).

Prediction (network output), (N, S, S, 5B + C), every channel linear (no activation), as in the paper:
    channels 5b .. 5b+4, for each predictor b in 0..B-1: [x, y, sqrt_w, sqrt_h, conf]
        x, y: box centre, cell-relative; sqrt_w, sqrt_h: square roots of the width and height relative to the
        whole image (decoding squares them, as Darknet does: no sqrt of a prediction is ever taken);
        conf: Pr(object) * IoU(predicted box, truth).
    channels 5B .. 5B+C-1: class scores Pr(class_c | object), one set per cell, shared by its B predictors.
Target of one image, (S, S, 5 + C); batched, (N, S, S, 5 + C):
    channels [x, y, w, h, obj, one-hot class (C)]: x, y cell-relative; w, h image-normalised, NOT square-rooted;
    obj = 1.0 in a cell responsible for an object; every channel of any other cell is 0.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from yolov1.boxes import box_iou_aligned, cxcywh_to_xyxy

__all__ = ["EncodedTarget", "Detections", "cell_indices", "encode", "decode", "targets_to_predictions"]

logger = logging.getLogger(__name__)

# decode's first pass runs NMS on each image's best max_detections * (1 + 1/4) candidates: the cost of NMS grows
# with the square of that number, and images where suppression leaves fewer than max_detections are redone.
_FIRST_TOP_K_SPARE = 4


class EncodedTarget(NamedTuple):
    """`encode`'s result: ``target`` (S, S, 5 + C) float32 and ``displaced``, the boxes that lost their cell."""

    target: Tensor
    displaced: int


class Detections(NamedTuple):
    """Detections of one image, by score descending: ``boxes_xyxy`` (D, 4) image-normalised float32,
    ``scores`` (D,) float32, ``labels`` (D,) int64 class indices."""

    boxes_xyxy: Tensor
    scores: Tensor
    labels: Tensor


def cell_indices(boxes_cxcywh: Tensor, grid_size: int) -> tuple[Tensor, Tensor]:
    """Responsible cells of (..., 4) image-normalised cxcywh boxes -> (rows, cols), each (...) int64.

    row i = min(floor(cy * S), S - 1), col j = min(floor(cx * S), S - 1): a centre exactly on the right or bottom
    border (1.0) belongs to the last cell. Centres are expected in [0, 1]; others are clamped to the border cells.
    Computed in float64, so the cell is that of the exact input value whatever its dtype.
    """
    scaled = boxes_cxcywh[..., :2].double() * grid_size  # (..., 2) = (cx*S, cy*S)
    cells = scaled.floor().clamp_(0, grid_size - 1).long()
    return cells[..., 1], cells[..., 0]


def encode(boxes_cxcywh: Tensor, labels: Tensor, grid_size: int, num_classes: int) -> EncodedTarget:
    """Ground truth of one image -> its (S, S, 5 + C) float32 target (layout in the module docstring).

    Args:
        boxes_cxcywh: (K, 4) boxes, image-normalised cxcywh: cx, cy in [0, 1], w, h in (0, 1].
        labels: (K,) integer class indices in [0, C).
        grid_size: S. num_classes: C.

    x, y are relative to the responsible cell and w, h to the whole image, as in the paper. (The widely copied
    PyTorch re-implementation stores w, h in cell units, which scales the w/h part of the loss by S.)

    Collision policy: the paper's grid holds one object per cell. When several centres fall in one cell, the box
    with the largest area w*h is kept (equal areas: the first in input order); the others are left out of the
    target and counted in ``displaced`` so that callers can report them. K = 0 gives an all-zero target.

    Raises:
        ValueError: wrong shapes, a non-finite value, a coordinate outside [0, 1], w or h <= 0, or a label
            outside [0, C); the message names the first offending box index and its values.
    """
    _check_encode_inputs(boxes_cxcywh, labels, grid_size, num_classes)
    s, k, device = grid_size, boxes_cxcywh.shape[0], boxes_cxcywh.device
    target = torch.zeros(s * s, 5 + num_classes, dtype=torch.float32, device=device)
    if k == 0:
        return EncodedTarget(target.view(s, s, 5 + num_classes), 0)
    boxes = boxes_cxcywh.double()
    rows, cols = cell_indices(boxes, s)
    cells = rows * s + cols  # (K,) flat cell index
    # Largest area first; a stable sort keeps input order among equal areas, so the first such box wins.
    order = torch.sort(boxes[:, 2] * boxes[:, 3], descending=True, stable=True).indices  # (K,)
    ranks = torch.arange(k, device=device)
    best_rank = torch.full((s * s,), k, dtype=torch.int64, device=device)
    best_rank.scatter_reduce_(0, cells[order], ranks, reduce="amin")  # (S*S,) k where no box
    winners = order[best_rank[best_rank < k]]  # (W,) input indices, one per occupied cell
    xy = boxes[winners, :2] * s - torch.stack((cols, rows), dim=1)[winners]  # (W, 2) cell-relative
    one = torch.ones_like(xy[:, :1])
    one_hot = F.one_hot(labels[winners].long(), num_classes).to(xy.dtype)  # (W, C)
    # w, h stay image-relative (the paper), not in cell units (which would scale their loss by S).
    target[cells[winners]] = torch.cat((xy, boxes[winners, 2:], one, one_hot), dim=1).float()
    return EncodedTarget(target.view(s, s, 5 + num_classes), k - winners.numel())


def targets_to_predictions(target: Tensor, boxes_per_cell: int) -> Tensor:
    """The perfect prediction of a target: (S, S, 5 + C) or (N, S, S, 5 + C) -> (N, S, S, 5B + C), same dtype.

    Every predictor of an object cell gets the cell's box [x, y, sqrt(w), sqrt(h)]; predictor 0 has conf 1 and
    the others conf 0 (ties in IoU make predictor 0 the responsible one, so the paper's loss of this prediction
    is exactly zero); the class scores are the one-hot class. Empty cells are all 0. For round-trip and loss tests.
    """
    batched = target if target.dim() == 4 else target.unsqueeze(0)  # (N, S, S, 5 + C)
    box = torch.cat((batched[..., :2], batched[..., 2:4].sqrt(), batched[..., 4:5]), dim=-1)  # (N, S, S, 5)
    others = torch.cat((box[..., :4], torch.zeros_like(box[..., 4:5])), dim=-1)  # same box, conf 0
    return torch.cat((box, *([others] * (boxes_per_cell - 1)), batched[..., 5:]), dim=-1)


@torch.no_grad()
def decode(
    predictions: Tensor,
    *,
    boxes_per_cell: int,
    num_classes: int,
    score_threshold: float,
    nms_iou_threshold: float,
    max_detections: int,
) -> list[Detections]:
    """Network output (N, S, S, 5B + C) -> one `Detections` per image (image-normalised xyxy, by score desc).

    As the paper does at test time, every predictor b of every cell scores every class c with the class-specific
    confidence conf_b * class_score_c (S*S*B*C candidates per image; outputs are linear and the product is taken
    as is, as in Darknet). The box is centred at ((j + x) / S, (i + y) / S) with size (sqrt_w**2, sqrt_h**2),
    clipped to [0, 1]. Candidates with score > ``score_threshold`` (a NaN score never is) go through greedy NMS
    per image and class, suppressing IoU > ``nms_iou_threshold``; the best ``max_detections`` survivors of each
    image are returned. Any float dtype is accepted and computed in float32; outputs live on the input's device.

    The whole batch is processed at once, with no loop over images, cells or boxes: the best candidates of each
    image are taken by `torch.topk` and go through one vectorised NMS (the same result as torchvision's
    ``batched_nms``, which loops over the N*C groups in Python once there are over 1000 boxes). The result is
    exact: images whose top candidates leave fewer than ``max_detections`` survivors are redone with more.
    """
    n, s = _check_predictions(predictions, boxes_per_cell, num_classes)
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    if n == 0:
        return []
    preds = predictions.float()
    boxes_xyxy = _predicted_boxes_xyxy(preds, boxes_per_cell)  # (N, P, 4)
    cells = preds[..., 5 * boxes_per_cell :].reshape(n, s * s, 1, num_classes)  # (N, S*S, 1, C)
    conf = preds[..., 4 : 5 * boxes_per_cell : 5].reshape(n, s * s, boxes_per_cell, 1)  # (N, S*S, B, 1)
    scores = (conf * cells).reshape(n, -1)  # (N, P*C), flat index = predictor * C + class
    candidate = scores > score_threshold  # (N, P*C); False for NaN
    scores.masked_fill_(~candidate, float("-inf"))  # NaN too, so that topk ranks every candidate first
    num_candidates = candidate.sum(dim=1)  # (N,)

    results: list[Detections | None] = [None] * n
    pending = torch.arange(n, device=preds.device)
    top_k = min(scores.shape[1], max_detections + max_detections // _FIRST_TOP_K_SPARE)
    while pending.numel() > 0:
        k = min(top_k, int(num_candidates[pending].max()))
        pending_scores = scores if pending.numel() == n else scores[pending]  # (n', P*C)
        top_scores, top_index = pending_scores.topk(k, dim=1)  # (n', k) each, by score descending
        valid = top_scores > score_threshold  # (n', k)
        rows = torch.arange(pending.numel(), device=preds.device)[:, None].expand_as(top_index)  # (n', k)
        labels = top_index % num_classes  # (n', k)
        keep = torch.zeros_like(valid)
        keep[valid] = _greedy_nms_in_order(
            boxes_xyxy[pending[:, None], top_index // num_classes][valid],
            (rows * num_classes + labels)[valid],
            nms_iou_threshold,
        )
        # Survival depends only on higher-scoring candidates, so the top survivors are final once there are
        # max_detections of them, or once every candidate of the image was among the top k.
        done = (keep.sum(dim=1) >= max_detections) | (num_candidates[pending] <= k)  # (n',)
        keep &= keep.cumsum(dim=1) <= max_detections
        finished = done.nonzero().flatten()
        _collect(results, pending[finished], keep[finished], top_scores[finished], top_index[finished],
                 boxes_xyxy, num_classes)
        pending = pending[~done]
        if pending.numel() > 0:
            logger.debug("decode: %d image(s) need more than their top %d candidates", pending.numel(), k)
        top_k = min(scores.shape[1], 2 * top_k)
    return results  # type: ignore[return-value]


def _collect(results: list, images: Tensor, keep: Tensor, top_scores: Tensor, top_index: Tensor,
             boxes_xyxy: Tensor, num_classes: int) -> None:
    """Store the kept candidates of finished images: (n', k) mask whose rows are in score order."""
    counts = keep.sum(dim=1).tolist()  # (n',)
    flat_index = top_index[keep]  # (D_all,) image by image, score descending within each
    image_of = images[:, None].expand_as(keep)[keep]  # (D_all,)
    parts = zip(
        boxes_xyxy[image_of, flat_index // num_classes].split(counts),
        top_scores[keep].split(counts),
        (flat_index % num_classes).split(counts),
        strict=True,
    )
    for image, (boxes, scores, labels) in zip(images.tolist(), parts, strict=True):
        results[image] = Detections(boxes, scores, labels)


def _greedy_nms_in_order(boxes_xyxy: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Exact greedy NMS within groups of (K, 4) xyxy boxes given in priority order -> (K,) bool keep mask.

    Equal to torchvision's ``batched_nms`` on the same boxes ranked in the same order, but with no Python loop
    over groups: only pairs of one group are compared, and the keep mask is the unique fixed point of
    keep[b] = no kept earlier box a of b's group has IoU(a, b) > iou_threshold, reached by plain iteration
    (after t rounds every box with a suppression chain shorter than t is final).
    """
    num = groups.numel()
    if num == 0:
        return torch.zeros(0, dtype=torch.bool, device=groups.device)
    order = torch.argsort(groups, stable=True)  # (K,) groups contiguous, priority order within each
    sizes = torch.unique_consecutive(groups[order], return_counts=True)[1]  # (G,)
    boxes_sorted = boxes_xyxy[order]  # (K, 4)
    earlier, later = _pairs_within_runs(sizes)  # (pairs,) positions in `order`, earlier < later
    overlap = box_iou_aligned(boxes_sorted[earlier], boxes_sorted[later]) > iou_threshold  # (pairs,)
    earlier, later = earlier[overlap], later[overlap]
    keep_sorted = torch.ones(num, dtype=torch.bool, device=groups.device)
    for _ in range(num + 1):  # at most K + 1 rounds; usually 2-4
        suppressed = torch.zeros_like(keep_sorted).index_fill_(0, later[keep_sorted[earlier]], True)
        if torch.equal(~suppressed, keep_sorted):
            break
        keep_sorted = ~suppressed
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted
    return keep


def _pairs_within_runs(sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Consecutive runs of the given sizes -> every pair (a, b), a < b, of positions within one run."""
    total = int(sizes.sum())
    starts = sizes.cumsum(0) - sizes  # (G,)
    position = torch.arange(total, device=sizes.device)
    after = (starts + sizes).repeat_interleave(sizes) - 1 - position  # (total,) later members of the same run
    first = torch.repeat_interleave(position, after)  # (pairs,)
    offset = torch.arange(first.numel(), device=sizes.device) - (after.cumsum(0) - after).repeat_interleave(after)
    return first, first + 1 + offset


def _predicted_boxes_xyxy(preds: Tensor, boxes_per_cell: int) -> Tensor:
    """(N, S, S, 5B + C) float predictions -> (N, S*S*B, 4) image-normalised xyxy boxes clipped to [0, 1]."""
    n, s = preds.shape[0], preds.shape[1]
    raw = preds[..., : 5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)  # (N, S, S, B, 5)
    grid = torch.arange(s, dtype=preds.dtype, device=preds.device)
    cx = (raw[..., 0] + grid[None, None, :, None]) / s  # column j runs along dim 2
    cy = (raw[..., 1] + grid[None, :, None, None]) / s  # row i runs along dim 1
    boxes_cxcywh = torch.stack((cx, cy, raw[..., 2].square(), raw[..., 3].square()), dim=-1)  # (N, S, S, B, 4)
    return cxcywh_to_xyxy(boxes_cxcywh).clamp_(0.0, 1.0).reshape(n, s * s * boxes_per_cell, 4)


def _check_predictions(predictions: Tensor, boxes_per_cell: int, num_classes: int) -> tuple[int, int]:
    if boxes_per_cell < 1 or num_classes < 1:
        raise ValueError(f"boxes_per_cell and num_classes must be >= 1, got {boxes_per_cell} and {num_classes}")
    channels = 5 * boxes_per_cell + num_classes
    shape = tuple(predictions.shape)
    if predictions.dim() != 4 or shape[1] != shape[2] or shape[3] != channels:
        raise ValueError(f"predictions must be (N, S, S, 5B + C) = (N, S, S, {channels}) for B={boxes_per_cell}, "
                         f"C={num_classes}; got {shape}")
    if not predictions.is_floating_point():
        raise ValueError(f"predictions must be a float tensor, got {predictions.dtype}")
    return shape[0], shape[1]


def _check_encode_inputs(boxes_cxcywh: Tensor, labels: Tensor, grid_size: int, num_classes: int) -> None:
    if grid_size < 1 or num_classes < 1:
        raise ValueError(f"grid_size and num_classes must be >= 1, got {grid_size} and {num_classes}")
    if boxes_cxcywh.dim() != 2 or boxes_cxcywh.shape[1] != 4 or not boxes_cxcywh.is_floating_point():
        raise ValueError(f"boxes_cxcywh must be a (K, 4) float tensor, got {tuple(boxes_cxcywh.shape)} "
                         f"{boxes_cxcywh.dtype}")
    if labels.shape != boxes_cxcywh.shape[:1] or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a ({boxes_cxcywh.shape[0]},) integer tensor, got {tuple(labels.shape)} "
                         f"{labels.dtype}")
    if boxes_cxcywh.shape[0] == 0:
        return
    checks = (
        (torch.isfinite(boxes_cxcywh).all(dim=1), "has a non-finite value"),
        (((boxes_cxcywh >= 0) & (boxes_cxcywh <= 1)).all(dim=1), "has a coordinate outside [0, 1]"),
        ((boxes_cxcywh[:, 2:] > 0).all(dim=1), "has w or h <= 0"),
        ((labels >= 0) & (labels < num_classes), f"has a label outside [0, {num_classes})"),
    )
    if bool(torch.stack([ok for ok, _ in checks]).all()):  # one device sync on the happy path
        return
    for ok, problem in checks:
        bad = (~ok).nonzero().flatten()
        if bad.numel() > 0:
            i = int(bad[0])
            raise ValueError(f"box {i} {problem}: (cx, cy, w, h) = {boxes_cxcywh[i].tolist()}, label = "
                             f"{int(labels[i])} ({bad.numel()} of {labels.numel()} boxes fail this check)")
