"""Benchmark decode + NMS: `yolov1.encode.decode` against a per-image, per-cell loop and one batched_nms call.

Run: `.venv/bin/python benchmarks/bench_decode.py [--quick] [--batch 64]`. Prints a markdown table (min and median
wall-clock ms over repeats, CPU, score thresholds 0.005 and 0.2, max_detections 100 and 1,000, torch at 1 and 2
threads) with the machine and the speed-ups over the loop, all run in this process on the same trained-looking
predictions (S=7, B=2, C=20, i.e. 7x7x30). decode pins itself to 1 thread on CPU (`_DECODE_CPU_THREADS`); the
"decode, 2 threads" column lifts that pin, to show what the choice is worth on the machine at hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torchvision.ops import batched_nms as tv_batched_nms

import yolov1.encode as encode_module
from yolov1.boxes import batched_nms
from yolov1.encode import decode

S, B, C = 7, 2, 20
NMS_IOU = 0.5
THRESHOLDS = (0.005, 0.2)
MAX_DETECTIONS = (100, 1000)


def make_predictions(n: int, seed: int = 0) -> torch.Tensor:
    """Trained-looking (N, S, S, 5B + C) outputs: centres anywhere in the cell, boxes 0.04..0.64 of the image wide,
    confidences mostly small (uniform cubed), class scores a softmax. About 500 candidates per image at 0.005."""
    g = torch.Generator().manual_seed(seed)
    box = torch.cat((torch.rand(n, S, S, B, 2, generator=g), 0.2 + 0.6 * torch.rand(n, S, S, B, 2, generator=g),
                     torch.rand(n, S, S, B, 1, generator=g) ** 3), dim=-1).reshape(n, S, S, 5 * B)
    cls = torch.softmax(2 * torch.randn(n, S, S, C, generator=g), dim=-1)
    return torch.cat((box, cls), dim=-1)


def loop_decode(preds: torch.Tensor, score_threshold: float, top: int) -> list[tuple[torch.Tensor, ...]]:
    """The straightforward decoder (the baseline): image by image, cell by cell, predictor by predictor, class by
    class in Python, then torchvision's batched_nms per image."""
    out = []
    for image in preds.float():
        boxes, scores, labels = [], [], []
        for i in range(S):
            for j in range(S):
                cell = image[i, j].tolist()
                for b in range(B):
                    x, y, sw, sh, conf = cell[5 * b : 5 * b + 5]
                    cx, cy, w, h = (j + x) / S, (i + y) / S, sw * sw, sh * sh
                    xyxy = [min(max(v, 0.0), 1.0) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]
                    for c in range(C):
                        score = conf * cell[5 * B + c]
                        if score > score_threshold:
                            boxes.append(xyxy)
                            scores.append(score)
                            labels.append(c)
        bx, sc, lb = torch.tensor(boxes).reshape(-1, 4), torch.tensor(scores), torch.tensor(labels, dtype=torch.int64)
        keep = tv_batched_nms(bx, sc, lb, NMS_IOU)[:top]
        out.append((bx[keep], sc[keep], lb[keep]))
    return out


def one_call_decode(preds: torch.Tensor, score_threshold: float, top: int) -> list[tuple[torch.Tensor, ...]]:
    """Vectorised candidates, then a single `yolov1.boxes.batched_nms` over the batch (idxs = image * C + label):
    torchvision loops over the image x class groups in Python once there are more than 1000 boxes."""
    n = preds.shape[0]
    p = preds.float()
    raw = p[..., : 5 * B].reshape(n, S, S, B, 5)
    grid = torch.arange(S, dtype=p.dtype)
    cx, cy = (raw[..., 0] + grid[:, None]) / S, (raw[..., 1] + grid[:, None, None]) / S
    w, h = raw[..., 2] ** 2, raw[..., 3] ** 2
    boxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1).clamp(0, 1).reshape(n, -1, 4)
    scores = (raw[..., 4:5] * p[..., None, 5 * B :]).reshape(n, -1)  # (N, P*C)
    image, flat = (scores > score_threshold).nonzero(as_tuple=True)
    labels = flat % C
    keep = batched_nms(boxes[image, flat // C], scores[image, flat], image * C + labels, NMS_IOU)
    keep = keep[torch.argsort(image[keep], stable=True)]  # image by image, score descending within
    counts = torch.bincount(image[keep], minlength=n).tolist()
    out = []
    for k in keep.split(counts):
        k = k[:top]
        out.append((boxes[image[k], flat[k] // C], scores[image[k], flat[k]], labels[k]))
    return out


def time_ms(fn, repeats: int, warmup: int) -> tuple[float, float]:
    """(min, median) wall-clock ms of ``fn``."""
    for _ in range(warmup):
        fn()
    wall = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
    return min(wall), statistics.median(wall)


def run_decode(preds: torch.Tensor, score_threshold: float, top: int):
    return decode(preds, boxes_per_cell=B, num_classes=C, score_threshold=score_threshold,
                  nms_iou_threshold=NMS_IOU, max_detections=top)


def check_agreement(preds: torch.Tensor, score_threshold: float, top: int) -> int:
    """decode must equal the loop before their speeds mean anything; returns the detections in the batch."""
    got = run_decode(preds, score_threshold, top)
    for det, (boxes, scores, labels) in zip(got, loop_decode(preds, score_threshold, top), strict=True):
        assert torch.equal(det.labels, labels), "decode and the loop disagree on labels"
        torch.testing.assert_close(det.scores, scores)
        torch.testing.assert_close(det.boxes_xyxy, boxes)
    return sum(len(det.scores) for det in got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats (smoke run)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    n = 4 if args.quick else args.batch
    repeats = 3 if args.quick else args.repeats
    preds = make_predictions(n)
    rows = []
    for threshold in THRESHOLDS:
        candidates = int((preds[..., 4 : 5 * B : 5, None] * preds[..., None, 5 * B :] > threshold).sum())
        for top in MAX_DETECTIONS:
            detections = check_agreement(preds, threshold, top)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                fast = time_ms(lambda t=threshold, k=top: run_decode(preds, t, k), repeats=repeats, warmup=2)
                encode_module._DECODE_CPU_THREADS = None  # torch's setting: `threads`
                unpinned = time_ms(lambda t=threshold, k=top: run_decode(preds, t, k), repeats=repeats, warmup=2)
                encode_module._DECODE_CPU_THREADS = 1
                one_call = time_ms(lambda t=threshold, k=top: one_call_decode(preds, t, k), repeats=3, warmup=1)
                loop = time_ms(lambda t=threshold, k=top: loop_decode(preds, t, k), repeats=3, warmup=1)
                rows.append((threshold, top, threads, candidates / n, detections / n, loop, one_call, fast,
                             unpinned))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs (load average {load:.1f} at the end), "
          f"torch {torch.__version__}\n")
    print(f"decode + NMS, batch {n} of {S}x{S}x{5 * B + C} predictions (S={S}, B={B}, C={C}), NMS IoU {NMS_IOU}, "
          f"CPU float32; wall-clock ms, min / median ({repeats} repeats; baselines 3)\n")
    print("| score > | max det. | torch threads | candidates / image | detections / image | loop "
          "| one batched_nms call | decode (1 thread) | decode, unpinned | loop / decode (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threshold, top, threads, cand, dets, loop, one_call, fast, unpinned in rows:
        print(f"| {threshold} | {top} | {threads} | {cand:.0f} | {dets:.0f} | {loop[0]:.1f} / {loop[1]:.1f} "
              f"| {one_call[0]:.1f} / {one_call[1]:.1f} | **{fast[0]:.2f} / {fast[1]:.2f}** "
              f"| {unpinned[0]:.2f} / {unpinned[1]:.2f} | {loop[1] / fast[1]:.0f}x |")


if __name__ == "__main__":
    main()
