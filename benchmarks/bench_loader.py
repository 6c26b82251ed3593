"""Benchmark the training data path: `yolov1.data.VOCDetection` with the paper's augmentation, in images/s.

Run: `.venv/bin/python benchmarks/bench_loader.py [--quick] [--images 64] [--size 448]`. Generates VOC-sized JPEGs
(~500 x 375, yolov1.synth) in a temp dir, then times, in this process on one thread: decode + resize only (the
baseline), the eval-mode dataset, the training dataset (augmentation on) and a naive torchvision v2 pipeline
(RandomAffine at full resolution, then flip and resize) for comparison, with glibc's default malloc settings and
after `tune_malloc`; then a DataLoader with 2 worker processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torchvision import tv_tensors
from torchvision.transforms import v2

from yolov1.config import AugmentConfig, DataConfig
from yolov1.data import VOCDetection, adjust_hsv, collate_train, read_rgb, tune_malloc, worker_init_fn
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


def loader_images_per_s(dataset: VOCDetection, workers: int, passes: int) -> float:
    """images/s of a DataLoader (batch 16) with `workers` processes, median of `passes` epochs (workers kept)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=collate_train,
                                         worker_init_fn=worker_init_fn, persistent_workers=True,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    rates = []
    for epoch in range(passes + 1):
        t0, count = time.perf_counter(), 0
        for images, _ in loader:
            count += len(images)
        if epoch:  # the first epoch includes starting the workers
            rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images and passes (smoke run)")
    parser.add_argument("--images", type=int, default=64, help="generated images (default 64)")
    parser.add_argument("--size", type=int, default=448, help="network input size (default 448)")
    args = parser.parse_args()
    num_images, repeats = (8, 1) if args.quick else (args.images, 5)
    torch.set_num_threads(1)  # per-core figures: DataLoader workers run single-threaded too
    data_cfg = DataConfig(root="", archives=(), train_sets=(), test_sets=(), classes=CLASSES, use_difficult=False,
                          on_bad_object="error", augment=AUGMENT)  # fmt: skip
    size = args.size
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        images, objects = make_tables(Path(tmp), num_images)
        kwargs = dict(root=Path(tmp), data_cfg=data_cfg, input_size=size, grid_size=7)
        train = VOCDetection(images, objects, train=True, **kwargs)
        evaluation = VOCDetection(images, objects, train=False, **kwargs)
        paths = [Path(tmp) / p for p in images["path"]]
        naive = v2.Compose([v2.RandomAffine(degrees=0, translate=(0.2, 0.2), scale=(0.8, 1.2)),
                            v2.RandomHorizontalFlip(0.5), v2.Resize((size, size)),
                            v2.ToDtype(torch.float32, scale=True)])  # fmt: skip

        def baseline(i: int) -> None:
            image = read_rgb(paths[i])
            v2.functional.to_dtype(v2.functional.resize(image, [size, size]), torch.float32, scale=True)

        def naive_v2(i: int) -> None:
            image = tv_tensors.Image(read_rgb(paths[i]))
            h, w = image.shape[-2:]
            boxes = train._objects(i)[0]
            out, _ = naive(image, tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)))
            adjust_hsv(out.as_subclass(torch.Tensor), exposure=1.3, saturation=1 / 1.3)

        pipelines = [("decode + resize only (baseline)", baseline),
                     ("dataset, eval mode (+ encode, ground truth)", evaluation.__getitem__),
                     ("dataset, train mode (augmentation + encode)", train.__getitem__),
                     ("naive v2: RandomAffine, flip, Resize + HSV", naive_v2)]
        # glibc's default first: tune_malloc cannot be undone within the process.
        rows = {"default": [images_per_s(fn, num_images, repeats) for _, fn in pipelines]}
        tuned = tune_malloc()
        rows["tune_malloc"] = [images_per_s(fn, num_images, repeats) for _, fn in pipelines]
        loader_rate = loader_images_per_s(train, workers=2, passes=1 if args.quick else 3)

    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread in this process\n")
    print(f"{num_images} generated JPEGs of 450-500 x 333-375 px, output {size} x {size}, median of {repeats} "
          f"passes. Per CPU second: this process's CPU time (the per-core rate, robust to other load). malloc: "
          f"glibc defaults, then after yolov1.data.tune_malloc() ({'applied' if tuned else 'not glibc: no-op'}; "
          f"DataLoader workers apply it in worker_init_fn).\n")
    print("| pipeline | malloc | images/s (wall) | images per CPU second | ratio to baseline (CPU) |")
    print("|---|---|---:|---:|---:|")
    for malloc, measured in rows.items():
        base = measured[0][1]
        for (name, _), (wall, cpu) in zip(pipelines, measured, strict=True):
            print(f"| {name} | {malloc} | {wall:.0f} | {cpu:.0f} | {cpu / base:.2f} |")
    print(f"| DataLoader, train mode, 2 worker processes, batch 16 | tune_malloc | {loader_rate:.0f} | - | - |")


if __name__ == "__main__":
    main()
