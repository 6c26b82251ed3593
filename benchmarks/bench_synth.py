"""Demo-data generation speed: the tarball `make demo` serves (profiles/synthetic-voc.yaml), three ways.

Times, in this process: `generate_voc` into a folder then `make_tarball` (one file per image on disk, then packed),
and `generate_voc_tarball` (no intermediate folder) with workers 1 and 2. Every way must give the same md5 (the
script checks it). CPU seconds of this process and its children are printed beside wall time because the
machine may be shared.

    .venv/bin/python benchmarks/bench_synth.py [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402

from yolov1.synth import generate_voc, generate_voc_tarball, make_tarball  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "profiles" / "synthetic-voc.yaml"


def _kwargs(quick: bool) -> dict:
    spec = yaml.safe_load(SPEC.read_text())
    kwargs = {k: v for k, v in spec.items() if k != "filename"}
    kwargs["image_size"] = tuple(tuple(r) for r in kwargs["image_size"])
    for key in ("object_size", "difficult_size"):
        kwargs[key] = tuple(kwargs[key])
    if quick:
        kwargs["num_trainval"], kwargs["num_test"] = 200, 30
    return kwargs


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn) -> tuple[float, float, str]:
    wall, cpu = time.perf_counter(), _cpu()
    md5 = fn()
    return time.perf_counter() - wall, _cpu() - cpu, md5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="230 images instead of the profile's 2,300")
    parser.add_argument("--repeat", type=int, default=1, help="runs per way; the best is kept (default: 1)")
    args = parser.parse_args()
    kwargs = _kwargs(args.quick)
    images = kwargs["num_trainval"] + kwargs["num_test"]
    print(f"{images} images, {kwargs['image_size']} px; {cpu_name()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def folder_then_pack(i: int) -> str:
            generate_voc(tmp / f"folder{i}", **kwargs)
            return make_tarball(tmp / f"folder{i}", tmp / f"folder{i}.tar")

        ways = {
            "generate_voc + make_tarball": folder_then_pack,
            "generate_voc_tarball, workers=1": lambda i: generate_voc_tarball(tmp / f"a{i}.tar", **kwargs)[1],
            "generate_voc_tarball, workers=2": lambda i: generate_voc_tarball(tmp / f"b{i}.tar", workers=2,
                                                                              **kwargs)[1],
        }
        digests = set()
        for label, way in ways.items():
            runs = [_timed(partial(way, i)) for i in range(args.repeat)]
            wall, cpu, md5 = min(runs)
            digests.add(md5)
            print(f"  {label:34s} {wall:6.2f} s wall  {cpu:6.2f} s CPU  {images / wall:7.0f} images/s  md5 {md5}")
    if len(digests) != 1:
        print("error: the ways gave different tarballs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
