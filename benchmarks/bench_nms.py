"""Benchmark per-group NMS: decode's `_batched_nms` against torchvision's `batched_nms`, in one process.

Run: `.venv/bin/python benchmarks/bench_nms.py [--quick] [--repeats 20]`. Prints a markdown table: 98, 1,000 and
10,000 boxes (98 = one 7x7x2 image's predictors), 1 and 20 groups (classes), at 1 and 2 threads, min and median
wall-clock ms over the repeats. Both are checked to keep exactly the same boxes before any timing. The boxes are
image-normalised xyxy, 0.04-0.44 of the image wide, uniform scores, IoU threshold 0.5, CPU. `_batched_nms` is
called as decode calls it, told that the boxes lie in [0, 1]; torchvision measures their maximum.

torchvision's `batched_nms` (0.29) offsets boxes by id * (max + 1) and calls its NMS kernel once up to 1,000 boxes,
else loops over the groups in Python; `_batched_nms` shifts by exact integers in float64 and, on CPU, packs
whole groups into kernel calls of about 256 boxes (so a kept box is compared only with boxes of nearby groups).
Its third path (many groups of a few boxes: all within-group pairs at once) is decode's default regime, which
these regimes do not reach; benchmarks/bench_decode.py times it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torchvision.ops import batched_nms as tv_batched_nms

from yolov1.encode import _batched_nms

IOU = 0.5


def make_boxes(k: int, groups: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, 4) image-normalised xyxy boxes, (K,) float32 scores, (K,) int64 group ids in [0, groups)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * 0.8
    wh = 0.04 + 0.4 * torch.rand(k, 2, generator=g)
    boxes = torch.cat((xy, (xy + wh).clamp(max=1.0)), dim=1)
    return boxes, torch.rand(k, generator=g), torch.randint(0, groups, (k,), generator=g)


def project(boxes, scores, groups) -> torch.Tensor:
    """Kept indices by score descending, the way torchvision reports them."""
    kept = _batched_nms(boxes, scores, groups, IOU, coordinate_range=(0.0, 1.0))
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def time_ms(fn, repeats: int) -> tuple[float, float]:
    """(min, median) wall-clock ms of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    rows = []
    for k in (98, 1_000, 10_000):
        for groups in (1, 20):
            boxes, scores, ids = make_boxes(k, groups)
            mine, theirs = project(boxes, scores, ids), tv_batched_nms(boxes.double(), scores.double(), ids, IOU)
            # As sets: 10,000 float32 uniform scores hold a few exact ties, which either sort may order either way.
            assert torch.equal(mine.sort().values, theirs.sort().values), f"{k} boxes, {groups} groups: disagree"
            for threads in (1, 2):
                torch.set_num_threads(threads)
                tv = time_ms(lambda b=boxes, s=scores, i=ids: tv_batched_nms(b, s, i, IOU), repeats)
                ours = time_ms(lambda b=boxes, s=scores, i=ids: _batched_nms(b, s, i, IOU, coordinate_range=(0, 1)),
                               repeats)
                rows.append((k, groups, threads, len(mine), tv, ours))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs (load average {load:.1f} at the end), "
          f"torch {torch.__version__}\n")
    print(f"Per-group NMS, IoU {IOU}, CPU; ms min / median over {repeats} repeats; same kept boxes checked first.\n")
    print("| boxes | groups | threads | kept | torchvision batched_nms (float32) | `_batched_nms` "
          "| torchvision / ours (median) |")
    print("|---|---|---|---|---|---|---|")
    for k, groups, threads, kept, tv, ours in rows:
        print(f"| {k:,} | {groups} | {threads} | {kept} | {tv[0]:.3f} / {tv[1]:.3f} | **{ours[0]:.3f} / "
              f"{ours[1]:.3f}** | {tv[1] / ours[1]:.2f}x |")


if __name__ == "__main__":
    main()
