"""Benchmark the network forward pass: the paper's YOLOv1 and Fast YOLO at 448 px, batch 1 and 64.

Run: `.venv/bin/python benchmarks/bench_model.py [--quick]` (CPU, float32; `--quick`: batch 1 only), or on a GPU
`benchmarks/bench_model.py --device cuda --dtype bf16 [--compile]` (channels_last + autocast). Prints a markdown
table of median ms per batch, images/s, parameter counts and the speed-up of Fast YOLO over the paper net.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from yolov1.config import ModelConfig
from yolov1.model import build_model, count_parameters

PAPER = ModelConfig(variant="yolov1", input_size=448, grid_size=7, boxes_per_cell=2, num_classes=20,
                    batch_norm=False, width_multiplier=1.0, head="fc", head_hidden=4096, dropout=0.5)


def time_forward(model, images, repeats: int, warmup: int, dtype: torch.dtype | None) -> float:
    """Median wall-clock ms of one forward pass (inference mode, autocast when `dtype` is set)."""
    device = images.device

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--batch-norm", action="store_true", help="build with BN (default: the paper's no BN)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    gpu = device.type == "cuda"
    batches = (1,) if args.quick else (1, 64)
    torch.manual_seed(0)

    models = {}
    for variant in ("yolov1", "fast"):
        model = build_model(dataclasses.replace(PAPER, variant=variant, batch_norm=args.batch_norm)).eval()
        n_params = count_parameters(model)
        model = model.to(device, memory_format=torch.channels_last if gpu else torch.contiguous_format)
        models[variant] = (torch.compile(model) if args.compile else model), n_params

    rows = []
    for batch in batches:  # all batch-1 runs first: the huge batch-64 passes leave the allocator cold
        images = torch.rand(batch, 3, 448, 448, device=device)
        if gpu:
            images = images.contiguous(memory_format=torch.channels_last)
        for variant, (model, n_params) in models.items():
            # The paper net at batch 64 takes tens of seconds per pass on a small CPU: few repeats there.
            repeats, warmup = (50, 10) if gpu else ((5, 2) if batch == 1 else (2, 0))
            if args.compile:
                warmup += 2
            rows.append((variant, batch, n_params, time_forward(model, images, repeats, warmup, dtype)))

    print(f"Machine: {machine(device)}\n")
    print(f"Forward pass at 448x448, {args.device}, {args.dtype}{' autocast' if dtype else ''}"
          f"{', channels_last' if gpu else ''}{', compiled' if args.compile else ''}, "
          f"BN {'on' if args.batch_norm else 'off'}, FC head 4096, S=7 B=2 C=20; median over repeats\n")
    print("| net | params | batch | ms / batch | images/s | vs paper net |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    paper_ms = {batch: ms for variant, batch, _, ms in rows if variant == "yolov1"}
    for variant, batch, n_params, ms in rows:
        name = "YOLOv1 (24 conv)" if variant == "yolov1" else "Fast YOLO (9 conv)"
        print(f"| {name} | {n_params / 1e6:.1f}M | {batch} | {ms:.1f} | {batch / ms * 1e3:.1f} "
              f"| {paper_ms[batch] / ms:.1f}x |")


if __name__ == "__main__":
    main()
