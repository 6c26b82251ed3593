"""Benchmark the training data path: `yolov1.data.VOCDetection` with the paper's augmentation, in images/s.

Run: `.venv/bin/python benchmarks/bench_loader.py [--quick] [--images 64] [--size 448] [--workers 2]
[--device cpu|cuda]`. Generates VOC-sized JPEGs (~500 x 375, yolov1.synth) in a temp dir, then times, in this
process on one thread: decode + resize to uint8 only (the baseline), the eval-mode dataset, the training dataset
(augmentation on) and a naive torchvision v2 pipeline (RandomAffine at full resolution, then flip and resize) for
comparison, all ending in the uint8 (3, size, size) samples the loader ships, with glibc's default malloc settings
and after `tune_malloc`; then the training loader itself (`yolov1.sampler.train_loader`: worker processes,
uint8 batches through shared memory, prefetch) with each batch copied to `--device` and made float there by
`images_to_float`, as the training loop does. The first lines printed state the command and settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torchvision import tv_tensors
from torchvision.transforms import v2

from yolov1.config import AugmentConfig, DataConfig
from yolov1.data import (
    VOCDetection,
    adjust_hsv,
    collate_train,
    images_to_float,
    read_rgb,
    tune_malloc,
    worker_init_fn,
)
from yolov1.sampler import PREFETCH_FACTOR, ResumableSampler, train_loader
from yolov1.synth import generate_voc
from yolov1.voc import parse_annotations, read_image_set

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
AUGMENT = AugmentConfig(scale=0.2, translate=0.2, exposure=1.5, saturation=1.5, hflip=0.5, min_visible=0.25)


def make_tables(root: Path, num_images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate VOC-sized images with yolov1.synth and build the prepared tables (schema of the prepare stage)."""
    devkit = generate_voc(root, num_trainval=num_images, num_test=0, image_size=((450, 500), (333, 375)), seed=0,
                          classes=CLASSES, max_objects=4, object_size=(0.15, 0.6), difficult_size=(0.05, 0.1),
                          difficult_fraction=0.1, truncated_fraction=0.2, max_overhang=0.3, max_iou=0.3,
                          colour_jitter=16)  # fmt: skip
    ids = read_image_set(devkit, 2007, "trainval")
    annotations = parse_annotations([devkit / "VOC2007" / "Annotations" / f"{i}.xml" for i in ids],
                                    classes=CLASSES, on_bad_object="error", workers=1)  # fmt: skip
    images, objects = [], []
    for image_id, ann in zip(ids, annotations, strict=True):
        images.append({"image_id": image_id, "split": "train", "year": 2007, "width": ann.width,
                       "height": ann.height, "path": f"VOCdevkit/VOC2007/JPEGImages/{ann.filename}"})  # fmt: skip
        objects += [{"image_id": image_id, "class_index": o.class_index, "xmin": o.xmin, "ymin": o.ymin,
                     "xmax": o.xmax, "ymax": o.ymax, "difficult": int(o.difficult)} for o in ann.objects]  # fmt: skip
    return pd.DataFrame(images), pd.DataFrame(objects)


def images_per_s(fn, n: int, repeats: int) -> tuple[float, float]:
    """Median images per wall-clock second and per CPU second of this process, over `repeats` passes of fn(i)
    for i in range(n), after one warm-up pass. CPU time is the per-core figure on a busy machine."""
    for i in range(n):
        fn(i)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            fn(i)
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / (time.process_time() - c0))
    return statistics.median(wall), statistics.median(cpu)


def loader_images_per_s(dataset: VOCDetection, *, batch: int, workers: int, passes: int,
                        device: torch.device) -> float:
    """images/s of the training loader (`train_loader`, batch `batch`, `workers` processes), each uint8 batch
    copied to `device` and made float there; median of `passes` epochs after one that starts the workers."""
    sampler = ResumableSampler(dataset, rank=0, world=1, seed=0)
    loader = train_loader(dataset, sampler, micro_batch=batch, num_workers=workers, seed=0, rank=0,
                          pin_memory=device.type == "cuda", collate_fn=collate_train, worker_init_fn=worker_init_fn)
    rates = []
    for epoch in range(passes + 1):
        sampler.set_position(epoch, 0)
        t0, count = time.perf_counter(), 0
        for images, targets in loader:
            if images.dtype != torch.uint8:
                raise TypeError(f"loader yielded {images.dtype} images, expected uint8")
            x = images_to_float(images.to(device, non_blocking=True))  # (N, 3, H, W) float [0, 1]
            targets.to(device, non_blocking=True)
            count += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch:  # the first epoch includes starting the workers
            rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images and passes (smoke run)")
    parser.add_argument("--images", type=int, default=64, help="generated images (default 64)")
    parser.add_argument("--size", type=int, default=448, help="network input size (default 448)")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    parser.add_argument("--batch", type=int, default=16, help="loader batch (default 16)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the loader's batches go and become float (default cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.workers < 0 or args.batch < 1 or args.images < 1 or args.size < 32:
        parser.error("--workers must be >= 0, --batch and --images >= 1, --size >= 32")
    num_images, repeats = (8, 1) if args.quick else (args.images, 5)
    batch = min(args.batch, num_images)
    torch.set_num_threads(1)  # per-core figures: DataLoader workers run single-threaded too
    data_cfg = DataConfig(root="", archives=(), train_sets=(), test_sets=(), classes=CLASSES, use_difficult=False,
                          on_bad_object="error", augment=AUGMENT)  # fmt: skip
    size = args.size
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        images, objects = make_tables(Path(tmp), num_images)
        kwargs = dict(root=Path(tmp), data_cfg=data_cfg, input_size=size, grid_size=7)
        train = VOCDetection(images, objects, train=True, **kwargs)
        evaluation = VOCDetection(images, objects, train=False, **kwargs)
        cached_kwargs = {**kwargs, "data_cfg": dataclasses.replace(data_cfg, cache="ram")}
        t0 = time.perf_counter()
        train_cached = VOCDetection(images, objects, train=True, **cached_kwargs)
        cache_s = time.perf_counter() - t0  # one pass of decode + resize into memory (threads)
        eval_cached = VOCDetection(images, objects, train=False, **cached_kwargs)
        paths = [Path(tmp) / p for p in images["path"]]
        naive = v2.Compose([v2.RandomAffine(degrees=0, translate=(0.2, 0.2), scale=(0.8, 1.2)),
                            v2.RandomHorizontalFlip(0.5), v2.Resize((size, size)),
                            v2.ToDtype(torch.float32, scale=True)])  # fmt: skip

        def baseline(i: int) -> None:  # what eval mode does to the image: uint8 in, uint8 (3, size, size) out
            v2.functional.resize(read_rgb(paths[i]), [size, size], antialias=True)

        def naive_v2(i: int) -> None:
            image = tv_tensors.Image(read_rgb(paths[i]))
            h, w = image.shape[-2:]
            boxes = train._objects(i)[0]
            out, _ = naive(image, tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)))
            hsv = adjust_hsv(out.as_subclass(torch.Tensor), exposure=1.3, saturation=1 / 1.3)  # float [0, 1]
            hsv.mul_(255.0).round_().to(torch.uint8)  # the uint8 sample, as the dataset ships it

        pipelines = [("decode + resize only (baseline)", baseline),
                     ("dataset, eval mode (+ encode, ground truth)", evaluation.__getitem__),
                     ("dataset, train mode (augmentation + encode)", train.__getitem__),
                     ("dataset, eval mode, data.cache ram", eval_cached.__getitem__),
                     ("dataset, train mode, data.cache ram (augmentation from the cached square)",
                      train_cached.__getitem__),
                     ("naive v2: RandomAffine, flip, Resize + HSV", naive_v2)]
        # glibc's default first: tune_malloc cannot be undone within the process.
        rows = {"default": [images_per_s(fn, num_images, repeats) for _, fn in pipelines]}
        tuned = tune_malloc()
        rows["tune_malloc"] = [images_per_s(fn, num_images, repeats) for _, fn in pipelines]
        loader_rate = loader_images_per_s(train, batch=batch, workers=args.workers,
                                          passes=1 if args.quick else 3, device=device)

    print(f"Command: {shlex.join(['python', *sys.argv])}")
    gpu = f"{torch.cuda.get_device_name(device)}; host " if device.type == "cuda" else ""
    print(f"Machine: {gpu}{cpu_name()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread in this process")
    batch_mib = batch * 3 * size * size / 2**20  # uint8 bytes of one batch's images
    shm = (f"up to {batch_mib * args.workers * PREFETCH_FACTOR:.0f} MiB of shared memory in flight"
           if args.workers else "no worker processes, no shared memory")
    prefetch = f", prefetch {PREFETCH_FACTOR} batches each" if args.workers else ""
    print(f"Loader: batch {batch}, {args.workers} worker process(es){prefetch}, "
          f"uint8 samples ({batch_mib:.1f} MiB a batch, float32 would be 4x; {shm}), images_to_float on "
          f"{device}\n")
    print(f"{num_images} generated JPEGs of 450-500 x 333-375 px, output {size} x {size}, median of {repeats} "
          f"passes. Per CPU second: this process's CPU time (the per-core rate, robust to other load). malloc: "
          f"glibc defaults, then after yolov1.data.tune_malloc() ({'applied' if tuned else 'not glibc: no-op'}; "
          f"DataLoader workers apply it in worker_init_fn).\n")
    print(f"data.cache ram: filling the cache of {num_images} images took {cache_s:.2f} s wall "
          f"({num_images * 3 * size * size / 1e6:.1f} MB).\n")
    print("| pipeline | malloc | images/s (wall) | images per CPU second | ratio to baseline (CPU) |")
    print("|---|---|---:|---:|---:|")
    for malloc, measured in rows.items():
        base = measured[0][1]
        for (name, _), (wall, cpu) in zip(pipelines, measured, strict=True):
            print(f"| {name} | {malloc} | {wall:.0f} | {cpu:.0f} | {cpu / base:.2f} |")
    print(f"| train_loader, train mode, {args.workers} worker process(es), batch {batch}, to {device} + "
          f"images_to_float | tune_malloc | {loader_rate:.0f} | - | - |")


if __name__ == "__main__":
    main()
