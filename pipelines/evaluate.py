"""The evaluate stage: VOC mAP of the trained model on the test split, with pictures and DVC plot data.

Writes ``reports/metrics.json`` (DVC metrics: map_voc07 — the paper's headline, 11-point — map_area, per-class AP
by both methods, images/s), ``reports/pr.csv`` (DVC plot data: class, rank, recall, precision - every class's
curve in one file, so `dvc plots` draws them on one chart coloured by class), ``reports/pr_curves.png`` and
``reports/predictions.png`` (test images with predicted boxes in colour and ground truth in white), and logs all
of them to the training run in MLflow. Difficult objects are excluded, as in the devkit; IoU is computed on
continuous pixels, which equals the devkit's +1 convention on VOC's integer boxes. A detection matches at
IoU >= eval.match_iou_threshold under the official devkit's rule (``eval.match_comparison: ">="``; ">" is the
Python ports' rule). metrics.json names the rule (``match_comparison``, ``match_iou_threshold``) and the test data
(``test_split_hash``, a hash of the test split alone), and both are tags on the MLflow run, so every reported number
says how it was produced and the registry compares like with like.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

import torch

from pipelines.params import load_params
from pipelines.tracking import (
    TrackingUnavailable,
    configure,
    hash_test_split,
    log_params_artifact,
    write_json,
)
from yolov1.config import Params

log = logging.getLogger("yolov1.evaluate")
REPORTS = Path("reports")
WEIGHTS = Path("models/yolov1.pt")
META = Path("models/yolov1.json")


def score(params: Params, weights: Path):
    """Evaluate `weights` on the test split of ``<data.root>/prepared`` with ``params.eval``.

    Returns (Evaluation, metrics dict as in metrics.json, class names, test images table)."""
    from yolov1.checkpoint import load_weights
    from yolov1.data import VOCDetection, load_split
    from yolov1.evaluate import evaluate

    device = "cuda" if torch.cuda.is_available() and params.train.device != "cpu" else "cpu"
    model, model_cfg, classes = load_weights(weights, device=device)
    root = Path(params.data.root)
    images, objects = load_split(root / "prepared", "test")
    dataset = VOCDetection(images, objects, root=root, data_cfg=params.data, input_size=model_cfg.input_size,
                           grid_size=model_cfg.grid_size, train=False)
    workers = min(params.train.num_workers, os.cpu_count() or 1)
    result = evaluate(model, dataset, model_cfg=model_cfg, eval_cfg=params.eval, device=device, num_workers=workers)
    metrics = result.summary(classes)
    metrics["device"] = device
    metrics["match_comparison"] = result.voc07.match_comparison  # the rule that produced these numbers
    metrics["match_iou_threshold"] = result.voc07.iou_threshold
    metrics["test_split_hash"] = hash_test_split(root / "prepared")
    return result, metrics, classes, images


def run(params: Params, *, weights: Path = WEIGHTS, reports: Path = REPORTS, track: bool = True) -> dict:
    result, metrics, classes, images = score(params, weights)
    write_json(reports / "metrics.json", metrics)
    _write_pr_data(result, classes, reports / "pr.csv")
    _write_pictures(result, classes, images, params, reports)
    if track and META.is_file():
        run_id = json.loads(META.read_text()).get("mlflow_run_id")
        if run_id:
            _log_to_run(params, metrics, reports, run_id)
        else:  # trained with --no-track: there is no run to add the test metrics to
            log.info("%s names no MLflow run (trained with --no-track): test metrics not logged", META)
    return metrics


def _write_pr_data(result, classes, path: Path) -> None:
    """One CSV, a row per (class, detection rank): the area-method PR points of every class, in rank order."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class", "rank", "recall", "precision"])
    for c, name in enumerate(classes):
        for k, (r, p) in enumerate(zip(result.area.recall[c], result.area.precision[c], strict=True)):
            writer.writerow([name, k, f"{r:.5f}", f"{p:.5f}"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def _write_pictures(result, classes, images, params: Params, reports: Path) -> None:
    import numpy as np
    from PIL import Image

    from yolov1.plots import draw_boxes, image_grid, plot_pr_curves, save_image

    plot_pr_curves(result.area.precision, result.area.recall, result.voc07.ap, classes, reports / "pr_curves.png",
                   title=f"PR curves (legend: VOC07 AP), mAP {result.voc07.map:.3f} (11-pt) / {result.area.map:.3f} (area)")
    pictures = []
    root = Path(params.data.root)
    for k in range(min(params.eval.num_pictures, result.num_images)):
        boxes, scores, labels = result.detections[k]
        keep = scores >= params.eval.draw_score_threshold
        path = root / images.iloc[k]["path"]  # the dataset keeps the table's order
        with Image.open(path) as img:
            pictures.append(draw_boxes(img, boxes[keep], labels[keep], classes, scores=scores[keep],
                                       gt_boxes_xyxy=np.asarray(result.ground_truths[k][0])))
    if pictures:
        save_image(image_grid(pictures, cols=4), reports / "predictions.png")


def _log_to_run(params: Params, metrics: dict, reports: Path, run_id: str) -> None:
    import mlflow

    configure(params.tracking)
    with mlflow.start_run(run_id=run_id):
        flat = {"test/map_voc07": metrics["map_voc07"], "test/map_area": metrics["map_area"],
                "test/images_per_second": metrics["images_per_second"]}
        for name, ap in metrics["ap_voc07"].items():
            flat[f"test/ap_voc07/{name}"] = ap
        mlflow.log_metrics({k: v for k, v in flat.items() if v is not None})
        mlflow.set_tags({"test_split_hash": metrics["test_split_hash"],
                         "eval.match_comparison": metrics["match_comparison"],
                         "eval.match_iou_threshold": str(metrics["match_iou_threshold"])})
        for name in ("metrics.json", "pr_curves.png", "predictions.png"):
            if (reports / name).is_file():
                mlflow.log_artifact(str(reports / name), artifact_path="evaluation")
        log_params_artifact(params, "evaluation")  # the params this stage used (--params), redacted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="weights file (default: %(default)s)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        metrics = run(load_params(args.params), weights=args.weights, track=not args.no_track)
    except (FileNotFoundError, ValueError, TrackingUnavailable) as err:
        print(f"yolov1 evaluate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: metrics[k] for k in ("map_voc07", "map_area", "images_per_second", "num_images")}, indent=2))
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 evaluate"))
