"""Benchmark training throughput (images/s) of `yolov1.train.training_step`: forward, loss, backward, clip, SGD.

GPU, the paper net: `.venv/bin/python benchmarks/bench_train.py --device cuda` (YOLOv1, 448 px, batch 64, bf16
autocast + channels_last; add `--compile`). CPU demo-ish profile: `.venv/bin/python benchmarks/bench_train.py`
(Fast YOLO, width 0.25, 224 px, S=7, conv head, batch 32; `--quick`: 112 px, batch 8, 2 timed steps).
Synthetic in-memory tensors (no data loading); a few warm-up steps, then the median over timed steps. The
baseline, run in the same process, is fp32 with the default (contiguous) memory format and no compile.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from yolov1.config import LossConfig, ModelConfig, TrainConfig
from yolov1.loss import YoloLoss
from yolov1.model import build_model, count_parameters
from yolov1.train import build_optimizer, training_step

LOSS = LossConfig(lambda_coord=5.0, lambda_noobj=0.5, confidence_target="iou")


def train_config(lr: float = 1e-3) -> TrainConfig:
    """params.yaml's optimiser settings (SGD 0.9, wd 5e-4, clip 10); the rest does not affect a step."""
    return TrainConfig(seed=0, device="auto", epochs=1, batch_size=1, optimizer="sgd", lr=lr, momentum=0.9,
                       weight_decay=5e-4, schedule="step", warmup_fraction=0.0, warmup_start_factor=1.0,
                       milestones=(), gamma=0.1, grad_clip_norm=10.0, precision="auto", channels_last=True,
                       compile=False, num_workers=0, deterministic=False, resume="never", checkpoint_dir="",
                       log_every=1, val_every=0, val_images=0, loss=LOSS)


def synthetic_batch(cfg: ModelConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (N, 3, H, W) in [0, 1] and targets (N, S, S, 5 + C) with ~3 objects per image."""
    g = torch.Generator().manual_seed(0)
    s, c = cfg.grid_size, cfg.num_classes
    images = torch.rand(batch, 3, cfg.input_size, cfg.input_size, generator=g)
    targets = torch.zeros(batch, s, s, 5 + c)
    obj = torch.rand(batch, s, s, generator=g) < 3 / (s * s)  # (N, S, S)
    targets[..., :4] = 0.05 + 0.9 * torch.rand(batch, s, s, 4, generator=g)
    targets[..., 4] = obj.float()
    targets[..., 5:] = torch.nn.functional.one_hot(torch.randint(0, c, (batch, s, s), generator=g), c).float()
    targets *= obj.unsqueeze(-1)  # empty cells are all zero
    return images.to(device), targets.to(device)


def make_step(cfg: ModelConfig, batch: int, device: torch.device, *, dtype: torch.dtype | None,
              channels_last: bool, compile_model: bool):
    """A fresh model, optimizer and synthetic batch; returns a function running one synchronised step."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg).to(device, memory_format=fmt).train()
    optimizer = build_optimizer(model, train_config())
    loss_fn = YoloLoss(LOSS, boxes_per_cell=cfg.boxes_per_cell, num_classes=cfg.num_classes)
    forward = torch.compile(model) if compile_model else model
    images, targets = synthetic_batch(cfg, batch, device)
    images = images.contiguous(memory_format=fmt)

    def step() -> None:
        values = training_step(forward, loss_fn, optimizer, images, targets, autocast_dtype=dtype,
                               grad_clip_norm=10.0)
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
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variant", choices=["yolov1", "fast"], help="default: yolov1 on cuda, fast on cpu")
    parser.add_argument("--input-size", type=int, help="default: 448 on cuda, 224 on cpu (112 with --quick)")
    parser.add_argument("--grid-size", type=int, default=7)
    parser.add_argument("--width", type=float, help="width multiplier; default 1.0 on cuda, 0.25 on cpu")
    parser.add_argument("--head", choices=["fc", "conv"], help="default: fc on cuda, conv on cpu")
    parser.add_argument("--batch", type=int, help="default: 64 on cuda, 32 on cpu (8 with --quick)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="autocast dtype; default bf16 on cuda")
    parser.add_argument("--no-channels-last", action="store_true", help="contiguous format for the measured run")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--steps", type=int, help="timed steps (default 30 cuda, 5 cpu, 2 quick)")
    parser.add_argument("--quick", action="store_true", help="smoke-size CPU run")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
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
    step_fns = [make_step(cfg, batch, device, dtype=d, channels_last=cl, compile_model=comp)
                for _, d, cl, comp in runs]
    seconds = time_interleaved(step_fns, warmup + (3 if args.compile else 0), steps)
    results = [(run[0], sec) for run, sec in zip(runs, seconds, strict=True)]

    print(f"Machine: {machine(device)}\n")
    n_params = count_parameters(build_model(cfg))
    print(f"Training step (forward + loss + backward + clip + SGD) of {cfg.variant}, {cfg.head} head, width "
          f"{cfg.width_multiplier}, BN, {cfg.input_size} px, S={cfg.grid_size} B=2 C=20, {n_params / 1e6:.1f}M "
          f"params, batch {batch}, on {device}; median over {steps} steps (settings timed in turns) after {warmup} warm-up\n")
    print("| setting | ms / step | images/s | vs baseline |")
    print("| --- | ---: | ---: | ---: |")
    base = results[0][1]
    for name, seconds in results:
        print(f"| {name} | {seconds * 1e3:.1f} | {batch / seconds:.1f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
