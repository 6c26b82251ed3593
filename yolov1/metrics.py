"""PASCAL VOC detection mAP with the devkit's rules, as pure functions on in-memory per-image arrays.

Matching (greedy, by score, difficult objects ignored) is vectorised per class; AP is either VOC2007's 11-point
interpolation or VOC2010+'s area under the precision envelope. A match needs IoU >= 0.5 by default, the official
devkit's rule (``VOCevaldet.m``: ``if ovmax>=VOCopts.minoverlap``); the Python ports' ``> 0.5`` is an option
(``match_comparison=">"``). The two differ only on exact ties. No file I/O: callers pass arrays or tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "AP_METHODS",
    "MATCH_COMPARISONS",
    "ImageDetections",
    "ImageGroundTruth",
    "ClassMatches",
    "VOCResult",
    "voc_ap",
    "match_detections",
    "evaluate_detections",
    "evaluate_both",
]

logger = logging.getLogger(__name__)

APMethod = Literal["voc07", "area"]
AP_METHODS: tuple[str, ...] = ("voc07", "area")
MatchComparison = Literal[">=", ">"]
# ">=": the official MATLAB devkit (VOCevaldet.m); ">": py-faster-rcnn's voc_eval, detectron2, mmdetection.
MATCH_COMPARISONS: tuple[str, ...] = (">=", ">")
# Built exactly as the devkit ports build it (np.arange, so 0.30000000000000004 etc.): a recall of exactly 0.3
# then does not reach the 0.3 threshold, in the ports and here alike.
_VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)  # (11,)


class ImageDetections(NamedTuple):
    """One image's detections: boxes_xyxy (D, 4) pixels, scores (D,), labels (D,) int in [0, C)."""

    boxes_xyxy: Any
    scores: Any
    labels: Any


class ImageGroundTruth(NamedTuple):
    """One image's objects: boxes_xyxy (G, 4) pixels, labels (G,) int in [0, C), difficult (G,) bool or None."""

    boxes_xyxy: Any
    labels: Any
    difficult: Any = None


class ClassMatches(NamedTuple):
    """One class's detections over all images, by score descending: scores, tp, fp (D_c,); neither = ignored."""

    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_positives: int


@dataclass(frozen=True, eq=False)
class VOCResult:
    """Per-class VOC AP. ``ap`` (C,) is NaN for a class without non-difficult ground truth, and ``map`` is the mean
    over the other classes (NaN when no class has any). ``precision``/``recall`` are each class's curves over its
    detections by score descending (recall is NaN for classes without ground truth). ``match_comparison`` is the
    rule that produced it: ">=" (IoU >= iou_threshold, the official devkit) or ">" (strictly above, the ports)."""

    ap: np.ndarray
    map: float
    num_positives: np.ndarray
    precision: list[np.ndarray]
    recall: list[np.ndarray]
    method: str
    iou_threshold: float
    inclusive_pixels: bool
    match_comparison: str = ">="

    @property
    def classes_without_gt(self) -> list[int]:
        """Indices of the classes with no non-difficult ground truth (their AP is NaN, left out of the mean)."""
        return np.flatnonzero(self.num_positives == 0).tolist()

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-able summary: map, per-class AP and positives by class name; None stands for NaN (no ground truth)."""
        if len(class_names) != len(self.ap):
            raise ValueError(f"to_dict: got {len(class_names)} class names for {len(self.ap)} classes")
        return {
            "method": self.method,
            "iou_threshold": self.iou_threshold,
            "match_comparison": self.match_comparison,
            "inclusive_pixels": self.inclusive_pixels,
            "map": _nan_to_none(self.map),
            "ap": {name: _nan_to_none(ap) for name, ap in zip(class_names, self.ap.tolist(), strict=True)},
            "num_positives": dict(zip(class_names, self.num_positives.tolist(), strict=True)),
        }


def voc_ap(recall: np.ndarray, precision: np.ndarray, method: APMethod) -> float:
    """AP of one class from its (D,) recall and precision over detections sorted by score descending.

    ``"voc07"``: mean over recall thresholds 0, 0.1, ..., 1 of the max precision at recall >= threshold (0 if none).
    ``"area"`` (VOC2010+): area under the right-to-left running max of precision, summed where recall changes.
    Empty inputs give 0.0.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"voc_ap: recall {recall.shape} and precision {precision.shape} must be 1-D, equal")
    if method == "voc07":
        reached = recall[None, :] >= _VOC07_RECALL_THRESHOLDS[:, None]  # (11, D)
        best = np.where(reached, precision[None, :], -np.inf).max(axis=1, initial=-np.inf)  # (11,)
        return float(np.where(np.isneginf(best), 0.0, best).mean())
    if method == "area":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]  # (D + 2,)
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    raise ValueError(f"voc_ap: method must be one of {AP_METHODS}, got {method!r}")


def match_detections(
    detections: Sequence[Any],
    ground_truths: Sequence[Any],
    *,
    num_classes: int,
    iou_threshold: float,
    inclusive_pixels: bool = False,
    match_comparison: MatchComparison = ">=",
) -> list[ClassMatches]:
    """Mark every detection TP, FP or ignored with the VOC devkit's rules, one ClassMatches per class (C entries).

    ``detections[i]`` is image i's (boxes_xyxy (D, 4), scores (D,), labels (D,)); ``ground_truths[i]`` its
    (boxes_xyxy (G, 4), labels (G,), difficult (G,) bool or None); numpy arrays or torch tensors, pixel xyxy.
    Per class, by score descending (stable: ties keep input order, as the devkit's MATLAB sort does), a detection
    takes the first highest-IoU ground truth of its class in its image: a hit (IoU >= iou_threshold with the default
    ``match_comparison=">="``, the official devkit's ``ovmax>=minoverlap``; IoU > iou_threshold with ``">"``, the
    Python ports' rule) not yet taken -> TP, taken -> FP (it does not fall back to another one), no hit -> FP,
    a hit on a difficult one -> ignored. A detection in an image without ground truth of its class is FP whatever
    the threshold. So the TPs are the first claims of each non-difficult ground truth, which makes this vectorisable.

    ``inclusive_pixels=True`` adds 1 to widths, heights and intersections (the devkit's inclusive integer pixels).
    The project's boxes are continuous with VOC's corners stored as (xmin - 1, ymin - 1, xmax, ymax); their plain
    IoU equals the devkit's +1 IoU on the original integers, so the pipeline passes False and gets the devkit's mAP.
    Zero-union pairs (two degenerate boxes) get IoU 0.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    if match_comparison not in MATCH_COMPARISONS:
        raise ValueError(f"match_comparison must be one of {MATCH_COMPARISONS}, got {match_comparison!r}")
    det_boxes, det_scores, det_labels, det_image = _flatten_detections(detections, num_classes)
    gt_boxes, gt_labels, gt_difficult, gt_image = _flatten_ground_truths(ground_truths, num_classes)
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truths)} of ground truth")
    det_groups = _group_by_label(det_labels, num_classes)
    gt_groups = _group_by_label(gt_labels, num_classes)  # input order, so each group is sorted by image
    offset = 1.0 if inclusive_pixels else 0.0
    matches = []
    for d, g in zip(det_groups, gt_groups, strict=True):
        scores = np.take(det_scores, d)
        order = np.argsort(-scores, kind="stable")  # ties keep input order
        d, scores = np.take(d, order), np.take(scores, order)
        difficult = np.take(gt_difficult, g)
        tp, fp = _match_class(
            np.take(det_boxes, d, axis=0),  # np.take: several times faster than fancy indexing here
            np.take(det_image, d),
            np.take(gt_boxes, g, axis=0),
            np.take(gt_image, g),
            difficult,
            len(detections),
            iou_threshold,
            offset,
            match_comparison == ">=",
        )
        matches.append(ClassMatches(scores, tp, fp, int(np.count_nonzero(~difficult))))
    logger.debug("matched %d detections against %d ground truths", len(det_scores), len(gt_labels))
    return matches


def evaluate_detections(
    detections: Sequence[Any],
    ground_truths: Sequence[Any],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
    method: APMethod = "voc07",
    inclusive_pixels: bool = False,
    match_comparison: MatchComparison = ">=",
) -> VOCResult:
    """VOC AP per class and mAP with one AP ``method``; inputs and matching rules as in :func:`match_detections`.

    iou_threshold=0.5 is the VOC definition. VOC2007 test (the YOLOv1 paper's 63.4) uses method="voc07".
    """
    if method not in AP_METHODS:
        raise ValueError(f"method must be one of {AP_METHODS}, got {method!r}")
    results = _evaluate(detections, ground_truths, num_classes, iou_threshold, inclusive_pixels, match_comparison,
                        (method,))
    return results[method]


def evaluate_both(
    detections: Sequence[Any],
    ground_truths: Sequence[Any],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
    inclusive_pixels: bool = False,
    match_comparison: MatchComparison = ">=",
) -> dict[str, VOCResult]:
    """{"voc07": ..., "area": ...} from one matching pass (the expensive part); see :func:`evaluate_detections`."""
    return _evaluate(detections, ground_truths, num_classes, iou_threshold, inclusive_pixels, match_comparison,
                     AP_METHODS)


def _evaluate(detections, ground_truths, num_classes, iou_threshold, inclusive_pixels, match_comparison, methods):
    kwargs = dict(num_classes=num_classes, iou_threshold=iou_threshold, inclusive_pixels=inclusive_pixels,
                  match_comparison=match_comparison)
    matches = match_detections(detections, ground_truths, **kwargs)
    curves = _curves(matches)
    rule = (iou_threshold, inclusive_pixels, match_comparison)
    return {m: _result(matches, m, rule, curves) for m in methods}


def _match_class(det_boxes, det_image, gt_boxes, gt_image, gt_difficult, num_images, iou_threshold, offset,
                 inclusive_match):
    """TP and FP flags (D,) of one class's detections (sorted by score) against its ground truth (sorted by image).

    ``inclusive_match``: a hit is IoU >= iou_threshold (the devkit), else IoU > iou_threshold (the ports)."""
    n = len(det_boxes)
    if n == 0 or len(gt_boxes) == 0:
        return np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    per_image = np.bincount(gt_image, minlength=num_images)  # (num_images,)
    count = np.take(per_image, det_image)  # (D,) objects in the detection's image
    first = np.take(np.cumsum(per_image) - per_image, det_image)  # (D,) index of the first of them
    slot = np.arange(max(int(count.max()), 1))  # (Gmax,)
    gt_index = np.minimum(first[:, None] + slot, len(gt_boxes) - 1)  # (D, Gmax), clipped past the end
    iou = _devkit_iou(det_boxes[:, None, :], np.take(gt_boxes, gt_index, axis=0), offset)  # (D, Gmax)
    iou = np.where(slot < count[:, None], iou, -np.inf)  # padding never wins
    best = iou.argmax(axis=1)[:, None]  # (D, 1) first maximum, as the devkit
    best_gt = np.take_along_axis(gt_index, best, axis=1)[:, 0]  # (D,)
    best_iou = np.take_along_axis(iou, best, axis=1)[:, 0]  # (D,) -inf never hits: padding only
    hit = best_iou >= iou_threshold if inclusive_match else best_iou > iou_threshold  # (D,)
    claims = np.flatnonzero(hit & ~np.take(gt_difficult, best_gt))  # difficult hits are neither TP nor FP
    _, first_claim = np.unique(best_gt[claims], return_index=True)  # first claim in score order wins
    tp = np.zeros(n, dtype=bool)
    tp[claims[first_claim]] = True
    fp = ~hit
    fp[claims] = True
    fp[tp] = False
    return tp, fp


def _group_by_label(labels, num_classes):
    """Indices of each class's entries, in input order: a list of C int arrays."""
    small = labels.astype(np.int16) if num_classes <= 2**15 else labels  # numpy radix-sorts 16-bit ints
    order = np.argsort(small, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=num_classes))  # (C,)
    return np.split(order, bounds[:-1])


def _devkit_iou(a, b, offset):
    """IoU of broadcast (..., 4) xyxy boxes, written as the devkit ports write it so thresholds compare bit for bit."""
    iw = np.maximum(np.minimum(b[..., 2], a[..., 2]) - np.maximum(b[..., 0], a[..., 0]) + offset, 0.0)
    ih = np.maximum(np.minimum(b[..., 3], a[..., 3]) - np.maximum(b[..., 1], a[..., 1]) + offset, 0.0)
    inters = iw * ih
    uni = (
        (a[..., 2] - a[..., 0] + offset) * (a[..., 3] - a[..., 1] + offset)
        + (b[..., 2] - b[..., 0] + offset) * (b[..., 3] - b[..., 1] + offset)
        - inters
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(uni > 0, inters / uni, 0.0)


def _curves(matches):
    """Per class (precision, recall) (D_c,), the devkit's way; recall is NaN without positives."""
    curves = []
    for m in matches:
        tp = np.cumsum(m.tp, dtype=np.float64)
        fp = np.cumsum(m.fp, dtype=np.float64)
        # eps: leading ignored (difficult) detections get precision 0, not 0/0
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        recall = tp / m.num_positives if m.num_positives else np.full(len(tp), np.nan)
        precision.flags.writeable = recall.flags.writeable = False  # shared by both methods' results
        curves.append((precision, recall))
    return curves


def _result(matches, method, rule, curves):
    iou_threshold, inclusive_pixels, match_comparison = rule
    num_positives = np.array([m.num_positives for m in matches], dtype=np.int64)  # (C,)
    ap = np.array(
        [voc_ap(r, p, method) if n else np.nan for (p, r), n in zip(curves, num_positives, strict=True)],
        dtype=np.float64,
    )  # (C,)
    with_gt = num_positives > 0
    mean_ap = float(ap[with_gt].mean()) if with_gt.any() else float("nan")
    return VOCResult(
        ap=ap,
        map=mean_ap,
        num_positives=num_positives,
        precision=[p for p, _ in curves],
        recall=[r for _, r in curves],
        method=method,
        iou_threshold=float(iou_threshold),
        inclusive_pixels=bool(inclusive_pixels),
        match_comparison=match_comparison,
    )


def _flatten_detections(detections, num_classes):
    """Concatenate per-image detections -> boxes (D, 4) f64, scores (D,) f64, labels (D,) i64, image index (D,)."""
    (boxes, scores, labels), image = _concat(detections, ("boxes_xyxy", "scores", "labels"), "detections")
    scores = scores.astype(np.float64, copy=False)
    if not np.isfinite(scores).all():
        raise ValueError(f"detections: image {image[np.argmax(~np.isfinite(scores))]} has a non-finite score")
    labels = _checked_labels(labels, num_classes, image, "detections")
    return _checked_boxes(boxes, image, "detections"), scores, labels, image


def _flatten_ground_truths(ground_truths, num_classes):
    """Concatenate per-image objects -> boxes (G, 4) f64, labels (G,) i64, difficult (G,) bool, image index (G,)."""
    fields = ("boxes_xyxy", "labels", "difficult")
    (boxes, labels, difficult), image = _concat(ground_truths, fields, "ground_truths")
    labels = _checked_labels(labels, num_classes, image, "ground_truths")
    return _checked_boxes(boxes, image, "ground_truths"), labels, difficult.astype(bool), image


def _concat(items, fields, what):
    """Per-image tuples of arrays/tensors -> (one array per field concatenated over images, image index (total,)).

    Fast path: numpy (or CPU tensor) fields of consistent shapes, concatenated in one go. Anything else (tensors on
    a device, empty boxes not shaped (0, 4), missing difficult flags, bad shapes) goes image by image."""
    n_images = len(items)
    if n_images == 0:
        return (np.zeros((0, 4)), np.zeros(0), np.zeros(0)), np.zeros(0, dtype=np.int64)
    columns = list(zip(*items, strict=False)) if set(map(len, items)) == {len(fields)} else []
    if columns and not any(x is None for x in columns[2]):
        try:
            counts = np.fromiter(map(len, columns[1]), dtype=np.int64, count=n_images)
            arrays = tuple(np.concatenate(column) for column in columns)
            others = (np.fromiter(map(len, c), np.int64, n_images) for c in columns[::2])
            consistent = (
                arrays[0].ndim == 2
                and arrays[0].shape[1] == 4
                and all(a.ndim == 1 for a in arrays[1:])
                and all(np.array_equal(other, counts) for other in others)  # per image, not only in total
            )
        except (TypeError, ValueError, RuntimeError):
            consistent = False
        if consistent:
            return arrays, np.repeat(np.arange(n_images), counts)
    return _concat_image_by_image(items, fields, what)


def _concat_image_by_image(items, fields, what):
    """:func:`_concat` one image at a time, so that a bad image is named."""
    columns = tuple([] for _ in fields)
    counts = []
    for i, item in enumerate(items):
        arrays = [_to_numpy(x) for x in item]
        if what == "ground_truths" and (len(arrays) == 2 or arrays[2] is None):
            arrays[2:] = [np.zeros(len(arrays[1]), dtype=bool)]
        if len(arrays) != len(fields):
            raise ValueError(f"{what}: image {i} has {len(arrays)} fields, expected {fields}")
        n = len(arrays[1]) if arrays[1].ndim == 1 else -1
        if arrays[0].size == 0:
            arrays[0] = arrays[0].reshape(0, 4)
        if arrays[0].shape != (n, 4) or any(a.shape != (n,) for a in arrays[1:]):
            shapes = ", ".join(f"{f} {a.shape}" for f, a in zip(fields, arrays, strict=True))
            raise ValueError(f"{what}: image {i} has shapes {shapes}; expected (n, 4) and (n,)")
        for column, a in zip(columns, arrays, strict=True):
            column.append(a)
        counts.append(n)
    return tuple(np.concatenate(c) for c in columns), np.repeat(np.arange(len(counts)), counts)


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor, on any device
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _checked_labels(labels, num_classes, image, what):
    out = labels.astype(np.int64, copy=False)
    fractional = labels.dtype.kind == "f" and (out != labels).any()
    if len(out) and (out.min() < 0 or out.max() >= num_classes or fractional):
        bad = (out != labels) | (out < 0) | (out >= num_classes)  # only now locate the image at fault
        raise ValueError(f"{what}: image {image[np.argmax(bad)]} has a label outside 0..{num_classes - 1}")
    return out


def _checked_boxes(boxes, image, what):
    boxes = boxes.astype(np.float64, copy=False)
    if not (np.isfinite(boxes).all() and (boxes[:, 2:] >= boxes[:, :2]).all()):
        bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        raise ValueError(f"{what}: image {image[np.argmax(bad)]} has a non-finite or inverted xyxy box")
    return boxes


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
