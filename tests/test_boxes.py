"""Tests for yolov1.boxes: hand-worked IoU, format round trips, normalisation, aligned IoU against a plain loop and
torchvision, degenerate and empty boxes, and per-group NMS."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import nms as tv_nms

from yolov1.boxes import (
    batched_nms,
    box_iou,
    box_iou_aligned,
    cxcywh_to_xyxy,
    denormalize_xyxy,
    normalize_xyxy,
    xyxy_to_cxcywh,
)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def random_xyxy(*shape: int) -> torch.Tensor:
    xy = torch.rand(*shape, 2)
    return torch.cat((xy, xy + torch.rand(*shape, 2) * 0.5 + 1e-3), dim=-1)


# ---------------------------------------------------------------- formats


def test_cxcywh_to_xyxy_hand_worked():
    # (cx, cy, w, h) = (0.5, 0.5, 0.2, 0.4) -> x1 = 0.5 - 0.1, y1 = 0.5 - 0.2, x2 = 0.5 + 0.1, y2 = 0.5 + 0.2.
    torch.testing.assert_close(cxcywh_to_xyxy(t([0.5, 0.5, 0.2, 0.4])), t([0.4, 0.3, 0.6, 0.7]))
    # Pixels: (10, 20, 30, 40) -> centre ((10 + 30) / 2, (20 + 40) / 2) = (20, 30), size (20, 20).
    torch.testing.assert_close(xyxy_to_cxcywh(t([10.0, 20.0, 30.0, 40.0])), t([20.0, 30.0, 20.0, 20.0]))


def test_format_round_trips_keep_leading_dims_and_dtype():
    xyxy = random_xyxy(3, 5).double()
    back = cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy))
    assert back.shape == (3, 5, 4) and back.dtype == torch.float64
    torch.testing.assert_close(back, xyxy)
    cxcywh = xyxy_to_cxcywh(xyxy)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(cxcywh)), cxcywh)


def test_formats_of_empty_boxes():
    assert cxcywh_to_xyxy(torch.zeros(0, 4)).shape == (0, 4)
    assert xyxy_to_cxcywh(torch.zeros(2, 0, 4)).shape == (2, 0, 4)


def test_normalize_hand_worked_and_round_trip():
    # Image W=100, H=200: (10, 20, 30, 40) px -> (10/100, 20/200, 30/100, 40/200) = (0.1, 0.1, 0.3, 0.2).
    px = t([10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 200.0])
    norm = normalize_xyxy(px, 100, 200)
    torch.testing.assert_close(norm, t([0.1, 0.1, 0.3, 0.2], [0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(denormalize_xyxy(norm, 100, 200), px)


def test_normalize_with_per_box_sizes_broadcasts():
    # Box 0 in a 100 x 50 image, box 1 in a 200 x 400 image: both cover half of their image's width/height.
    px = t([0.0, 0.0, 50.0, 25.0], [0.0, 0.0, 100.0, 200.0])
    width, height = torch.tensor([100.0, 200.0]), torch.tensor([50.0, 400.0])
    norm = normalize_xyxy(px, width, height)
    torch.testing.assert_close(norm, t([0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(denormalize_xyxy(norm, width, height), px)
    assert normalize_xyxy(px.double(), 100, 50).dtype == torch.float64


# ---------------------------------------------------------------- IoU


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        # Overlapping 2 x 2 squares offset by (1, 1): inter 1 * 1 = 1, union 4 + 4 - 1 = 7.
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),
        # One inside the other: inter = the small area 2 * 2 = 4, union = the large area 4 * 4 = 16.
        ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),
        # Identical boxes.
        ((1, 2, 3, 5), (1, 2, 3, 5), 1.0),
        # Sharing only an edge: intersection width 0.
        ((0, 0, 1, 1), (1, 0, 2, 1), 0.0),
        # Disjoint.
        ((0, 0, 1, 1), (2, 2, 3, 3), 0.0),
        # VOC integer boxes (1, 1, 10, 10) and (1, 1, 5, 10) become continuous (0, 0, 10, 10) and (0, 0, 5, 10):
        # inter 5 * 10 = 50, union 100 + 50 - 50 = 100 -> 0.5, as the devkit's "+1" areas give on the integers
        # (10 * 10 = 100, 5 * 10 = 50, overlap 5 * 10 = 50).
        ((0, 0, 10, 10), (0, 0, 5, 10), 0.5),
        # Half-overlapping strips: inter 0.5 * 1 = 0.5, union 1 + 1 - 0.5 = 1.5.
        ((0, 0, 1, 1), (0.5, 0, 1.5, 1), 1 / 3),
    ],
)
def test_iou_hand_worked(a, b, iou):
    a_t, b_t = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    torch.testing.assert_close(box_iou_aligned(a_t, b_t), torch.tensor(iou))
    torch.testing.assert_close(box_iou_aligned(b_t, a_t), torch.tensor(iou))  # symmetric
    torch.testing.assert_close(box_iou(a_t[None], b_t[None]), torch.tensor([[iou]]))


def iou_loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain-Python IoU of aligned (K, 4) xyxy pairs."""
    out = []
    for (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) in zip(a.tolist(), b.tolist(), strict=True):
        inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
        union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        out.append(inter / union if union > 0 else 0.0)
    return torch.tensor(out, dtype=torch.float64)


def test_box_iou_aligned_matches_loop_and_torchvision_diagonal():
    a, b = random_xyxy(200).double(), random_xyxy(200).double()
    got = box_iou_aligned(a, b)
    torch.testing.assert_close(got, iou_loop(a, b))
    torch.testing.assert_close(got, tv_box_iou(a, b).diagonal())
    assert (got > 0).any() and (got == 0).any()  # the random pairs include overlaps and misses


def test_box_iou_aligned_broadcasts_leading_dims():
    a, b = random_xyxy(4, 6), random_xyxy(1, 6)
    got = box_iou_aligned(a, b)  # (4, 6) vs (1, 6) -> (4, 6)
    assert got.shape == (4, 6)
    for i in range(4):
        torch.testing.assert_close(got[i], box_iou_aligned(a[i], b[0]))
    x = random_xyxy(5)
    torch.testing.assert_close(box_iou_aligned(x[:, None], x[None]), tv_box_iou(x, x))  # (5, 1) vs (1, 5): all pairs


def test_iou_of_degenerate_boxes_is_zero_not_nan():
    point = t([0.5, 0.5, 0.5, 0.5])  # zero area: union 0 with itself
    line = t([0.0, 0.5, 1.0, 0.5])  # zero height
    unit = t([0.0, 0.0, 1.0, 1.0])
    assert box_iou_aligned(point, point) == 0
    assert box_iou_aligned(line, line) == 0
    assert box_iou_aligned(point, unit) == 0
    inverted = t([1.0, 1.0, 0.0, 0.0])  # x2 < x1: area clamped to 0, so no overlap either
    assert box_iou_aligned(inverted, unit) == 0


def test_iou_of_empty_inputs():
    assert box_iou_aligned(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
    assert box_iou(torch.zeros(0, 4), random_xyxy(3)).shape == (0, 3)
    assert box_iou(random_xyxy(2), torch.zeros(0, 4)).shape == (2, 0)


# ---------------------------------------------------------------- NMS


def test_batched_nms_suppresses_within_a_group_only():
    # Boxes 0 = (0, 0, 1, 1) and 1 = (0.1, 0, 1.1, 1): inter 0.9 * 1 = 0.9, union 1 + 1 - 0.9 = 1.1,
    # IoU 0.818 > 0.5. Box 2 is far from both.
    boxes = t([0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [5.0, 5.0, 6.0, 6.0])
    scores = torch.tensor([0.6, 0.9, 0.3])
    same = batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5)
    assert same.tolist() == [1, 2]  # box 0 is suppressed by the higher-scoring box 1; by score descending
    apart = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5)
    assert apart.tolist() == [1, 0, 2]  # different groups never suppress each other
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.9).tolist() == [1, 0, 2]  # 0.818 <= 0.9


def nms_loop(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Group by group with torchvision's plain nms, then all kept indices by score descending."""
    kept = []
    for group in idxs.unique().tolist():
        members = (idxs == group).nonzero().flatten()
        kept.append(members[tv_nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64)
    return kept[torch.argsort(scores[kept], descending=True)]


@pytest.mark.parametrize("num_boxes", [5, 300, 2000])  # 2000 boxes take torchvision's per-group path
def test_batched_nms_matches_per_group_loop(num_boxes):
    boxes = random_xyxy(num_boxes)
    scores = torch.rand(num_boxes)
    idxs = torch.randint(0, 7, (num_boxes,))
    got = batched_nms(boxes, scores, idxs, 0.4)
    assert torch.equal(got, nms_loop(boxes, scores, idxs, 0.4))


def test_batched_nms_accepts_half_precision_and_empty_input():
    boxes, scores = random_xyxy(50), torch.rand(50)
    idxs = torch.randint(0, 3, (50,))
    got = batched_nms(boxes.half(), scores.half(), idxs, 0.5)
    assert got.dtype == torch.int64 and len(got) > 0
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_batched_nms_is_exact_for_large_group_ids():
    # Pairs of small (0.005..0.055 wide) boxes with IoU near 0.5, each pair in its own group 1000 + pair.
    pairs = 200
    xy = torch.rand(pairs, 2) * 0.9
    wh = torch.rand(pairs, 2) * 0.05 + 0.005
    first = torch.cat((xy, xy + wh), dim=1)
    shift = (torch.rand(pairs, 2) * 0.4 * wh).repeat(1, 2)
    boxes = torch.stack((first, first + shift), dim=1).reshape(-1, 4)  # (2 * pairs, 4)
    scores = torch.tensor([0.9, 0.8]).repeat(pairs)
    idxs = (1000 + torch.arange(pairs)).repeat_interleave(2)
    want = nms_loop(boxes.double(), scores.double(), idxs, 0.5)
    assert 0 < len(want) < 2 * pairs  # some pairs are suppressed, some not
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5).sort().values, want.sort().values)
