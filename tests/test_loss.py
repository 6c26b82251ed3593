"""Tests for yolov1.loss: each term on hand-worked cells, responsibility, noobj in object cells, batch
normalisation, a plain-loop reference on random inputs, autocast and empty targets."""

from __future__ import annotations

import math

import pytest
import torch

from yolov1.config import LossConfig
from yolov1.loss import YoloLoss

KEYS = ("coord", "obj", "noobj", "class")


def make_loss(target: str = "iou", b: int = 2, c: int = 3) -> YoloLoss:
    return YoloLoss(LossConfig(lambda_coord=5.0, lambda_noobj=0.5, confidence_target=target),
                    boxes_per_cell=b, num_classes=c)


def one_object(n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """S=2, B=2, C=3: one object (class 1) in cell (row 0, col 0); a perfect, fully confident predictor 0.

    Truth: x = y = 0.5 (cell-relative), w = h = 0.25 -> image cxcywh (0.25, 0.25, 0.25, 0.25),
    xyxy [0.125, 0.125, 0.375, 0.375], area 0.0625.
    Predictor 1: same centre, sqrt_w = sqrt_h = 0.25 -> w = h = 0.0625, inside the truth:
    IoU = 0.0625^2 / 0.25^2 = 0.0625, conf 0. Every other output 0, so every term is 0.
    """
    pred = torch.zeros(n, 2, 2, 13)
    target = torch.zeros(n, 2, 2, 8)
    target[:, 0, 0] = torch.tensor([0.5, 0.5, 0.25, 0.25, 1.0, 0.0, 1.0, 0.0])
    pred[:, 0, 0, 0:5] = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0])
    pred[:, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.25, 0.25, 0.0])
    pred[:, 0, 0, 10:13] = torch.tensor([0.0, 1.0, 0.0])
    return pred, target


def values(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.item() for k, v in parts.items()}


def assert_parts(parts: dict[str, torch.Tensor], **expected: float) -> None:
    got = values(parts)
    for key in KEYS:
        assert got[key] == pytest.approx(expected.get(key, 0.0), abs=1e-6), key
    assert got["total"] == pytest.approx(sum(got[k] for k in KEYS), abs=1e-6)


def test_base_case_is_zero():
    pred, target = one_object()
    assert_parts(make_loss()(pred, target))


def test_coord_term_centre():
    pred, target = one_object()
    pred[0, 0, 0, 0] = 0.7  # x off by 0.2 -> coord = 5 * 0.2^2 = 0.2
    # IoU of predictor 0 is now 3/7 (x-extent [0.225, 0.475] vs [0.125, 0.375]: inter 0.15 * 0.25 = 0.0375,
    # union 0.0625 + 0.0625 - 0.0375 = 0.0875), still > 0.0625 so it stays responsible; conf 1 vs "one" -> obj 0.
    assert_parts(make_loss("one")(pred, target), coord=0.2)
    # With the IoU target: obj = (1 - 3/7)^2 = 16/49.
    assert_parts(make_loss("iou")(pred, target), coord=0.2, obj=16 / 49)


def test_coord_term_uses_sqrt_of_target_size():
    pred, target = one_object()
    pred[0, 0, 0, 2] = 0.6  # sqrt_w 0.6 vs sqrt(0.25) = 0.5 -> coord = 5 * 0.1^2 = 0.05
    # IoU: pred w = 0.36 covers the truth in x: 0.0625 / (0.36 * 0.25) = 0.0625 / 0.09 = 25/36.
    assert_parts(make_loss("iou")(pred, target), coord=0.05, obj=(1 - 25 / 36) ** 2)


def test_obj_term():
    pred, target = one_object()
    pred[0, 0, 0, 4] = 0.8  # perfect box, IoU 1: both targets give (0.8 - 1)^2 = 0.04
    assert_parts(make_loss("one")(pred, target), obj=0.04)
    assert_parts(make_loss("iou")(pred, target), obj=0.04)
    pred[0, 0, 0, 0] = 0.7  # IoU 3/7: "iou" -> (0.8 - 3/7)^2 = (2.6/7)^2 = 6.76/49; "one" still 0.04
    assert_parts(make_loss("iou")(pred, target), coord=0.2, obj=6.76 / 49)
    assert_parts(make_loss("one")(pred, target), coord=0.2, obj=0.04)


def test_noobj_term_in_empty_cells():
    pred, target = one_object()
    pred[0, 1, 1, 4], pred[0, 1, 1, 9] = 0.4, -0.2  # noobj = 0.5 * (0.16 + 0.04) = 0.1
    pred[0, 1, 1, 0:4] = torch.tensor([0.9, 0.1, 2.0, -3.0])  # box outputs of empty cells cost nothing
    assert_parts(make_loss()(pred, target), noobj=0.1)


def test_noobj_counts_the_non_responsible_predictor_of_an_object_cell():
    pred, target = one_object(n=2)
    before = make_loss()(pred, target)["total"].item()
    pred[0, 0, 0, 9] = 0.6  # predictor 1 (IoU 0.0625, not responsible) of the object cell, image 0 of N = 2
    parts = make_loss()(pred, target)
    # Changes the loss by exactly lambda_noobj * conf^2 / N = 0.5 * 0.36 / 2 = 0.09, all in the noobj term.
    assert parts["total"].item() - before == pytest.approx(0.09, abs=1e-6)
    assert_parts(parts, noobj=0.09)


def test_class_term_only_in_object_cells():
    pred, target = one_object()
    pred[0, 0, 0, 10:13] = torch.tensor([0.1, 0.7, 0.2])  # (0.1)^2 + (0.3)^2 + (0.2)^2 = 0.14
    pred[0, 0, 1, 10:13] = torch.tensor([5.0, -3.0, 9.0])  # empty cells: class outputs are free
    pred[0, 1, 0, 10:13] = torch.tensor([1.0, 1.0, 1.0])
    assert_parts(make_loss()(pred, target), **{"class": 0.14})


def test_responsibility_goes_to_the_higher_iou_predictor():
    pred, target = one_object()
    pred[0, 0, 0, 0:5] = torch.tensor([0.7, 0.5, 0.5, 0.5, 0.3])  # predictor 0: IoU 3/7
    pred[0, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0])  # predictor 1: perfect, IoU 1
    # Predictor 1 responsible: coord 0, obj (1 - 1)^2 = 0; predictor 0 is noobj: 0.5 * 0.3^2 = 0.045.
    assert_parts(make_loss()(pred, target), noobj=0.045)


def test_ties_go_to_the_lowest_index():
    pred, target = one_object()
    pred[0, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5])  # same box as predictor 0: IoU tie at 1
    # Predictor 0 responsible (conf 1: obj 0); predictor 1 noobj 0.5 * 0.5^2 = 0.125.
    # (Predictor 1 responsible would give obj 0.25 and noobj 0.5.)
    assert_parts(make_loss()(pred, target), noobj=0.125)


def test_zero_iou_everywhere_gives_predictor_0_and_iou_target_0():
    pred, target = one_object()
    pred[0, 0, 0, 0:5] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.5])  # zero-size box: IoU 0
    pred[0, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])  # IoU 0 as well
    # Predictor 0: coord 5 * (0.5^2 + 0.5^2) = 2.5; obj (0.5 - 0)^2 = 0.25 ("iou") or (0.5 - 1)^2 ("one").
    assert_parts(make_loss("iou")(pred, target), coord=2.5, obj=0.25)
    assert_parts(make_loss("one")(pred, target), coord=2.5, obj=0.25)


def random_case(n: int, s: int, b: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, s, s, 5 * b + c, generator=g) * 1.4 - 0.2  # some negative outputs too
    target = torch.zeros(n, s, s, 5 + c)
    obj = torch.rand(n, s, s, generator=g) < 0.3
    k = int(obj.sum())
    classes = torch.nn.functional.one_hot(torch.randint(c, (k,), generator=g), c).float()
    target[obj] = torch.cat((torch.rand(k, 2, generator=g), 0.02 + 0.9 * torch.rand(k, 2, generator=g),
                             torch.ones(k, 1), classes), dim=1)
    return pred, target


def perfect_predictions(target: torch.Tensor, b: int, seed: int = 1) -> torch.Tensor:
    """Predictor 0 of each object cell = the truth with conf 1; every other predictor has conf 0 and a random
    box (never IoU 1); class scores one-hot in object cells, random in empty ones."""
    g = torch.Generator().manual_seed(seed)
    n, s, _, d = target.shape
    c = d - 5
    pred = torch.rand(n, s, s, 5 * b + c, generator=g)
    pred[..., 4: 5 * b: 5] = 0.0  # every confidence 0
    obj = target[..., 4] > 0
    pred[..., 0:2][obj] = target[..., 0:2][obj]
    pred[..., 2:4][obj] = target[..., 2:4][obj].sqrt()
    pred[..., 4][obj] = 1.0
    pred[..., 5 * b:][obj] = target[..., 5:][obj]
    return pred


@pytest.mark.parametrize("confidence_target", ["iou", "one"])
def test_perfect_prediction_gives_zero_loss_and_finite_gradients(confidence_target):
    _, target = random_case(3, 7, 2, 20, seed=5)
    assert (target[..., 4] > 0).sum() > 5
    pred = perfect_predictions(target, b=2).requires_grad_(True)
    parts = make_loss(confidence_target, b=2, c=20)(pred, target)
    # The IoU of the perfect box is 1 up to float rounding (sqrt(w)^2 != w in the last bit), so the "iou"
    # target is 1 - O(1e-7): the loss is zero to ~1e-14 and the gradient to ~1e-7.
    assert_parts(parts)
    parts["total"].backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().max().item() < 1e-5  # a minimum of a sum of squares


def test_encode_targets_to_predictions_is_a_zero_loss_prediction():
    encode = pytest.importorskip("yolov1.encode")
    _, target = random_case(2, 7, 2, 20, seed=9)
    k = int((target[..., 4] > 0).sum())
    pred = encode.targets_to_predictions(target, boxes_per_cell=2)
    # Predictor 0 holds the truth with conf 1 and is responsible (IoU tie -> lowest index); predictor 1 holds the
    # same box with conf 0, so its noobj term is 0: every term is 0.
    assert_parts(make_loss("one", b=2, c=20)(pred, target))
    pred[..., 9] = target[..., 4]  # predictor 1 conf 1 in object cells: noobj charges it 0.5 * 1^2 per object cell -> 0.5 * K / N
    assert_parts(make_loss("one", b=2, c=20)(pred, target), noobj=0.5 * k / 2)


def test_gradients_finite_for_zero_and_negative_predictions():
    loss = make_loss(b=2, c=20)
    empty = torch.zeros(2, 7, 7, 25)
    for pred in (torch.zeros(2, 7, 7, 30), -torch.rand(2, 7, 7, 30)):
        pred.requires_grad_(True)
        loss(pred, empty)["total"].backward()
        assert torch.isfinite(pred.grad).all()
    _, target = random_case(2, 7, 2, 20, seed=3)
    target[0, 0, 0, :5] = torch.tensor([0.5, 0.5, 0.0, 0.0, 1.0])  # a degenerate zero-size truth: sqrt(0)
    pred = (-torch.rand(2, 7, 7, 30)).requires_grad_(True)
    parts = loss(pred, target)
    parts["total"].backward()
    assert all(torch.isfinite(v) for v in parts.values())
    assert torch.isfinite(pred.grad).all()


def test_normalised_by_batch_size():
    pred, target = random_case(2, 4, 2, 3, seed=7)
    loss = make_loss()
    single, double = values(loss(pred, target)), values(loss(pred.repeat(2, 1, 1, 1), target.repeat(2, 1, 1, 1)))
    for key in single:
        assert double[key] == pytest.approx(single[key], rel=1e-6), key
    halves = [values(loss(pred[i: i + 1], target[i: i + 1])) for i in range(2)]
    assert single["total"] == pytest.approx((halves[0]["total"] + halves[1]["total"]) / 2, rel=1e-6)


def test_empty_targets():
    pred = torch.rand(3, 7, 7, 30)
    parts = make_loss(b=2, c=20)(pred, torch.zeros(3, 7, 7, 25))
    expected_noobj = 0.5 * pred[..., [4, 9]].square().sum().item() / 3
    assert_parts(parts, noobj=expected_noobj)


def reference_loss(pred, target, b, c, lambda_coord=5.0, lambda_noobj=0.5, confidence_target="iou"):
    """The paper's loss cell by cell with plain-float IoU (independent of yolov1.boxes)."""
    n, s = pred.shape[0], pred.shape[1]
    parts = dict.fromkeys(KEYS, pred.new_zeros(()))
    for k in range(n):
        for i in range(s):
            for j in range(s):
                p, t = pred[k, i, j], target[k, i, j]
                if t[4] == 0:
                    for bb in range(b):
                        parts["noobj"] = parts["noobj"] + lambda_noobj * p[5 * bb + 4] ** 2
                    continue
                tx, ty, tw, th = ((t[0].item() + j) / s, (t[1].item() + i) / s, t[2].item(), t[3].item())
                ious = []
                for bb in range(b):
                    px, py = (p[5 * bb].item() + j) / s, (p[5 * bb + 1].item() + i) / s
                    pw, ph = p[5 * bb + 2].item() ** 2, p[5 * bb + 3].item() ** 2
                    iw = max(0.0, min(px + pw / 2, tx + tw / 2) - max(px - pw / 2, tx - tw / 2))
                    ih = max(0.0, min(py + ph / 2, ty + th / 2) - max(py - ph / 2, ty - th / 2))
                    union = pw * ph + tw * th - iw * ih
                    ious.append(iw * ih / union if union > 0 else 0.0)
                r = 0
                for bb in range(1, b):
                    if ious[bb] > ious[r]:
                        r = bb
                for bb in range(b):
                    box = p[5 * bb: 5 * bb + 5]
                    if bb != r:
                        parts["noobj"] = parts["noobj"] + lambda_noobj * box[4] ** 2
                        continue
                    parts["coord"] = parts["coord"] + lambda_coord * (
                        (box[0] - t[0]) ** 2 + (box[1] - t[1]) ** 2
                        + (box[2] - math.sqrt(tw)) ** 2 + (box[3] - math.sqrt(th)) ** 2)
                    conf_t = ious[bb] if confidence_target == "iou" else 1.0
                    parts["obj"] = parts["obj"] + (box[4] - conf_t) ** 2
                parts["class"] = parts["class"] + ((p[5 * b:] - t[5:]) ** 2).sum()
    parts = {key: v / n for key, v in parts.items()}
    parts["total"] = sum(parts[key] for key in KEYS)
    return parts


@pytest.mark.parametrize(("n", "s", "b", "c", "confidence_target"), [
    (2, 2, 2, 3, "iou"), (3, 7, 2, 20, "iou"), (2, 3, 3, 1, "one"), (2, 4, 1, 5, "iou"), (1, 5, 4, 2, "one"),
])
def test_matches_plain_loop_reference(n, s, b, c, confidence_target):
    pred, target = random_case(n, s, b, c, seed=s * 10 + b)
    pred_ref = pred.clone().requires_grad_(True)
    pred.requires_grad_(True)
    got = make_loss(confidence_target, b=b, c=c)(pred, target)
    ref = reference_loss(pred_ref, target, b, c, confidence_target=confidence_target)
    for key in ("total",) + KEYS:
        assert got[key].item() == pytest.approx(ref[key].item(), rel=1e-5, abs=1e-6), key
    got["total"].backward()
    ref["total"].backward()
    torch.testing.assert_close(pred.grad, pred_ref.grad, rtol=1e-5, atol=1e-6)


def test_autocast_bf16():
    pred32, target = random_case(4, 7, 2, 20, seed=11)
    layer = torch.nn.Linear(30, 30)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(30) * 200.0)  # large outputs: squares ~1e5 would lose a lot in bf16
        layer.bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = layer(pred32)
        assert pred.dtype == torch.bfloat16
        parts = make_loss(b=2, c=20)(pred, target)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in parts.values())
    expected = make_loss(b=2, c=20)(pred.float(), target)
    assert parts["total"].item() == pytest.approx(expected["total"].item(), rel=1e-5)


def test_bad_shapes_raise():
    loss = make_loss(b=2, c=3)
    with pytest.raises(ValueError, match="predictions"):
        loss(torch.zeros(1, 2, 2, 12), torch.zeros(1, 2, 2, 8))
    with pytest.raises(ValueError, match="targets"):
        loss(torch.zeros(1, 2, 2, 13), torch.zeros(1, 3, 3, 8))
