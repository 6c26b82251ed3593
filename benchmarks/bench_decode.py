"""Benchmark decode + NMS: `yolov1.encode.decode` against a per-image, per-cell loop and one batched_nms call.

Run: `.venv/bin/python benchmarks/bench_decode.py [--quick] [--batch 64]`. Prints a markdown table (min and median
wall-clock ms over repeats, CPU, score thresholds 0.005 and 0.2, max_detections 100 and 1,000, torch at 1 and 2
threads) with the machine and the speed-ups over the loop, all run in this process on the same trained-looking
predictions (S=7, B=2, C=20, i.e. 7x7x30). decode pins itself to 1 thread on CPU (`_DECODE_CPU_THREADS`); the
"decode, 2 threads" column lifts that pin, to show what the choice is worth on the machine at hand.

A second table times decode against `_baseline_decode`, a frozen copy of the decode before the flat rewrite
(commit 20623b8: per-round `torch.equal` loop and boolean-mask reads, float32 all-pairs NMS, per-image split), in
the same process on the same predictions, the two calls interleaved repeat by repeat so that a busy machine slows
both alike; `--compare-only` prints just that table.
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
from yolov1.boxes import batched_nms, box_iou_aligned, cxcywh_to_xyxy
from yolov1.encode import Detections, decode

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


# ------------------------------------------------------------------------------------------------------------------
# BASELINE ONLY, not used by the project: yolov1/encode.py's decode as of commit 20623b8, copied verbatim (less
# input checks and docstrings) so that old and new can be timed side by side in one process. Do not "fix" it.


def _baseline_decode(predictions: torch.Tensor, *, boxes_per_cell: int, num_classes: int, score_threshold: float,
                     nms_iou_threshold: float, max_detections: int) -> list[Detections]:
    n, s = predictions.shape[0], predictions.shape[1]
    if n == 0:
        return []
    preds = predictions.float()
    boxes_xyxy = _baseline_boxes_xyxy(preds, boxes_per_cell)  # (N, P, 4)
    cells = preds[..., 5 * boxes_per_cell :].reshape(n, s * s, 1, num_classes)
    conf = preds[..., 4 : 5 * boxes_per_cell : 5].reshape(n, s * s, boxes_per_cell, 1)
    scores = (conf * cells).reshape(n, -1)
    candidate = scores > score_threshold
    scores.masked_fill_(~candidate, float("-inf"))
    num_candidates = candidate.sum(dim=1)
    results: list[Detections | None] = [None] * n
    pending = torch.arange(n, device=preds.device)
    top_k = min(scores.shape[1], max_detections + max_detections // 4)
    while pending.numel() > 0:
        k = min(top_k, int(num_candidates[pending].max()))
        pending_scores = scores if pending.numel() == n else scores[pending]
        top_scores, top_index = pending_scores.topk(k, dim=1)
        valid = top_scores > score_threshold
        rows = torch.arange(pending.numel(), device=preds.device)[:, None].expand_as(top_index)
        labels = top_index % num_classes
        keep = torch.zeros_like(valid)
        keep[valid] = _baseline_greedy_nms_in_order(
            boxes_xyxy[pending[:, None], top_index // num_classes][valid],
            (rows * num_classes + labels)[valid],
            nms_iou_threshold,
        )
        done = (keep.sum(dim=1) >= max_detections) | (num_candidates[pending] <= k)
        keep &= keep.cumsum(dim=1) <= max_detections
        finished = done.nonzero().flatten()
        _baseline_collect(results, pending[finished], keep[finished], top_scores[finished], top_index[finished],
                          boxes_xyxy, num_classes)
        pending = pending[~done]
        top_k = min(scores.shape[1], 2 * top_k)
    return results  # type: ignore[return-value]


def _baseline_collect(results: list, images: torch.Tensor, keep: torch.Tensor, top_scores: torch.Tensor,
                      top_index: torch.Tensor, boxes_xyxy: torch.Tensor, num_classes: int) -> None:
    counts = keep.sum(dim=1).tolist()
    flat_index = top_index[keep]
    image_of = images[:, None].expand_as(keep)[keep]
    parts = zip(
        boxes_xyxy[image_of, flat_index // num_classes].split(counts),
        top_scores[keep].split(counts),
        (flat_index % num_classes).split(counts),
        strict=True,
    )
    for image, (boxes, scores, labels) in zip(images.tolist(), parts, strict=True):
        results[image] = Detections(boxes, scores, labels)


def _baseline_greedy_nms_in_order(boxes_xyxy: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    num = groups.numel()
    if num == 0:
        return torch.zeros(0, dtype=torch.bool, device=groups.device)
    order = torch.argsort(groups, stable=True)
    sizes = torch.unique_consecutive(groups[order], return_counts=True)[1]
    boxes_sorted = boxes_xyxy[order]
    earlier, later = _baseline_pairs_within_runs(sizes)
    overlap = box_iou_aligned(boxes_sorted[earlier], boxes_sorted[later]) > iou_threshold
    earlier, later = earlier[overlap], later[overlap]
    keep_sorted = torch.ones(num, dtype=torch.bool, device=groups.device)
    for _ in range(num + 1):
        suppressed = torch.zeros_like(keep_sorted).index_fill_(0, later[keep_sorted[earlier]], True)
        if torch.equal(~suppressed, keep_sorted):
            break
        keep_sorted = ~suppressed
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted
    return keep


def _baseline_pairs_within_runs(sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    total = int(sizes.sum())
    starts = sizes.cumsum(0) - sizes
    position = torch.arange(total, device=sizes.device)
    after = (starts + sizes).repeat_interleave(sizes) - 1 - position
    first = torch.repeat_interleave(position, after)
    offset = torch.arange(first.numel(), device=sizes.device) - (after.cumsum(0) - after).repeat_interleave(after)
    return first, first + 1 + offset


def _baseline_boxes_xyxy(preds: torch.Tensor, boxes_per_cell: int) -> torch.Tensor:
    n, s = preds.shape[0], preds.shape[1]
    raw = preds[..., : 5 * boxes_per_cell].reshape(n, s, s, boxes_per_cell, 5)
    grid = torch.arange(s, dtype=preds.dtype, device=preds.device)
    cx = (raw[..., 0] + grid[None, None, :, None]) / s
    cy = (raw[..., 1] + grid[None, :, None, None]) / s
    boxes_cxcywh = torch.stack((cx, cy, raw[..., 2].square(), raw[..., 3].square()), dim=-1)
    return cxcywh_to_xyxy(boxes_cxcywh).clamp_(0.0, 1.0).reshape(n, s * s * boxes_per_cell, 4)


# END OF BASELINE ----------------------------------------------------------------------------------------------------


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


def interleaved_ms(fns: dict, repeats: int, warmup: int) -> dict:
    """{name: (min, median) wall-clock ms}, the functions called in turn within each repeat (a busy machine
    then slows them alike) and in alternating order from one repeat to the next."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    wall: dict = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            wall[name].append((time.perf_counter() - start) * 1e3)
    return {name: (min(w), statistics.median(w)) for name, w in wall.items()}


def run_baseline(preds: torch.Tensor, score_threshold: float, top: int):
    return _baseline_decode(preds, boxes_per_cell=B, num_classes=C, score_threshold=score_threshold,
                            nms_iou_threshold=NMS_IOU, max_detections=top)


def compare_with_baseline(preds: torch.Tensor, repeats: int) -> list[str]:
    """Markdown rows: decode against `_baseline_decode`, interleaved, every regime at 1 and 2 threads. The two must
    return the same detections before they are timed."""
    rows = []
    for threshold in THRESHOLDS:
        for top in MAX_DETECTIONS:
            for new, old in zip(run_decode(preds, threshold, top), run_baseline(preds, threshold, top), strict=True):
                assert all(torch.equal(a, b) for a, b in zip(new, old, strict=True)), "decode != baseline"
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t = interleaved_ms({"old": lambda t=threshold, k=top: run_baseline(preds, t, k),
                                    "new": lambda t=threshold, k=top: run_decode(preds, t, k)}, repeats, warmup=3)
                (old_min, old_med), (new_min, new_med) = t["old"], t["new"]
                rows.append(f"| {threshold} | {top} | {threads} | {old_min:.2f} / {old_med:.2f} "
                            f"| **{new_min:.2f} / {new_med:.2f}** | {old_min / new_min:.2f}x / {old_med / new_med:.2f}x |")
    return rows


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
    parser.add_argument("--compare-only", action="store_true",
                        help="only the decode vs baseline (commit 20623b8) table")
    args = parser.parse_args()
    n = 4 if args.quick else args.batch
    repeats = 3 if args.quick else args.repeats
    preds = make_predictions(n)
    threads_before = torch.get_num_threads()
    comparison = compare_with_baseline(preds, 3 if args.quick else 2 * args.repeats)
    torch.set_num_threads(threads_before)
    rows = []
    for threshold in THRESHOLDS if not args.compare_only else ():
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
    print(f"decode against the baseline (decode of commit 20623b8, copied into this script), batch {n}, same "
          f"predictions, CPU float32; wall-clock ms, min / median of {3 if args.quick else 2 * args.repeats} "
          "interleaved repeats. decode pins itself to 1 thread (`_DECODE_CPU_THREADS`); the baseline uses torch's "
          "setting\n")
    print("| score > | max det. | torch threads | baseline (20623b8) | decode | baseline / decode (min / median) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(comparison))
    if args.compare_only:
        return
    print()
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
