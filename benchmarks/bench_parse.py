"""VOC annotation parsing speed: yolov1.voc on 21,503 generated files (the size of VOC 07+12), vs plain ElementTree.

Writes realistic VOC XML (source/owner blocks, ~2.4 objects per file, persons with <part> children, some decimal
coordinates) to a temp dir, then times, in this process: xml.etree parse only (the baseline), defusedxml parse
only, `parse_annotation` file by file, and `parse_annotations` with workers 1 and 2. CPU seconds are printed
beside wall time because the machine may be shared: wall time alone then understates the parser.

    .venv/bin/python benchmarks/bench_parse.py [--quick] [--files N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import defusedxml.ElementTree as DET

from yolov1.voc import VOC_CLASSES, parse_annotation, parse_annotations

FULL_FILES = 21_503  # VOC2007 trainval + test (9,963) + VOC2012 trainval (11,540)


def _coord(rng: random.Random, value: float) -> str:
    return f"{value + 0.5:.1f}" if rng.random() < 0.03 else str(int(value))  # a few decimals, as in VOC2012


def _object(rng: random.Random, width: int, height: int) -> str:
    name = "person" if rng.random() < 0.3 else rng.choice(VOC_CLASSES)
    x1, y1 = rng.randint(1, width - 10), rng.randint(1, height - 10)
    x2, y2 = rng.randint(x1 + 1, min(width - 1, x1 + 300)), rng.randint(y1 + 1, min(height - 1, y1 + 300))
    parts = ""
    if name == "person" and rng.random() < 0.3:
        for part in rng.sample(["head", "hand", "hand", "foot", "foot"], rng.randint(1, 4)):
            px, py = rng.randint(x1, x2 - 1), rng.randint(y1, y2 - 1)
            parts += (
                f"\t\t<part>\n\t\t\t<name>{part}</name>\n\t\t\t<bndbox>\n\t\t\t\t<xmin>{px}</xmin>\n"
                f"\t\t\t\t<ymin>{py}</ymin>\n\t\t\t\t<xmax>{px + 1}</xmax>\n\t\t\t\t<ymax>{py + 1}</ymax>\n"
                "\t\t\t</bndbox>\n\t\t</part>\n"
            )
    return (
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>{rng.choice(['Left', 'Right', 'Frontal', 'Unspecified'])}</pose>\n"
        f"\t\t<truncated>{int(rng.random() < 0.3)}</truncated>\n\t\t<occluded>{int(rng.random() < 0.4)}</occluded>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{_coord(rng, x1)}</xmin>\n\t\t\t<ymin>{_coord(rng, y1)}</ymin>\n"
        f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n"
        f"\t\t<difficult>{int(rng.random() < 0.1)}</difficult>\n{parts}\t</object>\n"
    )


def _annotation(rng: random.Random, image_id: str) -> str:
    width, height = rng.randint(320, 500), rng.randint(240, 500)
    count = 1
    while rng.random() < 0.58 and count < 40:  # geometric: mean 1 / (1 - 0.58) = 2.4 objects
        count += 1
    objects = "".join(_object(rng, width, height) for _ in range(count))
    return (
        f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{image_id}.jpg</filename>\n\t<source>\n"
        "\t\t<database>The VOC2008 Database</database>\n\t\t<annotation>PASCAL VOC2008</annotation>\n"
        f"\t\t<image>flickr</image>\n\t\t<flickrid>{rng.randint(10**8, 10**9)}</flickrid>\n\t</source>\n"
        "\t<owner>\n\t\t<flickrid>someone</flickrid>\n\t\t<name>Someone</name>\n\t</owner>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{objects}</annotation>\n"
    )


def _write_files(directory: Path, count: int) -> list[Path]:
    rng = random.Random(0)
    paths = []
    for n in range(count):
        path = directory / f"2012_{n:06d}.xml"
        path.write_text(_annotation(rng, path.stem), encoding="utf-8")
        paths.append(path)
    return paths


def _cpu_seconds() -> float:
    t = os.times()  # children count once reaped, so a finished pool's workers are included
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn) -> tuple[tuple[float, float], object]:
    """(wall seconds, CPU seconds of this process and its finished children), result."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    return (time.perf_counter() - start, _cpu_seconds() - cpu), result


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        threads = str(torch.get_num_threads())
    except ImportError:
        threads = "n/a"
    return f"{cpu}, {os.cpu_count()} cores visible, torch threads {threads} (parsing uses none), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-size run (2,000 files)")
    parser.add_argument("--files", type=int, default=None, help=f"number of files (default {FULL_FILES:,})")
    args = parser.parse_args(argv)
    count = args.files or (2_000 if args.quick else FULL_FILES)

    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        paths = _write_files(Path(tmp), count)
        for p in paths:  # warm the page cache so every row reads from memory
            p.read_bytes()
        rows = []
        seconds, _ = _timed(lambda: [ET.parse(p) for p in paths])
        rows.append(("xml.etree.ElementTree.parse (baseline, tree only)", 1, seconds))
        seconds, _ = _timed(lambda: [DET.parse(p) for p in paths])
        rows.append(("defusedxml.ElementTree.parse (tree only)", 1, seconds))
        seconds, serial = _timed(
            lambda: [parse_annotation(p, classes=VOC_CLASSES, on_bad_object="error") for p in paths]
        )
        rows.append(("yolov1.voc.parse_annotation (validated)", 1, seconds))
        for workers in (1, 2):
            seconds, pooled = _timed(
                lambda w=workers: parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="error", workers=w)
            )
            assert pooled == serial
            rows.append((f"yolov1.voc.parse_annotations (workers={workers})", workers, seconds))

    objects = sum(len(a.objects) for a in serial)
    print(f"Machine: {_machine()}\n")
    print(f"{count:,} files, {objects:,} objects ({objects / count:.2f} per file)\n")
    print("| parser | processes | wall s | files/s (wall) | wall vs baseline | CPU s (all processes) |")
    print("|---|---|---|---|---|---|")
    base = rows[0][2][0]
    for name, procs, (wall, cpu) in rows:
        print(f"| {name} | {procs} | {wall:.2f} | {count / wall:,.0f} | {wall / base:.2f}x | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
