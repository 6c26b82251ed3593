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
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import nms as _tv_nms

__all__ = ["EncodedTarget", "Detections", "BatchDetections", "cell_indices", "encode", "decode", "decode_batch",
           "targets_to_predictions"]

logger = logging.getLogger(__name__)

# decode's first pass runs NMS on each image's best max_detections * (1 + 1/4) candidates: the cost of NMS grows
# with the square of that number, and images where suppression leaves fewer than max_detections are redone.
_FIRST_TOP_K_SPARE = 4
# Boxes per NMS kernel call on CPU (groups are packed up to about this many; benchmarks/bench_nms.py).
_CPU_NMS_CHUNK = 256
# On CPU, when the pairs within groups number at most this many per box (many small groups, as in decode's
# default regime), `_greedy_nms_runs` compares them all at once instead of calling the kernel per chunk.
_CPU_PAIRS_PER_BOX = 8
# Threads for decode on CPU (None: leave torch's setting alone); benchmarks/bench_decode.py compares 1 and 2.
_DECODE_CPU_THREADS: int | None = 1


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


class BatchDetections(NamedTuple):
    """Detections of a whole batch, flat, image by image and by score descending within each image:
    ``boxes_xyxy`` (D, 4) image-normalised float32, ``scores`` (D,) float32, ``labels`` (D,) int64 class
    indices, ``image_index`` (D,) int64 position of each detection's image in the batch (non-decreasing)."""

    boxes_xyxy: Tensor
    scores: Tensor
    labels: Tensor
    image_index: Tensor


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

    `decode_batch` does the work; this splits its flat result by image, which costs one more host sync.
    """
    flat = decode_batch(predictions, boxes_per_cell=boxes_per_cell, num_classes=num_classes,
                        score_threshold=score_threshold, nms_iou_threshold=nms_iou_threshold,
                        max_detections=max_detections)
    n = predictions.shape[0]
    counts = torch.zeros(n, dtype=torch.int64, device=flat.image_index.device)
    counts.index_add_(0, flat.image_index, torch.ones_like(flat.image_index))  # (N,) no sync, unlike bincount
    parts = [t.split(counts.tolist()) for t in flat[:3]] if n else [[], [], []]
    return [Detections(*p) for p in zip(*parts, strict=True)]


@torch.no_grad()
def decode_batch(
    predictions: Tensor,
    *,
    boxes_per_cell: int,
    num_classes: int,
    score_threshold: float,
    nms_iou_threshold: float,
    max_detections: int,
) -> BatchDetections:
    """`decode` for a whole batch, returned flat (see `BatchDetections`) so that a caller can move it to the host
    in one transfer. Same arguments, same detections as `decode`.

    No loop over images, cells or boxes, and a fixed number of host syncs per call whatever N is: each image's
    best max_detections * 5/4 candidates are taken by `torch.topk` and go through one batched NMS (image x class
    groups); images whose top candidates leave fewer than ``max_detections`` survivors are redone with twice as
    many (rarely needed; each such round adds the same few syncs), so the result is exact. On CPU the work runs on
    one thread: these are many small ops, which extra threads slow down on a busy machine (benchmarks/bench_decode.py).
    """
    n, s = _check_predictions(predictions, boxes_per_cell, num_classes)
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    with _cpu_threads(_DECODE_CPU_THREADS if predictions.device.type == "cpu" else None):
        return _decode_batch(predictions.float(), n, s, boxes_per_cell, num_classes, score_threshold,
                             nms_iou_threshold, max_detections)


def _decode_batch(preds: Tensor, n: int, s: int, boxes_per_cell: int, num_classes: int, score_threshold: float,
                  nms_iou_threshold: float, max_detections: int) -> BatchDetections:
    device = preds.device
    num_predictors = s * s * boxes_per_cell  # P
    boxes_flat = _predicted_boxes_xyxy(preds, boxes_per_cell).view(n * num_predictors, 4)  # (N*P, 4)
    cells = preds[..., 5 * boxes_per_cell :].reshape(n, s * s, 1, num_classes)  # (N, S*S, 1, C)
    conf = preds[..., 4 : 5 * boxes_per_cell : 5].reshape(n, s * s, boxes_per_cell, 1)  # (N, S*S, B, 1)
    scores = (conf * cells).reshape(n, s * s * boxes_per_cell * num_classes)  # (N, P*C): predictor * C + class
    # Every non-candidate (score <= score_threshold, or NaN) becomes -inf, so that topk ranks every candidate first:
    # threshold_ then nan_to_num_ gives the same tensor, bit for bit, as masked_fill_(~(scores > threshold), -inf)
    # (tests/test_encode.py), with two cheap elementwise kernels instead of a comparison and a slow masked fill.
    if math.isnan(score_threshold):  # nothing is > NaN
        scores.fill_(float("-inf"))
    else:
        torch.threshold_(scores, score_threshold, float("-inf"))  # x <= threshold -> -inf; NaN stays NaN
        scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    num_candidates = torch.count_nonzero(scores > score_threshold, dim=1)  # (N,) int64

    found: list[tuple[Tensor, Tensor]] = []  # (image, flat candidate index) of kept detections, one per round
    pending = torch.arange(n, device=device)
    most = int(num_candidates.max()) if n else 0  # host sync 0, once: no round looks past the last candidate
    top_k = min(most, max_detections + max_detections // _FIRST_TOP_K_SPARE)
    while pending.numel() > 0:
        pending_scores = scores if pending.numel() == n else scores.index_select(0, pending)  # (n', P*C)
        top_scores, top_index = pending_scores.topk(top_k, dim=1)  # (n', k) each, by score descending
        # Positions in the flattened (n', k) top lists; index_select on flat views is cheaper than 2-D indexing.
        valid = (top_scores > score_threshold).view(-1).nonzero().squeeze(1)  # (V,) host sync 1
        row, flat = valid // top_k, top_index.view(-1).index_select(0, valid)  # (V,) each
        box_index = pending.index_select(0, row) * num_predictors + flat // num_classes  # (V,) into (N*P,)
        kept = _batched_nms(boxes_flat.index_select(0, box_index), top_scores.view(-1).index_select(0, valid),
                            row * num_classes + flat % num_classes, nms_iou_threshold, coordinate_range=(0.0, 1.0),
                            in_priority_order=True)  # (kept,) host sync 2: the NMS kernel
        keep = torch.zeros(top_scores.numel(), dtype=torch.bool, device=device)
        keep = keep.index_fill_(0, valid.index_select(0, kept), True).view_as(top_scores)  # (n', k)
        # Survival depends only on higher-scoring candidates, so the top survivors are final once there are
        # max_detections of them, or once every candidate of the image was among the top k.
        done = (keep.sum(dim=1) >= max_detections) | (num_candidates.index_select(0, pending) <= top_k)  # (n',)
        keep &= (keep.cumsum(dim=1) <= max_detections) & done[:, None]
        final = keep.view(-1).nonzero().squeeze(1)  # host sync 3; image by image, score descending within each
        found.append((pending.index_select(0, final // top_k), top_index.view(-1).index_select(0, final)))
        pending = pending[~done]  # host sync 4
        if pending.numel() > 0:
            logger.debug("decode: %d image(s) need more than their top %d candidates", pending.numel(), top_k)
        top_k = min(most, 2 * top_k)
    if not found:  # N = 0
        found.append((pending, pending))
    image, flat = torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])  # (D,) each
    if len(found) > 1:  # images finished in different rounds: restore image order, keeping score order within
        order = torch.sort(image, stable=True).indices
        image, flat = image[order], flat[order]
    return BatchDetections(boxes_flat.index_select(0, image * num_predictors + flat // num_classes),
                           scores.view(-1).index_select(0, image * (num_predictors * num_classes) + flat),
                           flat % num_classes, image)


def _batched_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, *,
                 coordinate_range: tuple[float, float] | None = None, in_priority_order: bool = False) -> Tensor:
    """Greedy NMS within groups -> int64 indices of the kept boxes: (K, 4) xyxy boxes, (K,) scores, (K,) int64
    group ids >= 0. By score descending when one kernel call does it all; otherwise call by call.

    torchvision's NMS kernel on the boxes of group g shifted by g * span (the coordinate trick of torchvision's
    ``batched_nms``), in float64, with span = ceil(max) - floor(min) + 1 an integer (``coordinate_range`` gives
    (min, max) when the caller knows it, as decode does for its [0, 1] boxes, saving the reductions). Adding an
    integer below 2**m in float64 is exact for float32 coordinates above 2**(m - 29) in magnitude (1.5e-5 for
    1,280 groups of [0, 1] boxes) and off by under 1e-12 below that, so the decisions are those of a per-group
    float64 NMS; torchvision's own offsets (id * (max + 1) in the input dtype) lose 1e-4 in float32 with 1,280
    groups of [0, 1] boxes. Equal scores: the kernel's sort decides, as in torchvision.

    Off the CPU: one kernel call (one host sync, the kernel's own). On CPU (one thread, see `_DECODE_CPU_THREADS`),
    where the kernel compares each kept box with every later box of its call: up to `_CPU_NMS_CHUNK` boxes or a
    single group, one call; many small groups (at most `_CPU_PAIRS_PER_BOX` within-group pairs per box, decode's
    default regime), `_greedy_nms_runs` on all their pairs at once; otherwise whole groups packed into calls
    of about `_CPU_NMS_CHUNK` boxes, so a box is rarely compared with unrelated groups.

    ``in_priority_order=True`` is the caller's promise that within each group the boxes already come by score
    descending (equal scores in the order they should be taken), as decode's top-k lists do: the small-group path
    then needs one sort (by group) instead of three. Without it, equal scores go by position on that path.
    """
    k = scores.numel()
    if k == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    on_cpu = scores.device.type == "cpu"
    with _cpu_threads(_DECODE_CPU_THREADS if on_cpu else None):
        scores64 = scores.double()
        if not on_cpu or _CPU_NMS_CHUNK is None or k <= _CPU_NMS_CHUNK or bool((groups == groups[0]).all()):
            return _tv_nms(_shifted_boxes(boxes_xyxy, groups, coordinate_range), scores64, iou_threshold)
        order = torch.argsort(groups, stable=True)  # (K,) groups contiguous, input order within each
        sizes = torch.unique_consecutive(groups.index_select(0, order), return_counts=True)[1]  # (G,)
        num_pairs = int((sizes * (sizes - 1)).sum()) // 2  # within groups
        if num_pairs <= _CPU_PAIRS_PER_BOX * k:  # many small groups: all their pairs at once, in priority order
            if not in_priority_order:
                ranked = torch.argsort(scores64, descending=True, stable=True)  # (K,) priority order
                order = ranked[torch.argsort(groups[ranked], stable=True)]  # (K,) the same, groups contiguous
            boxes_sorted = boxes_xyxy.index_select(0, order).double()  # (K, 4)
            return order[_greedy_nms_runs(boxes_sorted, sizes, iou_threshold, num_pairs)]
        # Groups starting in the same window of _CPU_NMS_CHUNK positions share a call: < chunk + 1 group each.
        shifted = _shifted_boxes(boxes_xyxy, groups, coordinate_range)
        window = (sizes.cumsum(0) - sizes) // _CPU_NMS_CHUNK  # (G,) non-decreasing
        call_sizes = torch.zeros(int(window[-1]) + 1, dtype=torch.int64).index_add_(0, window, sizes)
        return torch.cat([members[_tv_nms(shifted[members], scores64[members], iou_threshold)]
                          for members in order.split(call_sizes[call_sizes > 0].tolist())])


def _shifted_boxes(boxes_xyxy: Tensor, groups: Tensor, coordinate_range: tuple[float, float] | None) -> Tensor:
    """(K, 4) boxes -> (K, 4) float64 boxes of group g moved by g * span, an integer (see `_batched_nms`)."""
    boxes64 = boxes_xyxy.double()
    if coordinate_range is None:
        low, high = boxes64.min().floor(), boxes64.max().ceil()  # 0-d tensors: no sync
        boxes64, span = boxes64 - low, high - low + 1
    else:
        low, high = math.floor(coordinate_range[0]), math.ceil(coordinate_range[1])
        boxes64, span = (boxes64 - low if low else boxes64), high - low + 1
    return torch.add(boxes64, groups.double()[:, None], alpha=span) if isinstance(span, int) else (
        boxes64 + (groups.double() * span)[:, None])  # (K, 4), a new tensor: groups never overlap


def _greedy_nms_runs(boxes_xyxy: Tensor, sizes: Tensor, iou_threshold: float,
                     num_pairs: int | None = None) -> Tensor:
    """Exact greedy NMS within consecutive runs (groups) of the given (G,) sizes of (K, 4) xyxy boxes, each run in
    priority order -> (K,) bool keep mask.

    For many small groups on CPU (see `_batched_nms`): only pairs of one group are compared, all at once, and
    the keep mask is the unique fixed point of
    keep[b] = no kept earlier box a of b's group has IoU(a, b) > iou_threshold, reached by plain iteration
    (after t rounds every box with a suppression chain shorter than t is final).
    """
    num = boxes_xyxy.shape[0]
    earlier, later = _pairs_within_runs(sizes, num_pairs)  # (pairs,) positions, earlier < later
    # `box_iou_aligned`'s arithmetic, on contiguous coordinate columns (much faster than (pairs, 2) slices) and
    # with each box's area computed once rather than once per pair.
    x1, y1, x2, y2 = boxes_xyxy.t().contiguous()  # (K,) each
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)  # (K,)

    def pick(column: Tensor) -> tuple[Tensor, Tensor]:
        return column.index_select(0, earlier), column.index_select(0, later)  # (pairs,) each

    (x1a, x1b), (y1a, y1b), (x2a, x2b), (y2a, y2b), (area_a, area_b) = map(pick, (x1, y1, x2, y2, area))
    inter = ((torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp_(min=0)
             * (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp_(min=0))  # (pairs,)
    overlap = ((inter / (area_a + area_b - inter).clamp_(min=1e-9)) > iou_threshold).nonzero().squeeze(1)
    earlier, later = earlier.index_select(0, overlap), later.index_select(0, overlap)
    keep = torch.ones(num, dtype=torch.bool, device=boxes_xyxy.device)
    for _ in range(num + 1):  # at most K + 1 rounds; usually 2-4
        suppressed = torch.zeros_like(keep).index_fill_(0, later[keep[earlier]], True)
        if torch.equal(~suppressed, keep):
            break
        keep = ~suppressed
    return keep


def _pairs_within_runs(sizes: Tensor, num_pairs: int | None = None) -> tuple[Tensor, Tensor]:
    """Consecutive runs of the given (G,) sizes -> every pair (a, b), a < b, of positions within one run: two
    (pairs,) int64 tensors, by a then b. ``num_pairs``, when the caller knows it, is sum(size * (size - 1) / 2)."""
    total = int(sizes.sum())
    if num_pairs is None:
        num_pairs = int((sizes * (sizes - 1)).sum()) // 2
    position = torch.arange(total, device=sizes.device)
    after = sizes.cumsum(0).repeat_interleave(sizes, output_size=total) - 1 - position  # (total,) later in run
    first = torch.repeat_interleave(after, output_size=num_pairs)  # (pairs,) position a, `after[a]` times
    start = after.cumsum(0) - after  # (total,) where the pairs of each first position start
    second = torch.arange(1, num_pairs + 1, device=sizes.device) - start.index_select(0, first) + first
    return first, second


@contextmanager
def _cpu_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``num_threads`` (None: unchanged), then restore it.
    The setting is process-wide: another thread running torch ops meanwhile sees it too."""
    before = torch.get_num_threads()
    if num_threads is None or num_threads == before:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _predicted_boxes_xyxy(preds: Tensor, boxes_per_cell: int) -> Tensor:
    """(N, S, S, 5B + C) float predictions -> (N, S*S*B, 4) image-normalised xyxy boxes clipped to [0, 1]."""
    n, s = preds.shape[0], preds.shape[1]
    raw = preds[..., : 5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)  # (N, S, S, B, 5)
    grid = torch.arange(s, dtype=preds.dtype, device=preds.device)
    cells = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), dim=-1)[:, :, None]  # (S, S, 1, 2): (j, i)
    centre = (raw[..., :2] + cells) / s  # (N, S, S, B, 2) = (cx, cy)
    half = raw[..., 2:4].square() / 2  # (N, S, S, B, 2) = (w / 2, h / 2)
    # cxcywh_to_xyxy's arithmetic (c - w / 2, c + w / 2) in fewer, larger ops.
    return torch.cat((centre - half, centre + half), dim=-1).clamp_(0.0, 1.0).reshape(n, s * s * boxes_per_cell, 4)


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
