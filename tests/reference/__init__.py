"""Test oracles written independently of yolov1 (devkit_voc_eval) and a synthetic detection-set generator.

The generator is shared by tests/test_metrics.py and benchmarks/bench_metrics.py; it returns plain tuples of numpy
arrays, in the per-image layout yolov1.metrics takes, so nothing here imports the code under test.
"""

import numpy as np


def synthetic_detection_set(
    seed,
    *,
    num_images,
    num_classes,
    difficult_fraction=0.0,
    detections_per_image=8.0,
    integer_boxes=True,
    score_decimals=None,
    image_size=(500, 375),
):
    """Random VOC-like ground truth and detections that overlap it realistically (APs land mid-range).

    Per image: 1 + Poisson(1.4) objects (~2.4) of random classes, each difficult with ``difficult_fraction``; each
    object gets 0-2 jittered detections (mostly of its class, IoU spread around 0.5), and random false positives
    bring the total to about ``detections_per_image``. ``integer_boxes`` gives VOC's 1-based integer corners;
    otherwise continuous ones. Scores are continuous (no ties) unless ``score_decimals`` rounds them.
    Returns (detections, ground_truths): lists over images of (boxes (D, 4), scores (D,), labels (D,)) and
    (boxes (G, 4), labels (G,), difficult (G,) bool), boxes xyxy in pixels.
    """
    rng = np.random.default_rng(seed)
    width, height = image_size
    detections, ground_truths = [], []
    for _ in range(num_images):
        k = 1 + rng.poisson(1.4)
        gt_boxes = _random_boxes(rng, k, width, height, integer_boxes)
        gt_labels = rng.integers(0, num_classes, k)
        difficult = rng.random(k) < difficult_fraction
        ground_truths.append((gt_boxes, gt_labels, difficult))

        copies = rng.choice([0, 1, 1, 1, 2], size=k)  # missed objects and duplicates
        source = np.repeat(np.arange(k), copies)
        size = (gt_boxes[:, 2:] - gt_boxes[:, :2])[source]  # (n, 2) width, height
        jitter = rng.normal(0.0, 0.12, (len(source), 4)) * np.concatenate([size, size], axis=1)
        det_boxes = _clip(gt_boxes[source] + jitter, width, height, integer_boxes)
        det_labels = np.where(
            rng.random(len(source)) < 0.85, gt_labels[source], rng.integers(0, num_classes, len(source))
        )
        det_scores = rng.uniform(0.2, 1.0, len(source))
        n_false = max(0, rng.poisson(detections_per_image) - len(source))
        det_boxes = np.concatenate([det_boxes, _random_boxes(rng, n_false, width, height, integer_boxes)])
        det_labels = np.concatenate([det_labels, rng.integers(0, num_classes, n_false)])
        det_scores = np.concatenate([det_scores, rng.uniform(0.0, 0.8, n_false)])
        if score_decimals is not None:
            det_scores = np.round(det_scores, score_decimals)
        detections.append((det_boxes, det_scores, det_labels))
    return detections, ground_truths


def _random_boxes(rng, n, width, height, integer_boxes):
    w = rng.uniform(0.1, 0.7, n) * width
    h = rng.uniform(0.1, 0.7, n) * height
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return _clip(np.stack([x1, y1, x1 + w, y1 + h], axis=1).reshape(n, 4), width, height, integer_boxes)


def _clip(boxes, width, height, integer_boxes):
    if integer_boxes:  # VOC: 1-based inclusive integer corners, 1 <= xmin <= xmax <= width
        boxes = np.round(boxes) + 1
        low, high = 1, np.array([width, height, width, height])
    else:
        low, high = 0, np.array([width, height, width, height])
    boxes = np.clip(boxes, low, high)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    return boxes
