"""Benchmark the exported net on CPU: PyTorch eager vs ONNX Runtime vs TorchScript, same weights, same inputs.

Run: `.venv/bin/python benchmarks/bench_export.py [--config small112|fast448|paper] [--batch 1 8] [--repeats 20]`.
All three run in this one process on the same machine, float32, with torch and ONNX Runtime each using
`--threads` intra-op threads (default: every core). Prints a markdown table of median ms per batch, images/s and
the ratio to PyTorch, plus the largest absolute output difference from PyTorch (the numbers are only comparable
between rows of one run: other load on the machine moves all of them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from yolov1.config import ModelConfig
from yolov1.export import export_onnx, export_torchscript
from yolov1.model import build_model, count_parameters

CONFIGS = {
    # A small conv-head net at 112 px (CPU-demo sized, not exactly profiles/demo.yaml) and the paper's nets at 448 px.
    "small112": ModelConfig(variant="fast", input_size=112, grid_size=7, boxes_per_cell=2, num_classes=7,
                        batch_norm=True, width_multiplier=0.5, head="conv", head_hidden=512, dropout=0.0),
    "fast448": ModelConfig(variant="fast", input_size=448, grid_size=7, boxes_per_cell=2, num_classes=20,
                           batch_norm=True, width_multiplier=1.0, head="fc", head_hidden=4096, dropout=0.5),
    "paper": ModelConfig(variant="yolov1", input_size=448, grid_size=7, boxes_per_cell=2, num_classes=20,
                         batch_norm=False, width_multiplier=1.0, head="fc", head_hidden=4096, dropout=0.5),
}


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small112")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "m.onnx", cfg, ["x"] * cfg.num_classes)
        ts_path = export_torchscript(model, Path(tmp) / "m.torchscript", cfg, ["x"] * cfg.num_classes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(ts_path))
    print(f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"config {args.config} ({count_parameters(model):,} parameters, {cfg.input_size} px), float32, "
          f"median of {args.repeats}\n")
    print("| batch | runtime | ms / batch | images/s | vs PyTorch | max abs diff |")
    print("|---|---|---|---|---|---|")
    for n in args.batch:
        x = torch.rand(n, 3, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            reference = model(x).numpy()
            runs = {  # default arguments bind this batch's tensors (the lambdas are called in this iteration)
                "PyTorch eager": (lambda x=x: model(x), lambda ref=reference: ref),
                "TorchScript": (lambda x=x: scripted(x), lambda x=x: scripted(x).numpy()),
                "ONNX Runtime": (lambda x=x: session.run(None, {"images": x.numpy()}),
                                 lambda x=x: session.run(None, {"images": x.numpy()})[0]),
            }
            base = None
            for name, (step, output) in runs.items():
                ms = median_ms(step, args.repeats)
                base = base or ms
                diff = float(np.abs(output() - reference).max())
                print(f"| {n} | {name} | {ms:.2f} | {n / ms * 1000:.1f} | {base / ms:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
