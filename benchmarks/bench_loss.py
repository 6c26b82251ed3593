"""Benchmark the YOLOv1 loss: forward + backward of `yolov1.loss.YoloLoss` against a plain-loop reference.

Run: `.venv/bin/python benchmarks/bench_loss.py [--quick] [--batch 64]`. Prints a markdown table (median ms over
repeats) with the machine and the speed-up of the vectorised loss over the loop, both run in this process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from yolov1.config import LossConfig
from yolov1.loss import YoloLoss

S, B, C = 7, 2, 20


def loop_loss(pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The paper's loss written cell by cell, predictor by predictor (the baseline)."""
    n = pred.shape[0]
    total = pred.new_zeros(())
    for k in range(n):
        for i in range(S):
            for j in range(S):
                p, t = pred[k, i, j], target[k, i, j]
                if t[4] <= 0:
                    for b in range(B):
                        total = total + cfg.lambda_noobj * p[5 * b + 4] ** 2
                    continue
                ious = [_iou(p[5 * b: 5 * b + 4].tolist(), t[:4].tolist(), i, j) for b in range(B)]
                r = max(range(B), key=lambda b: (ious[b], -b))
                for b in range(B):
                    box = p[5 * b: 5 * b + 5]
                    if b != r:
                        total = total + cfg.lambda_noobj * box[4] ** 2
                        continue
                    total = total + cfg.lambda_coord * (
                        (box[0] - t[0]) ** 2 + (box[1] - t[1]) ** 2
                        + (box[2] - t[2].sqrt()) ** 2 + (box[3] - t[3].sqrt()) ** 2
                    )
                    conf_t = ious[b] if cfg.confidence_target == "iou" else 1.0
                    total = total + (box[4] - conf_t) ** 2
                total = total + ((p[5 * B:] - t[5:]) ** 2).sum()
    return total / n


def _iou(p: list[float], t: list[float], i: int, j: int) -> float:
    px, py, pw, ph = (p[0] + j) / S, (p[1] + i) / S, p[2] ** 2, p[3] ** 2
    tx, ty, tw, th = (t[0] + j) / S, (t[1] + i) / S, t[2], t[3]
    iw = max(0.0, min(px + pw / 2, tx + tw / 2) - max(px - pw / 2, tx - tw / 2))
    ih = max(0.0, min(py + ph / 2, ty + th / 2) - max(py - ph / 2, ty - th / 2))
    union = pw * ph + tw * th - iw * ih
    return iw * ih / union if union > 0 else 0.0


def make_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random predictions and VOC-like targets (~2-3 objects per image)."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, S, S, 5 * B + C, generator=g)
    target = torch.zeros(n, S, S, 5 + C)
    obj = torch.rand(n, S, S, generator=g) < 0.05
    k = int(obj.sum())
    target[obj] = torch.cat(
        (torch.rand(k, 2, generator=g), 0.05 + 0.9 * torch.rand(k, 2, generator=g), torch.ones(k, 1),
         torch.nn.functional.one_hot(torch.randint(C, (k,), generator=g), C).float()), dim=1)
    return pred, target


def time_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    cfg = LossConfig(lambda_coord=5.0, lambda_noobj=0.5, confidence_target="iou")
    loss_fn = YoloLoss(cfg, boxes_per_cell=B, num_classes=C)
    pred, target = make_batch(args.batch)
    pred.requires_grad_(True)

    def vectorised() -> None:
        pred.grad = None
        loss_fn(pred, target)["total"].backward()

    def loop() -> None:
        pred.grad = None
        loop_loss(pred, target, cfg).backward()

    with torch.no_grad():  # the two must agree before their speeds mean anything
        ref, got = loop_loss(pred, target, cfg), loss_fn(pred, target)["total"]
    assert torch.allclose(ref, got, rtol=1e-4), (ref, got)
    fast_ms = time_ms(vectorised, repeats=20 if args.quick else 200, warmup=3 if args.quick else 20)
    slow_ms = time_ms(loop, repeats=1 if args.quick else 5, warmup=0 if args.quick else 1)

    print(f"Machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"Loss forward + backward, batch {args.batch}, S={S}, B={B}, C={C}, CPU float32, median ms\n")
    print("| implementation | ms | vs loop |")
    print("| --- | ---: | ---: |")
    print(f"| plain loop (baseline) | {slow_ms:.2f} | 1.0x |")
    print(f"| YoloLoss (vectorised) | {fast_ms:.3f} | {slow_ms / fast_ms:.0f}x |")


if __name__ == "__main__":
    main()
