"""Benchmark training throughput (images/s) of one optimizer step as `yolov1.train`'s loop runs it.

A step: the uint8 batch (what the loader yields) copied to the device (from pinned memory on CUDA),
`images_to_float` there, then per micro-batch `yolov1.step.backward_micro_batch` (forward, loss, backward) and
`optimizer_step` (clip, SGD). Synthetic in-memory tensors, no data loading; warm-up steps, then the median over
timed steps. The baseline, run in the same process, is fp32, contiguous memory format, no compile.

GPU, the paper net: `.venv/bin/python benchmarks/bench_train.py --device cuda` (YOLOv1, 448 px, batch 64, bf16
autocast + channels_last; add `--compile`). CPU: `.venv/bin/python benchmarks/bench_train.py` (Fast YOLO, width
0.25, 224 px, S=7, conv head, batch 32); `--quick`: 112 px, batch 8, 2 timed steps. The first lines printed
state the exact command and settings, for quoting.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from yolov1.config import LossConfig, ModelConfig, TrainConfig
from yolov1.data import images_to_float
from yolov1.loss import YoloLoss
from yolov1.model import build_model, count_parameters
from yolov1.step import backward_micro_batch, build_optimizer, micro_batch_size, optimizer_step

LOSS = LossConfig(lambda_coord=5.0, lambda_noobj=0.5, confidence_target="iou")


def train_config(lr: float = 1e-3) -> TrainConfig:
    """params.yaml's optimiser settings (SGD 0.9, wd 5e-4, clip 10); the rest does not affect a step."""
    return TrainConfig(seed=0, device="auto", epochs=1, batch_size=1, optimizer="sgd", lr=lr, momentum=0.9,
                       weight_decay=5e-4, schedule="step", warmup_fraction=0.0, warmup_start_factor=1.0,
                       milestones=(), gamma=0.1, grad_clip_norm=10.0, precision="auto", channels_last=True,
                       compile=False, num_workers=0, deterministic=False, resume="never", checkpoint_dir="",
                       log_every=1, val_every=0, val_images=0, loss=LOSS)


def synthetic_batch(cfg: ModelConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As the loader yields them, on the CPU: random uint8 images (N, 3, H, W) and targets (N, S, S, 5 + C)
    with ~3 objects per image (cell-relative cx, cy and image-normalised w, h in (0.05, 0.95))."""
    g = torch.Generator().manual_seed(0)
    s, c = cfg.grid_size, cfg.num_classes
    images = torch.randint(0, 256, (batch, 3, cfg.input_size, cfg.input_size), generator=g, dtype=torch.uint8)
    targets = torch.zeros(batch, s, s, 5 + c)
    obj = torch.rand(batch, s, s, generator=g) < 3 / (s * s)  # (N, S, S)
    targets[..., :4] = 0.05 + 0.9 * torch.rand(batch, s, s, 4, generator=g)
    targets[..., 4] = obj.float()
    targets[..., 5:] = torch.nn.functional.one_hot(torch.randint(0, c, (batch, s, s), generator=g), c).float()
    targets *= obj.unsqueeze(-1)  # empty cells are all zero
    return images, targets


def make_step(cfg: ModelConfig, batch: int, accumulation: int, device: torch.device, *,
              dtype: torch.dtype | None, channels_last: bool, compile_model: bool):
    """A fresh model, optimizer and synthetic batch; returns a function running one synchronised optimizer step
    of `batch` images in `accumulation` micro-batches, the way `yolov1.train` does on one process."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg).to(device, memory_format=fmt).train()
    optimizer = build_optimizer(model, train_config())
    loss_fn = YoloLoss(LOSS, boxes_per_cell=cfg.boxes_per_cell, num_classes=cfg.num_classes)
    forward = torch.compile(model) if compile_model else model
    micro = micro_batch_size(batch, 1, accumulation)
    images, targets = synthetic_batch(cfg, batch)
    if device.type == "cuda":
        images, targets = images.pin_memory(), targets.pin_memory()
    micro_batches = list(zip(images.split(micro), targets.split(micro), strict=True))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        parts = torch.zeros(5, device=device)
        for x, y in micro_batches:
            x = images_to_float(x.to(device, non_blocking=True, memory_format=fmt))  # (m, 3, H, W) float [0, 1]
            parts += backward_micro_batch(forward, loss_fn, x, y.to(device, non_blocking=True),
                                          scale=1.0 / accumulation, autocast_dtype=dtype)
        grad_norm = optimizer_step(model, optimizer, grad_clip_norm=10.0)
        values = torch.cat([parts / accumulation, grad_norm.reshape(1)])  # (6,)
        if not torch.isfinite(values).all():  # also the per-step sync the loop's checks amount to
            raise FloatingPointError(f"non-finite loss in the benchmark: {values.tolist()}")

    return step


def time_interleaved(steps_fns: list, warmup: int, steps: int) -> list[float]:
    """Median seconds per step of each function, timed in turns (A, B, A, B, ...) so that a change in
    machine load during the run hits every setting alike."""
    for fn in steps_fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in steps_fns]
    for _ in range(steps):
        for fn, out in zip(steps_fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def machine(device: torch.device) -> str:
    """The accelerator (CUDA) and the host: CPU model, logical CPUs, load average, torch and its threads."""
    host = (f"{cpu_name()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}, "
            f"torch {torch.__version__}, intra-op threads: {torch.get_num_threads()}")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host {host}"
    return host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variant", choices=["yolov1", "fast"], help="default: yolov1 on cuda, fast on cpu")
    parser.add_argument("--input-size", type=int, help="default: 448 on cuda, 224 on cpu (112 with --quick)")
    parser.add_argument("--grid-size", type=int, default=7)
    parser.add_argument("--width", type=float, help="width multiplier; default 1.0 on cuda, 0.25 on cpu")
    parser.add_argument("--head", choices=["fc", "conv"], help="default: fc on cuda, conv on cpu")
    parser.add_argument("--batch", type=int, help="images per optimizer step; default: 64 on cuda, 32 on cpu "
                        "(8 with --quick)")
    parser.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="autocast dtype; default bf16 on cuda")
    parser.add_argument("--no-channels-last", action="store_true", help="contiguous format for the measured run")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--steps", type=int, help="timed steps (default 30 cuda, 5 cpu, 2 quick)")
    parser.add_argument("--quick", action="store_true", help="smoke-size CPU run")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(variant=args.variant or ("yolov1" if gpu else "fast"),
                      input_size=args.input_size or (448 if gpu else 112 if args.quick else 224),
                      grid_size=args.grid_size, boxes_per_cell=2, num_classes=20, batch_norm=True,
                      width_multiplier=args.width or (1.0 if gpu else 0.25), head=args.head or ("fc" if gpu else "conv"),
                      head_hidden=4096, dropout=0.5)
    batch = args.batch or (64 if gpu else 8 if args.quick else 32)
    dtype_name = args.dtype or ("bf16" if gpu else "fp32")
    steps = args.steps or (30 if gpu else 2 if args.quick else 5)
    warmup = 10 if gpu else 1
    channels_last = not args.no_channels_last

    runs = [("baseline: fp32, contiguous", None, False, False)]
    measured = (f"{dtype_name}{' autocast' if dtype_name == 'bf16' else ''}"
                f"{', channels_last' if channels_last else ', contiguous'}{', compiled' if args.compile else ''}")
    dtype = torch.bfloat16 if dtype_name == "bf16" else None
    if (dtype, channels_last, args.compile) != (None, False, False):
        runs.append((measured, dtype, channels_last, args.compile))
    try:
        micro = micro_batch_size(batch, 1, args.grad_accumulation)
    except ValueError as err:
        parser.error(str(err).replace("train.batch_size", "--batch").replace("train.grad_accumulation",
                                                                             "--grad-accumulation"))
    step_fns = [make_step(cfg, batch, args.grad_accumulation, device, dtype=d, channels_last=cl,
                          compile_model=comp) for _, d, cl, comp in runs]
    seconds = time_interleaved(step_fns, warmup + (3 if args.compile else 0), steps)
    results = [(run[0], sec) for run, sec in zip(runs, seconds, strict=True)]

    n_params = count_parameters(build_model(cfg))
    print(f"Command: {shlex.join(['python', *sys.argv])}")
    print(f"Machine: {machine(device)}")
    print(f"Model: {cfg.variant}, {cfg.head} head, width {cfg.width_multiplier}, BN, S={cfg.grid_size} B=2 C=20, "
          f"{n_params / 1e6:.1f}M params")
    print(f"Input: {cfg.input_size} x {cfg.input_size} px, batch {batch} per optimizer step "
          f"({args.grad_accumulation} micro-batch{'es' if args.grad_accumulation > 1 else ''} of {micro}), "
          f"uint8 samples -> images_to_float on {device}")
    print(f"Timing: forward + loss + backward + clip + SGD, median over {steps} steps (settings timed in turns) "
          f"after {warmup} warm-up\n")
    print("| setting | ms / step | images/s | vs baseline |")
    print("| --- | ---: | ---: | ---: |")
    base = results[0][1]
    for name, seconds in results:
        print(f"| {name} | {seconds * 1e3:.1f} | {batch / seconds:.1f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
