"""Benchmark the prepare stage on the size of VOC 07+12 (21,503 annotation files) and the image check.

Run: `.venv/bin/python benchmarks/bench_prepare.py [--quick] [--repeats 3]`. Writes VOC-like XML files (no images)
for VOC2007 trainval/test and VOC2012 trainval into a temp dir and times XML -> tables with 1 and 2 worker
processes (target: <= 10 s on 2 cores), then the image check (header + JPEG end-of-image marker) against a full
decode on a few hundred 500x375 JPEGs. Prints markdown tables with the machine; ratios against workers = 1 and
against the full decode, all measured in this process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from pipelines import prepare
from pipelines.validate import IMAGE_OK, check_image
from yolov1.config import params_from_dict
from yolov1.voc import VOC_CLASSES, parse_annotations

ROOT = Path(__file__).resolve().parents[1]
# (year, list, images): the official VOC 07+12 detection sets, 5011 + 11540 trainval and 4952 test = 21,503.
SETS = ((2007, "trainval", 5011), (2007, "test", 4952), (2012, "trainval", 11540))
POSES = ("Unspecified", "Frontal", "Left", "Right", "Rear")


def write_voc_xml(root: Path, scale: float, seed: int = 0) -> int:
    """VOC-like annotation files and ImageSets lists under ``root/extracted/VOCdevkit``; returns the file count.

    Content follows the real files: source/owner blocks, 500x375-ish sizes, 1-based integer boxes (a few decimal
    ones, as in VOC2012), poses, truncated/difficult flags, occluded tags and <part> boxes of persons; about 2.5
    objects per image on a long tail, like VOC's 27,450 objects over 11,540 VOC2012 images.
    """
    rng = np.random.default_rng(seed)
    total = 0
    for year, split, count in SETS:
        count = max(1, round(count * scale))
        voc = root / "extracted" / "VOCdevkit" / f"VOC{year}"
        (voc / "Annotations").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        offset = 0 if split == "trainval" else 100000
        ids = [f"{offset + n:06d}" if year == 2007 else f"2008_{offset + n:06d}" for n in range(1, count + 1)]
        for image_id in ids:
            (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(rng, year, image_id))
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
        total += count
    return total


def _xml(rng: np.random.Generator, year: int, image_id: str) -> str:
    w, h = (500, int(rng.integers(280, 500))) if rng.random() < 0.7 else (int(rng.integers(280, 500)), 500)
    parts = [
        f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{image_id}.jpg</filename>\n\t<source>\n"
        f"\t\t<database>The VOC{year} Database</database>\n\t\t<annotation>PASCAL VOC{year}</annotation>\n"
        f"\t\t<image>flickr</image>\n\t\t<flickrid>{rng.integers(1e8, 1e9)}</flickrid>\n\t</source>\n"
        f"\t<owner>\n\t\t<flickrid>someone</flickrid>\n\t\t<name>?</name>\n\t</owner>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>{int(rng.random() < 0.2)}</segmented>\n"
    ]
    for _ in range(min(int(rng.geometric(0.4)), 42)):  # mean 2.5, long tail
        name = VOC_CLASSES[int(rng.integers(20))]
        x1, x2 = sorted(rng.integers(1, w + 1, 2))
        y1, y2 = sorted(rng.integers(1, h + 1, 2))
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        coords = [x1, y1, min(x2, w), min(y2, h)]
        text = [f"{c}.5" if year == 2012 and rng.random() < 0.02 and c < 280 else str(c) for c in coords]
        parts.append(
            f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>{POSES[int(rng.integers(5))]}</pose>\n"
            f"\t\t<truncated>{int(rng.random() < 0.3)}</truncated>\n"
            + ("\t\t<occluded>0</occluded>\n" if year == 2012 else "")
            + f"\t\t<bndbox>\n\t\t\t<xmin>{text[0]}</xmin>\n\t\t\t<ymin>{text[1]}</ymin>\n"
            f"\t\t\t<xmax>{text[2]}</xmax>\n\t\t\t<ymax>{text[3]}</ymax>\n\t\t</bndbox>\n"
            f"\t\t<difficult>{int(rng.random() < 0.1)}</difficult>\n"
        )
        if name == "person" and rng.random() < 0.15:
            for part in ("head", "hand"):
                parts.append(f"\t\t<part>\n\t\t\t<name>{part}</name>\n\t\t\t<bndbox>\n\t\t\t\t<xmin>{x1}</xmin>\n"
                             f"\t\t\t\t<ymin>{y1}</ymin>\n\t\t\t\t<xmax>{x2}</xmax>\n\t\t\t\t<ymax>{y2}</ymax>\n"
                             "\t\t\t</bndbox>\n\t\t</part>\n")
        parts.append("\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """500x375 photos-like JPEGs (smooth colour fields plus grain, quality 90: ~VOC's file sizes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3))
        path = folder / f"{n:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def full_decode(path: Path) -> str:
    with Image.open(path) as image:
        image.load()
    return IMAGE_OK


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {len(os.sched_getaffinity(0))} usable cores, torch threads {torch.get_num_threads()}, "
            f"load average {load} (other jobs share the machine: compare rows, not runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the files and 40 images (smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (best and median reported)")
    args = parser.parse_args()
    scale, num_jpegs = (0.1, 40) if args.quick else (1.0, 300)

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        num_files = write_voc_xml(data, scale)
        generated = time.perf_counter() - t0
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["data"].update(root=str(data), train_sets=["2007/trainval", "2012/trainval"], test_sets=["2007/test"])
        params = params_from_dict(raw)
        paths = sorted((data / "extracted").rglob("*.xml"))

        print(f"# prepare: XML -> tables, {num_files} annotation files (written in {generated:.1f} s)\n")
        print(f"machine: {machine()}\n")
        steps = {
            "parse XML only": lambda w: parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="error", workers=w),
            "parse + tables (read_tables)": lambda w: prepare.read_tables(params.data, workers=w),
        }
        times: dict[tuple[str, int], list[float]] = {(name, w): [] for name in steps for w in (1, 2)}
        for _ in range(args.repeats):  # interleaved, so that a burst of load on the machine hits every row alike
            for (name, workers), samples in times.items():
                t0 = time.perf_counter()
                result = steps[name](workers)
                samples.append(time.perf_counter() - t0)
        print("| step | workers | best s | median s | files/s (best) | speed-up vs 1 worker (best) |")
        print("|---|---|---|---|---|---|")
        for (name, workers), samples in times.items():
            best = min(samples)
            print(f"| {name} | {workers} | {best:.2f} | {statistics.median(samples):.2f} | {num_files / best:,.0f} | "
                  f"{min(times[name, 1]) / best:.2f}x |")
        tables = result
        prepare.run(params, workers=2, check_images=False)  # warm-up: imports great_expectations (~3 s)
        report = prepare.run(params, workers=2, check_images=False)
        total = report["timings_s"]["total"]
        print(f"| whole stage without images (gate, targets, parquet) | 2 | {total:.2f} | - | "
              f"{num_files / total:,.0f} | - |")
        print(f"\n{len(tables.images)} images, {len(tables.objects)} objects; stage steps (s): {report['timings_s']}\n")

        jpegs = write_jpegs(Path(tmp) / "jpeg", num_jpegs)
        fast, statuses = best_of(lambda: [check_image(p, (500, 375)) for p in jpegs], args.repeats)
        assert all(s == IMAGE_OK for s in statuses)
        full, _ = best_of(lambda: [full_decode(p) for p in jpegs], args.repeats)
        size_kb = sum(p.stat().st_size for p in jpegs) / len(jpegs) / 1024
        print(f"# image check, {num_jpegs} JPEGs of 500x375 (~{size_kb:.0f} KB each), 1 process\n")
        print("| check | ms / image | 21,503 images, 1 core (s) | 21,503 images, 2 cores (s) | speed-up |")
        print("|---|---|---|---|---|")
        for name, seconds in (("full decode (baseline)", full), ("header + end-of-image marker", fast)):
            per = seconds / num_jpegs
            print(f"| {name} | {per * 1e3:.2f} | {per * 21503:.1f} | {per * 21503 / 2:.1f} | {full / seconds:.1f}x |")


if __name__ == "__main__":
    main()
