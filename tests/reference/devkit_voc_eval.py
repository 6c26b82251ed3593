"""A plain, line-by-line port of the PASCAL VOC devkit's detection AP, used only as a test oracle.

It follows py-faster-rcnn's lib/datasets/voc_eval.py (voc_eval, voc_ap), itself a port of the devkit's
VOCevaldet.m / VOCap.m: per class, one Python loop over detections sorted by score. Keep it slow and obvious; do not
vectorise it or share code with yolov1.metrics. Deliberate differences from py-faster-rcnn, none of which changes a
result on VOC data:
- ground truth and detections come from memory (the per-image tuples yolov1.metrics takes) instead of XML and text
  files, and images are named by their index;
- the score sort is stable (MATLAB's sort is; numpy's default quicksort is not), which only matters for tied scores;
- the devkit's "+ 1." of inclusive integer pixels is the parameter ``inclusive_pixels`` (``one`` below);
- the match test is the official devkit's ``if ovmax>=VOCopts.minoverlap`` (VOCevaldet.m) by default;
  py-faster-rcnn's ``if ovmax > ovthresh`` is ``match_comparison=">"``. They differ only when the best IoU is
  exactly the threshold, e.g. GT (1,1,10,10) vs detection (1,1,10,20) with the +1: 100 / 200 = 0.5;
- tp and fp are returned besides rec, prec, ap, so tests can compare the matching itself.
"""

import numpy as np


def voc_ap(rec, prec, use_07_metric=False):
    """ap = voc_ap(rec, prec, [use_07_metric])
    Compute VOC AP given precision and recall.
    If use_07_metric is true, uses the VOC 07 11 point method (default:False).
    """
    if use_07_metric:
        # 11 point metric
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        # correct AP calculation
        # first append sentinel values at the end
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))

        # compute the precision envelope
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])

        # to calculate area under PR curve, look for points
        # where X axis (recall) changes value
        i = np.where(mrec[1:] != mrec[:-1])[0]

        # and sum (\Delta recall) * prec
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def voc_eval(detections, ground_truths, classidx, ovthresh=0.5, use_07_metric=False, inclusive_pixels=True,
             match_comparison=">="):
    """rec, prec, ap, tp, fp = voc_eval(detections, ground_truths, classidx, [ovthresh], [use_07_metric])

    detections[i] = (boxes (D, 4) xyxy, scores (D,), labels (D,)) of image i;
    ground_truths[i] = (boxes (G, 4) xyxy, labels (G,), difficult (G,)) of image i.
    classidx: the class to evaluate. ovthresh: overlap threshold (default = 0.5).
    use_07_metric: whether to use VOC07's 11 point AP computation (default False).
    match_comparison: ">=" (VOCevaldet.m, default) or ">" (py-faster-rcnn).
    """
    if match_comparison not in (">=", ">"):
        raise ValueError(match_comparison)
    one = 1.0 if inclusive_pixels else 0.0

    # load annots
    recs = {}
    for imagename in range(len(ground_truths)):
        boxes, labels, difficult = ground_truths[imagename]
        objects = []
        for k in range(len(labels)):
            obj_struct = {}
            obj_struct["name"] = int(labels[k])
            obj_struct["difficult"] = int(difficult[k])
            obj_struct["bbox"] = [
                float(boxes[k][0]),
                float(boxes[k][1]),
                float(boxes[k][2]),
                float(boxes[k][3]),
            ]
            objects.append(obj_struct)
        recs[imagename] = objects
    imagenames = list(recs.keys())

    # extract gt objects for this class
    class_recs = {}
    npos = 0
    for imagename in imagenames:
        R = [obj for obj in recs[imagename] if obj["name"] == classidx]
        bbox = np.array([x["bbox"] for x in R]).reshape(-1, 4)
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}

    # read dets (one "image_id score x1 y1 x2 y2" line per detection of this class)
    splitlines = []
    for imagename in range(len(detections)):
        boxes, scores, labels = detections[imagename]
        for k in range(len(labels)):
            if int(labels[k]) == classidx:
                b = boxes[k]
                splitlines.append(
                    [imagename, float(scores[k]), float(b[0]), float(b[1]), float(b[2]), float(b[3])]
                )
    image_ids = [x[0] for x in splitlines]
    confidence = np.array([float(x[1]) for x in splitlines])
    BB = np.array([[float(z) for z in x[2:]] for x in splitlines]).reshape(-1, 4)

    # sort by confidence
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    # go down dets and mark TPs and FPs
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)

        if BBGT.size > 0:
            # compute overlaps
            # intersection
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + one, 0.0)
            ih = np.maximum(iymax - iymin + one, 0.0)
            inters = iw * ih

            # union
            uni = (
                (bb[2] - bb[0] + one) * (bb[3] - bb[1] + one)
                + (BBGT[:, 2] - BBGT[:, 0] + one) * (BBGT[:, 3] - BBGT[:, 1] + one)
                - inters
            )

            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)

        if (ovmax >= ovthresh) if match_comparison == ">=" else (ovmax > ovthresh):
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    tp_flags, fp_flags = tp.copy(), fp.copy()

    # compute precision recall
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    # avoid divide by zero in case the first detection matches a difficult
    # ground truth
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = voc_ap(rec, prec, use_07_metric)

    return rec, prec, ap, tp_flags, fp_flags
