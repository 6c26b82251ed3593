"""VOC mAP speed at VOC2007-test scale: yolov1.metrics (vectorised) vs the per-detection loop of the devkit port.

Synthetic set: 4,952 images, ~2.4 objects each (~10% difficult), ~20 detections each, 20 classes, integer boxes.
One CPU thread. Usage: .venv/bin/python benchmarks/bench_metrics.py [--quick] [--repeats N]
"""

import os

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
):  # before numpy/torch load their pools
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.reference
from tests.reference import devkit_voc_eval, synthetic_detection_set  # noqa: E402
from yolov1.metrics import evaluate_both, evaluate_detections  # noqa: E402

NUM_CLASSES = 20


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _devkit_loop(dets, gts):
    """The straightforward way: per class, the devkit port's per-detection loop once (11-point), area AP from the
    same precision/recall (so matching is not done twice)."""
    aps = {"voc07": [], "area": []}
    for c in range(NUM_CLASSES):
        rec, prec, ap07, _, _ = devkit_voc_eval.voc_eval(dets, gts, c, 0.5, True, True)
        aps["voc07"].append(ap07)
        aps["area"].append(devkit_voc_eval.voc_ap(rec, prec, False))
    return {k: np.array(v) for k, v in aps.items()}


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: 500 images, 1 baseline run")
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of the vectorised code (median reported)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    num_images = 500 if args.quick else 4952
    dets, gts = synthetic_detection_set(
        0, num_images=num_images, num_classes=NUM_CLASSES, difficult_fraction=0.1, detections_per_image=20.0
    )
    n_det = sum(len(d[1]) for d in dets)
    n_gt = sum(len(g[1]) for g in gts)

    kwargs = {"num_classes": NUM_CLASSES, "inclusive_pixels": True}
    evaluate_both(dets, gts, **kwargs)  # warm-up
    t_both, both = _median_seconds(lambda: evaluate_both(dets, gts, **kwargs), args.repeats)
    t_one, _ = _median_seconds(lambda: evaluate_detections(dets, gts, method="voc07", **kwargs), args.repeats)
    t_loop, loop = _median_seconds(lambda: _devkit_loop(dets, gts), 1 if args.quick else 3)
    for method in ("voc07", "area"):  # a speed-up is only worth reporting if the numbers agree
        assert np.allclose(both[method].ap, loop[method], rtol=0, atol=1e-9), method

    print(f"VOC mAP, {num_images} images, {n_gt} objects, {n_det} detections, {NUM_CLASSES} classes")
    load = os.getloadavg()[0]  # other work on the machine inflates every row alike, the ratios less
    print(
        f"machine: {_cpu_model()} ({os.cpu_count()} cores, load {load:.1f}), torch threads {torch.get_num_threads()}"
    )
    print(f"mAP@0.5 (inclusive pixels): voc07 {both['voc07'].map:.4f}, area {both['area'].map:.4f}\n")
    print("| what | seconds (median) | vs devkit loop |")
    print("|---|---:|---:|")
    print(f"| devkit port, per-detection loop (voc07 + area) | {t_loop:.3f} | 1.0x |")
    print(f"| yolov1.metrics.evaluate_both (voc07 + area) | {t_both:.4f} | {t_loop / t_both:.0f}x faster |")
    print(f"| yolov1.metrics.evaluate_detections (voc07) | {t_one:.4f} | {t_loop / t_one:.0f}x faster |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
