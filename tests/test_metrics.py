"""VOC mAP (yolov1.metrics): hand-worked cases, then agreement with two implementations this project did not write
the rules of: the PyPI package mean_average_precision and a plain port of the devkit (tests/reference)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mean_average_precision import MetricBuilder

from yolov1.metrics import (
    ImageDetections,
    ImageGroundTruth,
    evaluate_both,
    evaluate_detections,
    match_detections,
    voc_ap,
)

# tests.reference must import however pytest is started (rootdir or not on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reference import devkit_voc_eval, synthetic_detection_set  # noqa: E402


def _dets(boxes, scores, labels):
    return ImageDetections(
        np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, float), np.array(labels)
    )


def _gts(boxes, labels, difficult=None):
    difficult = np.zeros(len(labels), bool) if difficult is None else np.array(difficult, bool)
    return ImageGroundTruth(np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels), difficult)


# ---- hand-worked cases -------------------------------------------------------------------------------------------


def test_tp_fp_tp_over_two_objects():
    # Two objects of class 0. By score: 0.9 hits A (TP), 0.8 hits nothing (FP), 0.7 hits B (TP).
    # cumulative tp 1,1,2; fp 0,1,1 -> precision 1/1, 1/2, 2/3; recall 1/2, 1/2, 2/2.
    # area: envelope 1, 2/3, 2/3; recall steps 0->.5 at precision 1 and .5->1 at 2/3: .5*1 + .5*2/3 = 0.8333.
    # 11-point: t = 0, .1, ..., .5 (6 thresholds) reach recall >= t with max precision 1; t = .6 ... 1 (5) only
    # the last detection, 2/3: (6*1 + 5*2/3)/11 = 0.8485.
    gt = [_gts([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    det = [_dets([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])]
    res = evaluate_both(det, gt, num_classes=1)
    np.testing.assert_allclose(res["area"].precision[0], [1, 0.5, 2 / 3])
    np.testing.assert_allclose(res["area"].recall[0], [0.5, 0.5, 1])
    assert res["area"].ap[0] == pytest.approx(0.5 + 0.5 * 2 / 3)  # 0.8333
    assert res["voc07"].ap[0] == pytest.approx((6 + 5 * 2 / 3) / 11)  # 0.8485
    assert res["voc07"].map == pytest.approx(0.8485, abs=1e-4)


def test_duplicate_detection_is_a_false_positive():
    # One object, two detections on it: 0.9 takes it (TP), 0.8 finds it taken (FP). precision 1, 1/2; recall 1, 1.
    # area: envelope 1, 1 -> 1 * 1 = 1; 11-point: every threshold reached at precision 1 -> 1.
    gt = [_gts([[0, 0, 10, 10]], [0])]
    det = [_dets([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.8], [0, 0])]
    (m,) = match_detections(det, gt, num_classes=1, iou_threshold=0.5)
    assert m.tp.tolist() == [True, False] and m.fp.tolist() == [False, True]
    res = evaluate_both(det, gt, num_classes=1)
    np.testing.assert_allclose(res["area"].precision[0], [1, 0.5])
    assert res["area"].ap[0] == 1.0 and res["voc07"].ap[0] == 1.0


def test_taken_best_match_does_not_fall_back_to_second_best():
    # A = (0,0,10,10), B = (2,0,12,10). Detection 1 = A exactly -> TP on A. Detection 2 = (0.5,0,10.5,10):
    # IoU with A = 95/(100+100-95) = 0.905, with B = 85/(100+100-85) = 0.739. Its best, A, is taken -> FP,
    # although B (0.739 > 0.5) is free: the devkit only looks at the best. Detection 3 = B exactly -> TP.
    gt = [_gts([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    det = [_dets([[0, 0, 10, 10], [0.5, 0, 10.5, 10], [2, 0, 12, 10]], [0.9, 0.8, 0.7], [0, 0, 0])]
    (m,) = match_detections(det, gt, num_classes=1, iou_threshold=0.5)
    assert m.tp.tolist() == [True, False, True] and m.fp.tolist() == [False, True, False]


def test_difficult_match_is_ignored_and_not_a_positive():
    # Objects: D (difficult) and E. Detection 0.9 hits D -> ignored (tp 0, fp 0); 0.8 hits E -> TP.
    # positives = 1 (D not counted). cumulative tp 0,1; fp 0,0 -> precision 0 (0/eps, not 0/0), 1; recall 0, 1.
    # area: mrec 0,0,1,1; envelope 1,1,1,0; recall steps once, 0->1 at precision 1 -> AP 1. 11-point: 1.
    gt = [_gts([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], difficult=[True, False])]
    det = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0])]
    (m,) = match_detections(det, gt, num_classes=1, iou_threshold=0.5)
    assert m.tp.tolist() == [False, True] and m.fp.tolist() == [False, False] and m.num_positives == 1
    res = evaluate_both(det, gt, num_classes=1)
    np.testing.assert_allclose(res["area"].precision[0], [0, 1])
    np.testing.assert_allclose(res["area"].recall[0], [0, 1])
    assert res["area"].ap[0] == 1.0 and res["voc07"].ap[0] == 1.0


def test_iou_of_exactly_the_threshold_matches_by_default_and_not_under_the_strict_rule():
    # Object (0,0,10,10), area 100. Detection (0,0,10,5): intersection 50, union 100 -> IoU exactly 0.5.
    # Official devkit (default ">="): 0.5 >= 0.5 -> TP, AP 1. Python ports (">"): 0.5 > 0.5 is false -> FP, AP 0.
    # Detection (0,0,10,5.5): 55 / 100 = 0.55 -> TP under both rules.
    gt = [_gts([[0, 0, 10, 10]], [0])]
    at, above = [_dets([[0, 0, 10, 5]], [0.9], [0])], [_dets([[0, 0, 10, 5.5]], [0.9], [0])]
    default = evaluate_detections(at, gt, num_classes=1, iou_threshold=0.5)
    assert default.ap[0] == 1.0 and default.match_comparison == ">="
    strict = evaluate_detections(at, gt, num_classes=1, iou_threshold=0.5, match_comparison=">")
    assert strict.ap[0] == 0.0 and strict.match_comparison == ">"
    for rule in (">=", ">"):
        assert evaluate_detections(above, gt, num_classes=1, match_comparison=rule).ap[0] == 1.0


def test_devkit_exact_tie_on_integer_voc_boxes():
    # The case from the devkit notes: GT (1,1,10,10) vs detection (1,1,10,20), VOC's inclusive integer pixels.
    # +1 convention: GT 10 x 10 = 100, detection 10 x 20 = 200, intersection 10 x 10 = 100, union 200 -> 0.5 exactly.
    # VOCevaldet.m (ovmax >= 0.5): TP, AP 1. py-faster-rcnn (ovmax > 0.5): FP, AP 0.
    # The project's shifted continuous boxes (0,0,10,10) vs (0,0,10,20) give 100 / 200 = 0.5 too, bit for bit.
    gt, det = [_gts([[1, 1, 10, 10]], [0])], [_dets([[1, 1, 10, 20]], [0.9], [0])]
    shifted_gt, shifted_det = [_gts([[0, 0, 10, 10]], [0])], [_dets([[0, 0, 10, 20]], [0.9], [0])]
    for rule, expected in ((">=", 1.0), (">", 0.0)):
        for method in ("voc07", "area"):
            ours = evaluate_detections(det, gt, num_classes=1, method=method, inclusive_pixels=True,
                                       match_comparison=rule)
            project = evaluate_detections(shifted_det, shifted_gt, num_classes=1, method=method,
                                          match_comparison=rule)
            ref = devkit_voc_eval.voc_eval(det, gt, 0, 0.5, method == "voc07", True, rule)
            assert ours.ap[0] == project.ap[0] == expected
            assert ref[2] == pytest.approx(expected, abs=1e-12)  # the port sums 11 x 1/11


def test_match_comparison_is_recorded_and_checked():
    gt, det = [_gts([[0, 0, 10, 10]], [0])], [_dets([[0, 0, 10, 10]], [0.9], [0])]
    for rule in (">=", ">"):
        both = evaluate_both(det, gt, num_classes=1, match_comparison=rule)
        assert {r.to_dict(["a"])["match_comparison"] for r in both.values()} == {rule}
    with pytest.raises(ValueError, match="match_comparison"):
        evaluate_detections(det, gt, num_classes=1, match_comparison="=>")


def test_inclusive_pixels_adds_one():
    # Object (1,1,2,2), detection (1,1,3,2), integer corners.
    # inclusive: object 2x2 = 4, detection 3x2 = 6, intersection 2x2 = 4 -> IoU 4/(6+4-4) = 0.667 -> TP, AP 1.
    # continuous: object 1x1 = 1, detection 2x1 = 2, intersection 1 -> IoU 1/2 = 0.5: under the strict rule
    # (">", so that the +1 alone decides) not > 0.5 -> FP, AP 0.
    # The same boxes shifted to the project's (xmin-1, ymin-1, xmax, ymax): object (0,0,2,2) = 4, detection
    # (0,0,3,2) = 6, intersection 4 -> continuous IoU 0.667: the devkit's +1 IoU, as the docstring says.
    gt, det = [_gts([[1, 1, 2, 2]], [0])], [_dets([[1, 1, 3, 2]], [0.9], [0])]
    assert evaluate_detections(det, gt, num_classes=1, inclusive_pixels=True).ap[0] == 1.0
    assert evaluate_detections(det, gt, num_classes=1, inclusive_pixels=False, match_comparison=">").ap[0] == 0.0
    shifted_gt, shifted_det = [_gts([[0, 0, 2, 2]], [0])], [_dets([[0, 0, 3, 2]], [0.9], [0])]
    assert evaluate_detections(shifted_det, shifted_gt, num_classes=1, inclusive_pixels=False).ap[0] == 1.0


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    # Class 0: one object, one exact detection -> AP 1. Class 1: detections only -> NaN. Class 2: one object,
    # one detection elsewhere -> AP 0. Class 3: a difficult object only -> no positives -> NaN. mAP = (1 + 0) / 2.
    gt = [
        _gts([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0, 2, 3], difficult=[False, False, True])
    ]
    det = [_dets([[0, 0, 10, 10], [0, 0, 10, 10], [60, 60, 70, 70]], [0.9, 0.8, 0.7], [0, 1, 2])]
    for method in ("voc07", "area"):
        res = evaluate_detections(det, gt, num_classes=4, method=method)
        assert res.ap[0] == 1.0 and res.ap[2] == 0.0 and np.isnan(res.ap[1]) and np.isnan(res.ap[3])
        assert res.map == 0.5 and res.classes_without_gt == [1, 3]
        assert res.num_positives.tolist() == [1, 0, 1, 0]
        summary = res.to_dict(["a", "b", "c", "d"])
        assert summary["ap"] == {"a": 1.0, "b": None, "c": 0.0, "d": None} and summary["map"] == 0.5
        json.dumps(summary, allow_nan=False)  # really JSON


def test_no_detections_gives_zero_ap_for_classes_with_ground_truth():
    gt = [_gts([[0, 0, 10, 10]], [0]), _gts(np.zeros((0, 4)), [])]
    det = [_dets(np.zeros((0, 4)), [], []), (np.array([]), np.array([]), np.array([]))]  # (0,) boxes too
    res = evaluate_both(det, gt, num_classes=2)
    for r in res.values():
        assert r.ap[0] == 0.0 and np.isnan(r.ap[1]) and r.map == 0.0
        assert len(r.precision[0]) == 0 and len(r.recall[0]) == 0


def test_no_images_gives_nan_everywhere():
    res = evaluate_detections([], [], num_classes=3)
    assert np.isnan(res.ap).all() and math.isnan(res.map) and res.classes_without_gt == [0, 1, 2]
    assert res.to_dict(["a", "b", "c"])["map"] is None


def test_voc_ap_edge_cases():
    # Empty: no recall threshold is reached and the area is 0.
    assert (
        voc_ap(np.zeros(0), np.zeros(0), "voc07") == 0.0 and voc_ap(np.zeros(0), np.zeros(0), "area") == 0.0
    )
    # recall .2, .4 at precision .5, 1: envelope 1, 1 -> area .4 * 1 = .4; 11-point t = 0...0.4 (5 thresholds;
    # 0.4 from np.arange is exactly 0.4) at precision 1 -> 5/11.
    assert voc_ap(np.array([0.2, 0.4]), np.array([0.5, 1.0]), "area") == pytest.approx(0.4)
    assert voc_ap(np.array([0.2, 0.4]), np.array([0.5, 1.0]), "voc07") == pytest.approx(5 / 11)
    # recall exactly 0.3 does not reach np.arange's 0.30000000000000004, in the devkit ports and here: 3/11.
    assert voc_ap(np.array([0.3]), np.array([1.0]), "voc07") == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.3]), np.array([1.0]), "voc07") == pytest.approx(
        devkit_voc_eval.voc_ap(np.array([0.3]), np.array([1.0]), True)
    )
    with pytest.raises(ValueError, match="method"):
        voc_ap(np.zeros(1), np.zeros(1), "coco")


def test_torch_tensors_and_plain_tuples_give_the_same_result():
    dets, gts = synthetic_detection_set(3, num_images=20, num_classes=4, difficult_fraction=0.15)
    expected = evaluate_detections(dets, gts, num_classes=4)
    t_dets = [tuple(torch.as_tensor(a) for a in d) for d in dets]
    t_gts = [ImageGroundTruth(*(torch.as_tensor(a) for a in g)) for g in gts]
    np.testing.assert_array_equal(evaluate_detections(t_dets, t_gts, num_classes=4).ap, expected.ap)
    # Tensors numpy cannot read directly (here: requiring grad) take the image-by-image path.
    g_dets = [
        (torch.as_tensor(b).requires_grad_(), torch.as_tensor(s), torch.as_tensor(lab)) for b, s, lab in dets
    ]
    np.testing.assert_array_equal(evaluate_detections(g_dets, t_gts, num_classes=4).ap, expected.ap)


def test_missing_difficult_flags_mean_none_difficult():
    dets, gts = synthetic_detection_set(4, num_images=20, num_classes=4)
    expected = evaluate_detections(dets, gts, num_classes=4)
    np.testing.assert_array_equal(
        evaluate_detections(dets, [ImageGroundTruth(b, lab) for b, lab, _ in gts], num_classes=4).ap,
        expected.ap,
    )


@pytest.mark.parametrize(
    ("dets", "gts", "message"),
    [
        ([_dets([[0, 0, 1, 1]], [0.5], [3])], [_gts([[0, 0, 1, 1]], [0])], "detections: image 0 has a label"),
        (
            [_dets([], [], [])] * 2,
            [_gts([], []), _gts([[0, 0, 1, 1]], [5])],
            "ground_truths: image 1 has a label",
        ),
        ([_dets([[0, 0, 1, 1]], [np.nan], [0])], [_gts([], [])], "non-finite score"),
        ([_dets([[2, 0, 1, 1]], [0.5], [0])], [_gts([], [])], "inverted"),
        ([(np.zeros((2, 4)), np.zeros(3), np.zeros(2))], [_gts([], [])], "detections: image 0 has shapes"),
        ([_dets([], [], [])], [], "1 images of detections but 0"),
    ],
)
def test_bad_input_names_the_image(dets, gts, message):
    with pytest.raises(ValueError, match=message):
        evaluate_detections(dets, gts, num_classes=3)


# ---- independent implementations ---------------------------------------------------------------------------------


def _package_aps(dets, gts, num_classes):
    """Per-class AP from mean_average_precision 2024.1.5.0 (read from its source): add() takes per image
    preds [x1, y1, x2, y2, class, score] and gt [x1, y1, x2, y2, class, difficult, crowd]; value() with
    mpolicy="greedy" is the devkit's matching (best-IoU object only, no fall-back). recall_thresholds=None gives
    the area method exactly as the devkit's voc_ap; recall_thresholds=np.arange(0, 1.1, 0.1) the 11-point one,
    same thresholds. Its IoU adds 1 (our inclusive_pixels=True) and it matches at IoU > threshold (our
    match_comparison=">"; with continuous boxes no IoU is exactly 0.5 anyway). Where it departs from the devkit, and how these
    tests stay clear of it: it counts difficult objects as positives (sets here have none); its score sort and IoU
    argmax are not stable/first-max (scores and boxes here are continuous, so no ties); it stores APs as float32
    (hence 1e-6, not 1e-12); its mAP also averages classes without ground truth as 0 (only per-class APs of
    classes with ground truth are compared)."""
    metric = MetricBuilder.build_evaluation_metric("map_2d", async_mode=False, num_classes=num_classes)
    for (boxes, scores, labels), (gt_boxes, gt_labels, difficult) in zip(dets, gts, strict=True):
        preds = np.column_stack([boxes, labels, scores])
        gt = np.column_stack([gt_boxes, gt_labels, difficult, np.zeros(len(gt_labels))])
        metric.add(preds, gt)
    out = {}
    for method, thresholds in (("area", None), ("voc07", np.arange(0.0, 1.1, 0.1))):
        value = metric.value(iou_thresholds=0.5, recall_thresholds=thresholds, mpolicy="greedy")
        out[method] = np.array([value[0.5][c]["ap"] for c in range(num_classes)], dtype=np.float64)
    return out


@pytest.mark.parametrize(("seed", "num_classes"), [(0, 3), (1, 20), (2, 7)])
def test_agrees_with_mean_average_precision_package(seed, num_classes):
    dets, gts = synthetic_detection_set(seed, num_images=150, num_classes=num_classes, integer_boxes=False)
    ours = evaluate_both(dets, gts, num_classes=num_classes, inclusive_pixels=True, match_comparison=">")
    theirs = _package_aps(dets, gts, num_classes)
    with_gt = ours["area"].num_positives > 0
    assert with_gt.sum() >= num_classes - 1
    for method in ("voc07", "area"):
        assert 0.2 < ours[method].map < 0.8  # mid-range, so the comparison means something
        np.testing.assert_allclose(ours[method].ap[with_gt], theirs[method][with_gt], rtol=0, atol=1e-6)


def _reference(dets, gts, num_classes, use_07_metric, inclusive_pixels, match_comparison=">="):
    return [
        devkit_voc_eval.voc_eval(dets, gts, c, 0.5, use_07_metric, inclusive_pixels, match_comparison)
        for c in range(num_classes)
    ]


@pytest.mark.parametrize("inclusive_pixels", [True, False])
@pytest.mark.parametrize(
    ("seed", "num_classes", "integer_boxes"), [(10, 3, True), (11, 20, False), (12, 8, True)]
)
def test_agrees_with_devkit_port_with_difficult_objects(seed, num_classes, integer_boxes, inclusive_pixels):
    dets, gts = synthetic_detection_set(
        seed, num_images=300, num_classes=num_classes, difficult_fraction=0.15, integer_boxes=integer_boxes
    )
    ours = evaluate_both(dets, gts, num_classes=num_classes, inclusive_pixels=inclusive_pixels)
    matches = match_detections(
        dets, gts, num_classes=num_classes, iou_threshold=0.5, inclusive_pixels=inclusive_pixels
    )
    assert sum(int(m.tp.sum()) for m in matches) > 0 and sum(int((~m.tp & ~m.fp).sum()) for m in matches) > 0
    for method, use_07 in (("voc07", True), ("area", False)):
        assert 0.2 < ours[method].map < 0.8
        ref = _reference(dets, gts, num_classes, use_07, inclusive_pixels)
        np.testing.assert_allclose(ours[method].ap, [r[2] for r in ref], rtol=0, atol=1e-6)
        for c, (rec, prec, _, tp, fp) in enumerate(ref):
            # the matching itself, detection by detection
            np.testing.assert_array_equal(matches[c].tp, tp.astype(bool))
            np.testing.assert_array_equal(matches[c].fp, fp.astype(bool))
            np.testing.assert_allclose(ours[method].recall[c], rec, rtol=0, atol=1e-12)
            np.testing.assert_allclose(ours[method].precision[c], prec, rtol=0, atol=1e-12)


def test_tied_scores_keep_input_order_like_the_devkit():
    # Scores rounded to 1 decimal: many ties, which both sides break by input order (stable sort).
    dets, gts = synthetic_detection_set(
        13, num_images=200, num_classes=5, difficult_fraction=0.15, score_decimals=1
    )
    matches = match_detections(dets, gts, num_classes=5, iou_threshold=0.5, inclusive_pixels=True)
    for c, (_, _, _, tp, fp) in enumerate(_reference(dets, gts, 5, True, True)):
        np.testing.assert_array_equal(matches[c].tp, tp.astype(bool))
        np.testing.assert_array_equal(matches[c].fp, fp.astype(bool))


def test_shifted_continuous_boxes_equal_devkit_inclusive_integers():
    # The project's convention: VOC's (xmin, ymin, xmax, ymax) stored as (xmin-1, ymin-1, xmax, ymax), IoU without +1.
    dets, gts = synthetic_detection_set(14, num_images=200, num_classes=6, difficult_fraction=0.15)
    shift = np.array([-1.0, -1.0, 0.0, 0.0])
    s_dets = [(b + shift, s, lab) for b, s, lab in dets]
    s_gts = [(b + shift, lab, d) for b, lab, d in gts]
    for method in ("voc07", "area"):
        devkit = evaluate_detections(dets, gts, num_classes=6, method=method, inclusive_pixels=True)
        project = evaluate_detections(s_dets, s_gts, num_classes=6, method=method, inclusive_pixels=False)
        np.testing.assert_array_equal(project.ap, devkit.ap)


def test_evaluate_both_equals_single_method_runs():
    dets, gts = synthetic_detection_set(15, num_images=50, num_classes=5, difficult_fraction=0.15)
    both = evaluate_both(dets, gts, num_classes=5)
    for method in ("voc07", "area"):
        single = evaluate_detections(dets, gts, num_classes=5, method=method)
        np.testing.assert_array_equal(both[method].ap, single.ap)
        assert both[method].method == method and both[method].map == single.map


def _with_exact_ties(dets, gts):
    """Add to every image, per ground truth (x1, y1, x2, y2) of VOC integers, a detection (x1, y1, x2, y2 + h) with
    h = y2 - y1 + 1: same width, double the height, so its +1 IoU with that object is h*w / (2h*w) = 0.5 exactly."""
    out = []
    for (boxes, scores, labels), (gt_boxes, gt_labels, _) in zip(dets, gts, strict=True):
        tie = gt_boxes + np.stack([0 * gt_boxes[:, 0], 0 * gt_boxes[:, 0], 0 * gt_boxes[:, 0],
                                   gt_boxes[:, 3] - gt_boxes[:, 1] + 1], axis=1)
        tie_scores = np.linspace(0.95, 0.05, len(gt_labels))
        out.append((np.concatenate([boxes, tie]), np.concatenate([scores, tie_scores]),
                    np.concatenate([labels, gt_labels])))
    return out


@pytest.mark.parametrize("match_comparison", [">=", ">"])
def test_agrees_with_devkit_port_under_both_rules_with_many_exact_ties(match_comparison):
    dets, gts = synthetic_detection_set(16, num_images=150, num_classes=5, difficult_fraction=0.15)
    dets = _with_exact_ties(dets, gts)
    matches = match_detections(dets, gts, num_classes=5, iou_threshold=0.5, inclusive_pixels=True,
                               match_comparison=match_comparison)
    for method, use_07 in (("voc07", True), ("area", False)):
        ours = evaluate_detections(dets, gts, num_classes=5, method=method, inclusive_pixels=True,
                                   match_comparison=match_comparison)
        ref = _reference(dets, gts, 5, use_07, True, match_comparison)
        np.testing.assert_allclose(ours.ap, [r[2] for r in ref], rtol=0, atol=1e-12)
        for c, (_, _, _, tp, fp) in enumerate(ref):
            np.testing.assert_array_equal(matches[c].tp, tp.astype(bool))
            np.testing.assert_array_equal(matches[c].fp, fp.astype(bool))
    # The ties are real: the two rules disagree on this set, in the direction the rule says.
    strict = evaluate_detections(dets, gts, num_classes=5, inclusive_pixels=True, match_comparison=">")
    official = evaluate_detections(dets, gts, num_classes=5, inclusive_pixels=True, match_comparison=">=")
    assert (official.ap >= strict.ap).all() and official.map > strict.map
