"""The optional pretrain stage: the paper's classification pretraining of the detector's backbone.

Trains backbone + average pool + FC (for Darknet: the first 20 conv layers, as the paper does on ImageNet at
224 px) on the ImageFolder tree ``pretrain.image_folder``, in its own MLflow run (loss, top-1, top-5 per epoch),
and writes ``pretrain.output``: a backbone checkpoint that ``model.pretrained: <that path>`` loads into the
detector, which then adds its 4 conv and 2 FC layers (section 2.2). Architecture from ``model``
(backbone, variant, width_multiplier, batch_norm); seed from ``train.seed``.

``--make-crops`` first cuts the objects of the extracted VOC-format data (``data.root/extracted/VOCdevkit``,
``data.train_sets``; ``data.test_sets`` too when ``pretrain.val_folder`` is set) into those ImageFolder trees:
how the generated demo data becomes a small classification set. Off by default in DVC: run it with
``dvc repro pretrain/dvc.yaml`` (a separate pipeline file that plain ``dvc repro`` does not run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipelines.params import load_params
from pipelines.tracking import TrackingUnavailable, write_json
from yolov1.config import Params

log = logging.getLogger("yolov1.pretrain")
REPORT = Path("reports/pretrain.json")


def make_crops(params: Params) -> dict:
    """Cut VOC objects into ``pretrain.image_folder`` (and ``pretrain.val_folder`` from the test sets)."""
    from yolov1.pretrain import make_crops as cut

    devkit = Path(params.data.root) / "extracted" / "VOCdevkit"
    jobs = [(params.data.train_sets, params.pretrain.image_folder)]
    if params.pretrain.val_folder is not None:
        jobs.append((params.data.test_sets, params.pretrain.val_folder))
    out = {}
    for sets, folder in jobs:
        report = cut(devkit, sets, params.data.classes, folder)
        out[folder] = {"per_class": report.per_class, "skipped_difficult": report.skipped_difficult,
                       "skipped_small": report.skipped_small}
        log.info("%s: %d crops (%s)", folder, sum(report.per_class.values()), report.per_class)
    return out


def run(params: Params, *, track: bool = True, report_path: Path = REPORT) -> dict:
    """Pretrain, write ``pretrain.output`` and the report; returns the report (metrics, classes, run id)."""
    from yolov1.pretrain import image_folder_datasets, pretrain, save_backbone
    from yolov1.train import resolve_device

    experiment_id = None
    if track:  # before any work: a dead tracking store fails the stage in seconds
        from pipelines.tracking import configure

        experiment_id = configure(params.tracking)
    train_set, val_set, classes = image_folder_datasets(params.pretrain, seed=params.train.seed)
    device = resolve_device(params.train.device)
    log.info("pretraining the %s backbone on %d images of %d classes (%d held out) on %s", params.model.backbone,
             len(train_set), len(classes), len(val_set), device)
    run_id = None
    if track:
        import mlflow

        from pipelines.tracking import system_tags
        from yolov1.config import flatten
        from yolov1.redact import redact

        active = mlflow.start_run(experiment_id=experiment_id, run_name="pretrain")
        run_id = active.info.run_id
        logged = {**flatten(params.pretrain, "pretrain."), **{f"model.{k}": v for k, v in flatten(params.model).items()},
                  "train.seed": params.train.seed, "num_classes": len(classes)}
        mlflow.log_params({k: redact(v) if isinstance(v, str) else v for k, v in logged.items()})
        mlflow.set_tags({"stage": "pretrain", **system_tags(str(device))})
    try:
        result = pretrain(params.model, params.pretrain, train_set, val_set, classes, seed=params.train.seed,
                          device=device, on_epoch_end=_log_epoch if track else None)
        save_backbone(params.pretrain.output, result.model, params.model, classes,
                      extra={"metrics": result.metrics, "input_size": params.pretrain.input_size})
    except BaseException:
        if track:
            mlflow.end_run(status="FAILED")
        raise
    if track:
        mlflow.end_run()
    report = {"output": params.pretrain.output, "classes": classes, "train_images": len(train_set),
              "val_images": len(val_set), "metrics": result.metrics, "mlflow_run_id": run_id}
    write_json(report_path, report)
    return report


def _log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--make-crops", action="store_true",
                        help="first cut the extracted VOC-format data's objects into pretrain.image_folder")
    parser.add_argument("--crops-only", action="store_true", help="with --make-crops: stop after cutting crops")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        params = load_params(args.params)
        crops = make_crops(params) if args.make_crops else None
        if args.crops_only:
            if crops is None:
                parser.error("--crops-only needs --make-crops")
            print(json.dumps(crops, indent=2))
            return 0
        report = run(params, track=not args.no_track)
    except (FileNotFoundError, ValueError, TrackingUnavailable, FloatingPointError) as err:
        from yolov1.redact import redact

        print(f"yolov1 pretrain: error: {redact(str(err))}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("output", "train_images", "val_images", "metrics")}, indent=2))
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 pretrain"))
