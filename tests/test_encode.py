"""Tests for yolov1.encode: hand-worked targets, the border cell, bad input, the collision policy, a plain-loop
reference, encode -> decode round trips, hand-worked decoding, NMS (checked against torchvision), batching, bf16."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import box_iou
from torchvision.ops import nms as tv_nms

import yolov1.encode as encode_module
from tests.sync_count import count_host_syncs
from yolov1.boxes import cxcywh_to_xyxy
from yolov1.encode import (
    BatchDetections,
    Detections,
    _batched_nms,
    cell_indices,
    decode,
    decode_batch,
    encode,
    targets_to_predictions,
)


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def run_decode(preds: torch.Tensor, b: int, c: int, score: float = 0.1, iou: float = 0.5, top: int = 100):
    return decode(preds, boxes_per_cell=b, num_classes=c, score_threshold=score, nms_iou_threshold=iou,
                  max_detections=top)


# ---------------------------------------------------------------- encode


def test_encode_centre_box_hand_worked():
    # S=7: cx = cy = 0.5 -> 0.5*7 = 3.5 -> cell (row 3, col 3); x = y = 3.5 - 3 = 0.5.
    # w, h stay image-relative: 0.2, 0.4. Class 2 of C=3 -> one-hot [0, 0, 1].
    enc = encode(boxes((0.5, 0.5, 0.2, 0.4)), labels(2), grid_size=7, num_classes=3)
    assert enc.displaced == 0
    assert enc.target.shape == (7, 7, 8) and enc.target.dtype == torch.float32
    expected = torch.tensor([0.5, 0.5, 0.2, 0.4, 1.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(enc.target[3, 3], expected)
    enc.target[3, 3] = 0
    assert not enc.target.any()  # every other cell is all zero


def test_encode_off_centre_box_uses_row_for_y_and_col_for_x():
    # S=4: cx = 0.9 -> 3.6 -> col 3, x = 0.6; cy = 0.3 -> 1.2 -> row 1, y = 0.2 (up to float rounding).
    enc = encode(boxes((0.9, 0.3, 0.1, 0.05)), labels(0), grid_size=4, num_classes=2)
    torch.testing.assert_close(enc.target[1, 3], torch.tensor([0.6, 0.2, 0.1, 0.05, 1.0, 1.0, 0.0]))
    assert enc.target[..., 4].sum() == 1


def test_centre_on_right_and_bottom_border_lands_in_last_cell():
    # cx = cy = 1.0 -> 1.0*7 = 7 -> clamped to col/row 6 = S-1; x = y = 7 - 6 = 1.0 (the cell's far edge).
    # cx = 0 -> col 0, x = 0.
    enc = encode(boxes((1.0, 1.0, 0.1, 0.1), (0.0, 1.0, 0.1, 0.1)), labels(1, 0), grid_size=7, num_classes=2)
    torch.testing.assert_close(enc.target[6, 6, :5], torch.tensor([1.0, 1.0, 0.1, 0.1, 1.0]))
    torch.testing.assert_close(enc.target[6, 0, :5], torch.tensor([0.0, 1.0, 0.1, 0.1, 1.0]))
    rows, cols = cell_indices(boxes((1.0, 1.0, 0.1, 0.1), (0.0, 0.999, 0.1, 0.1)), 7)
    assert rows.tolist() == [6, 6] and cols.tolist() == [6, 0]


def test_cell_boundary_belongs_to_the_next_cell():
    # S=4: cx = 0.25 -> 0.25*4 = 1.0 exactly -> col 1 with x = 0 (floor), not col 0 with x = 1.
    enc = encode(boxes((0.25, 0.75, 0.1, 0.1)), labels(0), grid_size=4, num_classes=1)
    torch.testing.assert_close(enc.target[3, 1, :2], torch.tensor([0.0, 0.0]))


@pytest.mark.parametrize(
    ("box", "label", "message"),
    [
        ((0.5, 1.2, 0.1, 0.1), 0, "box 1 has a coordinate outside [0, 1]"),
        ((-0.1, 0.5, 0.1, 0.1), 0, "box 1 has a coordinate outside [0, 1]"),
        ((0.5, 0.5, 1.5, 0.1), 0, "box 1 has a coordinate outside [0, 1]"),
        ((0.5, float("nan"), 0.1, 0.1), 0, "box 1 has a non-finite value"),
        ((0.5, 0.5, float("inf"), 0.1), 0, "box 1 has a non-finite value"),
        ((0.5, 0.5, 0.0, 0.1), 0, "box 1 has w or h <= 0"),
        ((0.5, 0.5, 0.1, 0.1), 3, r"box 1 has a label outside \[0, 3\)"),
        ((0.5, 0.5, 0.1, 0.1), -1, r"box 1 has a label outside \[0, 3\)"),
    ],
)
def test_encode_rejects_bad_boxes_naming_the_box(box, label, message):
    good = (0.2, 0.2, 0.1, 0.1)
    with pytest.raises(ValueError, match=message.replace("[0, 1]", r"\[0, 1\]")):
        encode(boxes(good, box, good), labels(0, label, 1), grid_size=7, num_classes=3)


def test_encode_rejects_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="boxes_cxcywh must be a"):
        encode(torch.zeros(2, 5), labels(0, 0), 7, 3)
    with pytest.raises(ValueError, match="labels must be a"):
        encode(boxes((0.5, 0.5, 0.1, 0.1)), torch.tensor([0.0]), 7, 3)
    with pytest.raises(ValueError, match="labels must be a"):
        encode(boxes((0.5, 0.5, 0.1, 0.1)), labels(0, 1), 7, 3)
    with pytest.raises(ValueError, match="grid_size"):
        encode(boxes((0.5, 0.5, 0.1, 0.1)), labels(0), 0, 3)


def test_collision_keeps_largest_box_and_counts_the_other():
    # Both centres in cell (3, 3) of S=7 (0.45*7 = 3.15, 0.5*7 = 3.5). Areas: box 0 0.2*0.2 = 0.04, box 1
    # 0.3*0.1 = 0.03, so box 0 (class 0) keeps the cell although it comes first and box 1 is displaced.
    enc = encode(boxes((0.45, 0.45, 0.2, 0.2), (0.5, 0.5, 0.3, 0.1)), labels(0, 1), grid_size=7, num_classes=2)
    assert enc.displaced == 1
    assert enc.target[..., 4].sum() == 1
    torch.testing.assert_close(enc.target[3, 3, 2:], torch.tensor([0.2, 0.2, 1.0, 1.0, 0.0]))


def test_collision_of_three_displaces_two_and_leaves_other_cells_alone():
    # Cell (3, 3) gets areas 0.01, 0.09, 0.04 -> the 0.3 x 0.3 box (class 2) wins, 2 displaced.
    # A fourth box alone in cell (0, 0) is kept.
    enc = encode(
        boxes((0.5, 0.5, 0.1, 0.1), (0.46, 0.52, 0.3, 0.3), (0.55, 0.44, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1)),
        labels(0, 2, 1, 0), grid_size=7, num_classes=3,
    )
    assert enc.displaced == 2
    assert enc.target[..., 4].sum() == 2
    assert enc.target[3, 3, 5:].argmax() == 2 and enc.target[0, 0, 5:].argmax() == 0


def test_collision_tie_keeps_first_in_input_order():
    # Equal areas 0.1*0.2 = 0.2*0.1 = 0.02 in one cell: the first box (class 1) is kept.
    enc = encode(boxes((0.5, 0.5, 0.1, 0.2), (0.5, 0.5, 0.2, 0.1)), labels(1, 0), grid_size=7, num_classes=2)
    assert enc.displaced == 1
    torch.testing.assert_close(enc.target[3, 3, 2:], torch.tensor([0.1, 0.2, 1.0, 0.0, 1.0]))


def test_encode_empty_image_gives_zero_target():
    enc = encode(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), grid_size=5, num_classes=4)
    assert enc.displaced == 0
    assert enc.target.shape == (5, 5, 9) and not enc.target.any()


def encode_loop(boxes_cxcywh: torch.Tensor, cls: torch.Tensor, s: int, c: int) -> tuple[torch.Tensor, int]:
    """Plain-Python reference: box by box, the larger area (then the earlier box) wins a cell."""
    target = torch.zeros(s, s, 5 + c)
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for k, (cx, cy, w, h) in enumerate(boxes_cxcywh.double().tolist()):
        i, j = min(math.floor(cy * s), s - 1), min(math.floor(cx * s), s - 1)
        if (i, j) not in best or w * h > best[(i, j)][0]:
            best[(i, j)] = (w * h, k)
    for (i, j), (_, k) in best.items():
        cx, cy, w, h = boxes_cxcywh[k].double().tolist()
        target[i, j, :5] = torch.tensor([cx * s - j, cy * s - i, w, h, 1.0])
        target[i, j, 5 + int(cls[k])] = 1.0
    return target, len(boxes_cxcywh) - len(best)


@pytest.mark.parametrize(("s", "c"), [(1, 1), (3, 2), (7, 20), (13, 5)])
def test_encode_matches_plain_loop_on_random_boxes(s, c):
    for k in (1, 5, 40):
        cxcy = torch.rand(k, 2)
        cxcy[0] = 1.0  # always exercise the border cell
        wh = torch.rand(k, 2) * 0.9 + 0.01
        if k > 1:
            wh[1] = wh[0].flip(0)  # an equal-area pair
        b = torch.cat((cxcy, wh), dim=1)
        cls = torch.randint(0, c, (k,))
        enc = encode(b, cls, s, c)
        want, displaced = encode_loop(b, cls, s, c)
        torch.testing.assert_close(enc.target, want)
        assert enc.displaced == displaced


def test_encode_accepts_float64_and_int32_and_keeps_device():
    enc = encode(boxes((0.5, 0.5, 0.2, 0.4)).double(), labels(1).int(), grid_size=7, num_classes=2)
    assert enc.target.dtype == torch.float32 and enc.target.device.type == "cpu"
    assert enc.target[3, 3, 6] == 1.0


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize(("s", "b", "c"), [(1, 1, 1), (2, 2, 3), (7, 2, 20), (5, 3, 4)])
def test_encode_then_decode_perfect_prediction_round_trips(s, b, c):
    k = min(s * s, 6)
    cells = torch.randperm(s * s)[:k]  # distinct cells, so no box is displaced
    centre = (torch.stack((cells % s, cells // s), dim=1) + torch.rand(k, 2) * 0.98 + 0.01) / s
    # Keep boxes inside the image so that clipping changes nothing.
    half = torch.minimum(centre, 1 - centre)
    size = (torch.rand(k, 2) * 0.8 + 0.1) * 2 * half
    b_cxcywh = torch.cat((centre, size), dim=1)
    cls = torch.randint(0, c, (k,))
    enc = encode(b_cxcywh, cls, s, c)
    assert enc.displaced == 0
    preds = targets_to_predictions(enc.target, b)
    assert preds.shape == (1, s, s, 5 * b + c)
    # IoU threshold 0.99: the B identical copies of a box collapse to one, distinct boxes survive.
    (det,) = run_decode(preds, b, c, score=0.5, iou=0.99)
    assert det.scores.tolist() == [1.0] * k  # conf 1 x class score 1
    order = torch.argsort(det.labels * 10 + det.boxes_xyxy[:, 0])
    want_xyxy = torch.cat((b_cxcywh[:, :2] - b_cxcywh[:, 2:] / 2, b_cxcywh[:, :2] + b_cxcywh[:, 2:] / 2), 1)
    want_order = torch.argsort(cls * 10 + want_xyxy[:, 0])
    torch.testing.assert_close(det.boxes_xyxy[order], want_xyxy[want_order], atol=1e-6, rtol=1e-5)
    assert torch.equal(det.labels[order], cls[want_order])


def test_targets_to_predictions_layout():
    # One object in cell (0, 1) of S=2, C=2, B=2: w = 0.25 -> sqrt 0.5, h = 0.04 -> sqrt 0.2.
    target = torch.zeros(2, 2, 7)
    target[0, 1] = torch.tensor([0.3, 0.6, 0.25, 0.04, 1.0, 0.0, 1.0])
    preds = targets_to_predictions(torch.stack((target, target)), boxes_per_cell=2)
    assert preds.shape == (2, 2, 2, 12)
    box = [0.3, 0.6, 0.5, 0.2]
    # predictor 0 holds the box with conf 1, predictor 1 the same box with conf 0, then the one-hot class
    torch.testing.assert_close(preds[1, 0, 1], torch.tensor(box + [1.0] + box + [0.0] + [0.0, 1.0]))
    preds[:, 0, 1] = 0
    assert not preds.any()


# ---------------------------------------------------------------- decode


def single_cell_prediction() -> torch.Tensor:
    """S=2, B=2, C=3: only cell (row 1, col 0) predicts, with predictor 1, conf 0.8 and class 2 at 0.5.

    x = 0.5, y = 0.25 -> centre ((0 + 0.5)/2, (1 + 0.25)/2) = (0.25, 0.625); sqrt_w = 0.4, sqrt_h = 0.6 ->
    w = 0.16, h = 0.36 -> xyxy (0.25 - 0.08, 0.625 - 0.18, 0.25 + 0.08, 0.625 + 0.18) = (0.17, 0.445, 0.33, 0.805).
    Score = 0.8 * 0.5 = 0.4; class 1 scores 0.8 * 0.1 = 0.08.
    """
    preds = torch.zeros(1, 2, 2, 13)
    preds[0, 1, 0, 5:10] = torch.tensor([0.5, 0.25, 0.4, 0.6, 0.8])
    preds[0, 1, 0, 10:13] = torch.tensor([0.0, 0.1, 0.5])
    return preds


def test_decode_single_cell_hand_worked():
    (det,) = run_decode(single_cell_prediction(), b=2, c=3, score=0.05)
    assert isinstance(det, Detections)
    torch.testing.assert_close(det.scores, torch.tensor([0.4, 0.08]))
    assert det.labels.tolist() == [2, 1] and det.labels.dtype == torch.int64
    want = torch.tensor([0.17, 0.445, 0.33, 0.805])
    torch.testing.assert_close(det.boxes_xyxy, torch.stack((want, want)))
    assert det.boxes_xyxy.dtype == torch.float32


def test_decode_score_threshold_is_strict_and_empty_results_have_shapes():
    (det,) = run_decode(single_cell_prediction(), b=2, c=3, score=0.08 + 1e-6)  # 0.08 is dropped
    assert det.labels.tolist() == [2]
    (none,) = run_decode(single_cell_prediction(), b=2, c=3, score=0.4)  # score > 0.4 required: nothing left
    assert none.boxes_xyxy.shape == (0, 4) and none.scores.shape == (0,) and none.labels.shape == (0,)
    assert none.labels.dtype == torch.int64 and none.boxes_xyxy.dtype == torch.float32
    assert run_decode(torch.zeros(0, 2, 2, 13), b=2, c=3) == []


def test_decode_clips_boxes_to_the_image():
    # Cell (0, 0) of S=2, box centred (0.5/2, 0.5/2) = (0.25, 0.25) with w = h = 0.9^2 = 0.81 -> corners
    # 0.25 -/+ 0.405 = -0.155, 0.655 -> clipped to (0, 0, 0.655, 0.655).
    preds = torch.zeros(1, 2, 2, 6)
    preds[0, 0, 0] = torch.tensor([0.5, 0.5, 0.9, 0.9, 1.0, 1.0])
    (det,) = run_decode(preds, b=1, c=1)
    torch.testing.assert_close(det.boxes_xyxy, torch.tensor([[0.0, 0.0, 0.655, 0.655]]))


def two_predictor_cell(class_scores: list[float]) -> torch.Tensor:
    """S=1, B=2, C=2. Predictor 0: centre (0.5, 0.5), w = h = 0.5^2 = 0.25 -> (0.375, 0.375, 0.625, 0.625),
    conf 0.9. Predictor 1: centre (0.55, 0.5), same size -> (0.425, 0.375, 0.675, 0.625), conf 0.6.
    Intersection 0.2 * 0.25 = 0.05; IoU = 0.05 / (0.0625 + 0.0625 - 0.05) = 0.05 / 0.075 = 0.667."""
    preds = torch.zeros(1, 1, 1, 12)
    preds[0, 0, 0, :10] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9, 0.55, 0.5, 0.5, 0.5, 0.6])
    preds[0, 0, 0, 10:] = torch.tensor(class_scores)
    return preds


def test_decode_nms_suppresses_overlapping_box_of_the_same_class():
    # Class 0 at 1.0: scores 0.9 and 0.6, IoU 0.667 > 0.5 -> only predictor 0 stays.
    (det,) = run_decode(two_predictor_cell([1.0, 0.0]), b=2, c=2, score=0.1, iou=0.5)
    torch.testing.assert_close(det.scores, torch.tensor([0.9]))
    torch.testing.assert_close(det.boxes_xyxy, torch.tensor([[0.375, 0.375, 0.625, 0.625]]))
    # With a 0.7 IoU threshold, 0.667 is not enough to suppress: both stay.
    (det,) = run_decode(two_predictor_cell([1.0, 0.0]), b=2, c=2, score=0.1, iou=0.7)
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.6]))


def test_decode_nms_is_per_class():
    # Class scores 0.5 / 0.5: every (predictor, class) pair scores 0.45 or 0.30. Within each class predictor 1
    # is suppressed; across classes nothing is: two detections, one per class, both from predictor 0.
    (det,) = run_decode(two_predictor_cell([0.5, 0.5]), b=2, c=2, score=0.1, iou=0.5)
    torch.testing.assert_close(det.scores, torch.tensor([0.45, 0.45]))
    assert sorted(det.labels.tolist()) == [0, 1]
    torch.testing.assert_close(det.boxes_xyxy[:, 0], torch.tensor([0.375, 0.375]))


def test_decode_keeps_max_detections_best_by_score():
    preds = torch.rand(1, 4, 4, 5 * 2 + 3)
    (all_det,) = run_decode(preds, b=2, c=3, score=0.0, iou=1.0, top=1000)  # IoU > 1 never: no suppression
    assert len(all_det.scores) == 4 * 4 * 2 * 3  # every candidate of S*S*B*C
    assert torch.all(all_det.scores[:-1] >= all_det.scores[1:])
    (top,) = run_decode(preds, b=2, c=3, score=0.0, iou=1.0, top=7)
    torch.testing.assert_close(top.scores, all_det.scores[:7])


def random_predictions(n: int, s: int, b: int, c: int) -> torch.Tensor:
    """Trained-looking outputs: centres anywhere in the cell, mid-sized boxes, mostly small confidences and
    class scores that sum to one."""
    box = torch.cat((torch.rand(n, s, s, b, 2), torch.rand(n, s, s, b, 2) * 0.6 + 0.2,
                     torch.rand(n, s, s, b, 1) ** 3), dim=-1).reshape(n, s, s, 5 * b)
    return torch.cat((box, torch.softmax(torch.randn(n, s, s, c) * 2, dim=-1)), dim=-1)


def decode_reference(preds, b, c, score, iou, top) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Image by image, cell by cell, predictor by predictor, in float32 scalars (numpy, the same IEEE operations
    as decode's tensors), then torchvision's batched_nms per class (in float64, exact for float32 inputs)."""
    out = []
    n, s = preds.shape[:2]
    f32 = np.float32
    for image in range(n):
        cand_boxes, cand_scores, cand_labels = [], [], []
        for i in range(s):
            for j in range(s):
                cell = preds[image, i, j].float().numpy()
                for p in range(b):
                    x, y, sw, sh, conf = cell[5 * p : 5 * p + 5]
                    cx, cy, w, h = (x + f32(j)) / f32(s), (y + f32(i)) / f32(s), sw * sw, sh * sh
                    corners = (cx - w / f32(2), cy - h / f32(2), cx + w / f32(2), cy + h / f32(2))
                    xyxy = [min(max(float(v), 0.0), 1.0) for v in corners]
                    for k in range(c):
                        if conf * cell[5 * b + k] > score:
                            cand_boxes.append(xyxy)
                            cand_scores.append(float(conf * cell[5 * b + k]))
                            cand_labels.append(k)
        bx = torch.tensor(cand_boxes, dtype=torch.float64).reshape(-1, 4)
        sc = torch.tensor(cand_scores, dtype=torch.float64)
        lb = torch.tensor(cand_labels, dtype=torch.int64)
        keep = tv_batched_nms(bx, sc, lb, iou)[:top]
        out.append((bx[keep].float(), sc[keep].float(), lb[keep]))
    return out


@pytest.mark.parametrize(("s", "b", "c", "score", "iou", "top"), [
    (7, 2, 20, 0.005, 0.5, 100),
    (7, 2, 20, 0.2, 0.5, 100),
    (3, 1, 4, 0.01, 0.3, 5),  # few detections per image: the exact fallback with more candidates kicks in
    (4, 3, 2, 0.0, 0.7, 10),
])
def test_decode_matches_loop_and_torchvision_nms(s, b, c, score, iou, top):
    preds = random_predictions(3, s, b, c)
    got = run_decode(preds, b, c, score=score, iou=iou, top=top)
    for det, (want_boxes, want_scores, want_labels) in zip(got, decode_reference(preds, b, c, score, iou, top),
                                                           strict=True):
        assert torch.equal(det.labels, want_labels)
        torch.testing.assert_close(det.scores, want_scores)
        torch.testing.assert_close(det.boxes_xyxy, want_boxes)


def test_decode_exact_when_suppression_leaves_too_few_in_the_first_pass(caplog):
    # S=4, B=2, C=2, class scores [1.0, 0.1] in every cell.
    # Predictor 0 of every cell predicts one shared box: centre (0.5, 0.5), i.e. x = 0.5*4 - j = 2 - j (linear
    # outputs may leave the cell), w = h = 0.6^2 = 0.36; conf 0.5..1.0 -> class 0 scores 0.5..1.0.
    # Predictor 1: a 0.09-wide box centred in its own cell (no overlap > 0.5 with anything); conf 0.3..0.45.
    # Score order: 16 shared-box class 0 (1 survives NMS), 16 small class 0, 16 shared-box class 1 (0.05..0.1,
    # 1 survives), 16 small class 1 (0.03..0.045). max_detections = 20: the first pass (top 25) has only
    # 1 + 9 survivors, so the image is redone with the top 50: 1 + 16 + 1 + 2 = 20.
    s = 4
    grid = torch.arange(s, dtype=torch.float32)
    preds = torch.zeros(1, s, s, 12)
    preds[0, :, :, 0] = 2 - grid[None, :]
    preds[0, :, :, 1] = 2 - grid[:, None]
    preds[..., 2:4] = 0.6
    preds[..., 4] = torch.linspace(0.5, 1.0, 16).reshape(s, s)
    preds[..., 5:9] = torch.tensor([0.5, 0.5, 0.3, 0.3])
    preds[..., 9] = torch.linspace(0.3, 0.45, 16).reshape(s, s)
    preds[..., 10:12] = torch.tensor([1.0, 0.1])
    with caplog.at_level(logging.DEBUG, logger="yolov1.encode"):
        (det,) = run_decode(preds, b=2, c=2, score=0.01, iou=0.5, top=20)
    assert "1 image(s) need more than their top 25 candidates" in caplog.text
    assert det.labels.tolist() == [0] * 17 + [1] * 3
    torch.testing.assert_close(det.scores[[0, 1, 17, 18]], torch.tensor([1.0, 0.45, 0.1, 0.045]))
    torch.testing.assert_close(det.boxes_xyxy[0], torch.tensor([0.32, 0.32, 0.68, 0.68]))
    ((want_boxes, want_scores, want_labels),) = decode_reference(preds, 2, 2, 0.01, 0.5, 20)
    assert torch.equal(det.labels, want_labels)
    torch.testing.assert_close(det.scores, want_scores)
    torch.testing.assert_close(det.boxes_xyxy, want_boxes)


def test_decode_batch_equals_each_image_alone():
    preds = random_predictions(6, 7, 2, 20)
    batch = run_decode(preds, 2, 20, score=0.005, iou=0.5, top=30)
    for image in range(6):
        (alone,) = run_decode(preds[image : image + 1], 2, 20, score=0.005, iou=0.5, top=30)
        for got, want in zip(batch[image], alone, strict=True):
            assert torch.equal(got, want)


def test_decode_bf16_input_is_computed_in_float32():
    preds = random_predictions(2, 7, 2, 20)
    as_bf16 = preds.bfloat16()
    got = run_decode(as_bf16, 2, 20, score=0.05)
    want = run_decode(as_bf16.float(), 2, 20, score=0.05)
    for g, w in zip(got, want, strict=True):
        assert g.boxes_xyxy.dtype == torch.float32 and g.scores.dtype == torch.float32
        for a, b in zip(g, w, strict=True):
            assert torch.equal(a, b)


def test_decode_ignores_nan_scores():
    preds = single_cell_prediction()
    preds[0, 0, 0, 4] = float("nan")  # predictor 0 of cell (0, 0): every score NaN
    (det,) = run_decode(preds, b=2, c=3, score=0.05)
    torch.testing.assert_close(det.scores, torch.tensor([0.4, 0.08]))


def test_decode_candidates_are_scores_above_the_threshold_in_float32():
    # S=1, B=1, conf 1: the scores are the class scores. score > threshold is decided in float32 (0.1 rounds to
    # float32(0.1), which is therefore not above it; the next float32 is), NaN never passes, +inf always; -0.0
    # passes a negative threshold and keeps its sign; a NaN threshold passes nothing.
    tenth = torch.tensor(0.1, dtype=torch.float32)
    above = torch.nextafter(tenth, torch.tensor(1.0))
    classes = torch.stack([tenth, above, torch.tensor(float("inf")), torch.tensor(-0.0), torch.tensor(float("nan")),
                           torch.tensor(0.3)])
    preds = torch.cat((torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0]), classes)).reshape(1, 1, 1, 11)
    (det,) = run_decode(preds, b=1, c=6, score=0.1)
    assert det.labels.tolist() == [2, 5, 1] and det.scores[2] == above
    (det,) = run_decode(preds, b=1, c=6, score=-0.5)
    assert det.labels.tolist() == [2, 5, 1, 0, 3] and torch.signbit(det.scores[4])
    (det,) = run_decode(preds, b=1, c=6, score=float("nan"))
    assert det.labels.numel() == 0


def test_decode_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(N, S, S, 5B \+ C\) = \(N, S, S, 30\)"):
        run_decode(torch.zeros(1, 7, 7, 31), b=2, c=20)
    with pytest.raises(ValueError, match="max_detections"):
        run_decode(torch.zeros(1, 7, 7, 30), b=2, c=20, top=0)


# ---------------------------------------------------------------- NMS


def _nms_keep_indices(xyxy, scores, groups, iou):
    """`_batched_nms` as torchvision reports it: kept indices by score descending."""
    kept = _batched_nms(xyxy, scores, groups, iou)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def _batched_nms_mask(xyxy, scores, groups, iou, **kwargs):
    """`_batched_nms` as a (K,) keep mask."""
    return torch.zeros(scores.numel(), dtype=torch.bool).index_fill_(0, _batched_nms(xyxy, scores, groups, iou,
                                                                                   **kwargs), True)


@pytest.mark.parametrize("chunk", [256, 7, None])  # the CPU default, tiny calls, one call (the GPU path)
def test_batched_nms_mask_matches_torchvision_on_random_groups(monkeypatch, chunk):
    monkeypatch.setattr(encode_module, "_CPU_NMS_CHUNK", chunk)
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        k = int(torch.randint(0, 600, (), generator=g))
        xy = torch.rand(k, 2, generator=g)
        xyxy = torch.cat((xy, xy + torch.rand(k, 2, generator=g) * 0.5 + 1e-3), dim=1)
        scores = torch.rand(k, generator=g)
        groups = torch.randint(0, 1 + 5 * trial, (k,), generator=g)
        iou = float(torch.rand((), generator=g)) * 0.8 + 0.1
        want = tv_batched_nms(xyxy.double(), scores.double(), groups, iou)
        assert torch.equal(_nms_keep_indices(xyxy, scores, groups, iou), want)


def test_batched_nms_mask_is_exact_with_many_groups_and_pixel_boxes():
    # 5,000 groups of pixel boxes up to 500 wide: torchvision's float32 offsets (id * 501) reach 2.5e6, where a
    # float32 step is 0.25 px; the integer float64 shift keeps every decision of a per-group float64 loop.
    g = torch.Generator().manual_seed(4)
    k = 4000
    xy = torch.rand(k, 2, generator=g) * 400
    xyxy = torch.cat((xy, xy + torch.rand(k, 2, generator=g) * 100 + 1), dim=1)
    scores = torch.rand(k, generator=g)
    groups = torch.randint(0, 5000, (k,), generator=g) * 2  # sparse ids: gaps must not matter
    want = torch.zeros(k, dtype=torch.bool)
    for group in groups.unique():
        members = (groups == group).nonzero().flatten()
        want[members[tv_nms(xyxy[members].double(), scores[members].double(), 0.3)]] = True
    assert torch.equal(_batched_nms_mask(xyxy, scores, groups, 0.3), want)


def test_batched_nms_mask_suppression_chain():
    # Unit squares a, b, c by score, shifted by 0.25 in x: IoU(a, b) = IoU(b, c) = 0.75 / 1.25 = 0.6,
    # IoU(a, c) = 0.5 / 1.5 = 0.33. Greedy: a kept, b suppressed by a, c kept (b, its only overlap > 0.5, is
    # gone). A "suppressed by anything earlier" shortcut would wrongly drop c.
    xyxy = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.0, 1.25, 1.0], [0.5, 0.0, 1.5, 1.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = _batched_nms_mask(xyxy, scores, torch.zeros(3, dtype=torch.int64), 0.5)
    assert keep.tolist() == [True, False, True]
    # In different groups nothing is suppressed.
    assert _batched_nms_mask(xyxy, scores, torch.arange(3), 0.5).all()


def test_batched_nms_mask_suppresses_only_above_the_threshold():
    # (0, 0, 1, 1) and (0, 0, 0.5, 1): inter 0.5, union 1 + 0.5 - 0.5 = 1 -> IoU exactly 0.5, as in torchvision
    # only IoU > threshold suppresses.
    xyxy = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    groups = torch.zeros(2, dtype=torch.int64)
    assert _batched_nms_mask(xyxy, scores, groups, 0.5).tolist() == [True, True]
    assert _batched_nms_mask(xyxy, scores, groups, 0.499).tolist() == [True, False]
    empty = _batched_nms_mask(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,)
    assert _batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).dtype == torch.int64


def _greedy_reference(xyxy, groups, iou):
    """Greedy NMS in input order (the priority order) within groups, box by box in Python, float64 IoU."""
    boxes = xyxy.double()
    keep = []
    for i in range(len(boxes)):
        rivals = [j for j in keep if groups[j] == groups[i]]
        if not rivals or not bool((box_iou(boxes[i : i + 1], boxes[rivals]) > iou).any()):
            keep.append(i)
    return torch.zeros(len(boxes), dtype=torch.bool).index_fill_(0, torch.tensor(keep, dtype=torch.int64), True)


def test_batched_nms_in_priority_order_takes_ties_in_input_order(monkeypatch):
    # decode's layout: image blocks, each by score descending, groups image * C + class: many small groups, so
    # CPU takes the all-pairs path (checked below), with one sort by group and the input order within each.
    # Scores in eighths tie often; the promised order decides between tied overlapping boxes.
    g = torch.Generator().manual_seed(6)
    n, k, c = 12, 50, 20
    scores = ((torch.rand(n, k, generator=g) * 8).round() / 8).sort(dim=1, descending=True, stable=True).values
    groups = (torch.arange(n)[:, None] * c + torch.randint(0, c, (n, k), generator=g)).flatten()
    xy = torch.rand(n * k, 2, generator=g) * 0.6
    xyxy = torch.cat((xy, xy + 0.1 + torch.rand(n * k, 2, generator=g) * 0.3), dim=1)
    calls = []
    runs = encode_module._greedy_nms_runs
    monkeypatch.setattr(encode_module, "_greedy_nms_runs", lambda *a: calls.append(1) or runs(*a))
    got = _batched_nms_mask(xyxy, scores.flatten(), groups, 0.3, in_priority_order=True)
    assert calls == [1]
    assert torch.equal(got, _greedy_reference(xyxy, groups, 0.3))
    assert 0 < int(got.sum()) < n * k  # something was suppressed


def test_predicted_boxes_are_cxcywh_to_xyxy_bit_for_bit():
    # decode's box step is a fused rewrite of cxcywh_to_xyxy: it must round exactly as the plain formula does.
    g = torch.Generator().manual_seed(7)
    for n, s, b, dtype in ((3, 7, 2, torch.float32), (2, 5, 1, torch.float64), (1, 1, 3, torch.float32)):
        preds = torch.randn(n, s, s, 5 * b + 4, generator=g, dtype=dtype) * 2
        raw = preds[..., : 5 * b].reshape(n, s, s, b, 5)
        grid = torch.arange(s, dtype=dtype)
        cx = (raw[..., 0] + grid[None, None, :, None]) / s
        cy = (raw[..., 1] + grid[None, :, None, None]) / s
        want = cxcywh_to_xyxy(torch.stack((cx, cy, raw[..., 2] ** 2, raw[..., 3] ** 2), dim=-1)).clamp(0, 1)
        assert torch.equal(encode_module._predicted_boxes_xyxy(preds, b), want.reshape(n, s * s * b, 4))


def test_pairs_within_runs_lists_every_pair_of_a_run_once():
    sizes = torch.tensor([1, 3, 1, 4, 2])
    want = [(a, b) for start, size in zip([0, 1, 4, 5, 9], sizes.tolist(), strict=True)
            for a in range(start, start + size) for b in range(a + 1, start + size)]
    first, second = encode_module._pairs_within_runs(sizes)
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == want
    assert [t.tolist() for t in encode_module._pairs_within_runs(sizes, len(want))] == [first.tolist(),
                                                                                       second.tolist()]


def test_batched_nms_known_range_equals_measured_range():
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(500, 2, generator=g) * 0.7
    xyxy = torch.cat((xy, xy + torch.rand(500, 2, generator=g) * 0.3), dim=1)
    scores, groups = torch.rand(500, generator=g), torch.randint(0, 40, (500,), generator=g)
    assert torch.equal(_batched_nms_mask(xyxy, scores, groups, 0.5),
                       _batched_nms_mask(xyxy, scores, groups, 0.5, coordinate_range=(0.0, 1.0)))


# ---------------------------------------------------------------- host syncs (GPU readiness)


def _decode_syncs(preds: torch.Tensor, top: int) -> Counter:
    with count_host_syncs() as counts:
        decode_batch(preds, boxes_per_cell=2, num_classes=20, score_threshold=0.005, nms_iou_threshold=0.5,
                     max_detections=top)
    return counts


def test_decode_batch_syncs_a_fixed_number_of_times_whatever_the_batch_size(monkeypatch):
    # The device path (one NMS kernel call; CPU packs groups into several calls, where a sync costs nothing).
    # Once: the most candidates of any image (.item()). Per round: the valid top-k candidates (nonzero), the NMS
    # kernel, the kept detections (nonzero), the unfinished images (boolean mask). 5 syncs for 1 image or for
    # 32 in one round. The previous decode made 22-24 here: a
    # data-dependent loop (int(max()) and torch.equal per round), boolean-mask reads and writes, .tolist().
    monkeypatch.setattr(encode_module, "_CPU_NMS_CHUNK", None)
    one, many = _decode_syncs(random_predictions(1, 7, 2, 20), 100), _decode_syncs(random_predictions(32, 7, 2, 20), 100)
    assert one == many
    assert sum(one.values()) == 5, one
    assert one["torchvision::nms"] == 1 and one["aten::_local_scalar_dense"] == 1


def test_decode_batch_each_extra_round_adds_the_same_four_syncs(monkeypatch):
    # Every predictor predicts the same box, so NMS leaves one detection per class (20) and max_detections = 30
    # is never reached: the top k grows 37, 74, 148, 296, 592, 1184, 1960 (= S*S*B*C, every candidate):
    # 7 rounds, 4 syncs each, plus 1 once, for 1 image or 8.
    monkeypatch.setattr(encode_module, "_CPU_NMS_CHUNK", None)
    preds = random_predictions(8, 7, 2, 20)
    preds[..., 0:10:5] = 0.5 - torch.arange(7.0)[None, None, :, None]  # x: every centre at column 3.5 / 7
    preds[..., 1:10:5] = 0.5 - torch.arange(7.0)[None, :, None, None]  # y: row 3.5 / 7
    preds[..., 2:10:5] = preds[..., 3:10:5] = 0.5
    preds[..., 4:10:5] = 0.5 + 0.5 * torch.rand(8, 7, 7, 2)
    preds[..., 10:] = 0.05 + 0.9 * torch.rand(8, 7, 7, 20)  # every score >= 0.025 > 0.005
    one, many = _decode_syncs(preds[:1], 30), _decode_syncs(preds, 30)
    assert one == many
    assert sum(one.values()) == 1 + 4 * 7, one


def test_decode_batch_is_decode_flattened():
    preds = random_predictions(5, 7, 2, 20)
    preds[2, ..., 4:10:5] = 0.0  # image 2 has no candidate
    kwargs = dict(boxes_per_cell=2, num_classes=20, score_threshold=0.01, nms_iou_threshold=0.5, max_detections=40)
    flat = decode_batch(preds, **kwargs)
    assert isinstance(flat, BatchDetections)
    assert torch.all(flat.image_index[1:] >= flat.image_index[:-1]) and 2 not in flat.image_index.tolist()
    for image, det in enumerate(decode(preds, **kwargs)):
        mine = flat.image_index == image
        for got, want in zip((flat.boxes_xyxy[mine], flat.scores[mine], flat.labels[mine]), det, strict=True):
            assert torch.equal(got, want)


def test_decode_restores_the_thread_count(monkeypatch):
    before = torch.get_num_threads()
    seen = []
    real = encode_module._decode_batch
    monkeypatch.setattr(encode_module, "_decode_batch", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
    run_decode(random_predictions(2, 7, 2, 20), 2, 20)
    assert seen == [encode_module._DECODE_CPU_THREADS or before] and torch.get_num_threads() == before
    monkeypatch.setattr(encode_module, "_decode_batch", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_decode(random_predictions(2, 7, 2, 20), 2, 20)
    assert torch.get_num_threads() == before
