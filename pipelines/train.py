"""The train stage: the paper's recipe on the prepared training split, tracked in MLflow.

Outputs (DVC): ``models/yolov1.pt`` (state dict + the model config and class names needed to rebuild the net),
``models/yolov1.json`` (metadata: the MLflow run and logged model, steps, speed), ``reports/train_loss.csv``
(loss curves for ``dvc plots``) and ``reports/train_loss.png``. The MLflow run gets every param (flattened), step losses and components, the
learning rate, images/s, validation mAP every ``train.val_every`` epochs, system facts, lineage tags (git commit
and dirty flag, DVC hash of the prepared data, Prefect flow run id) and the model as a pyfunc.

The tracking store is checked before training starts, so a dead server fails the stage in seconds, not after
hours. A killed run resumes from ``train.checkpoint_dir`` (``train.resume: auto``) into the same MLflow run.

Processes: ``train.gpus`` ("auto": every visible GPU; N: N processes, gloo ones on CPU) > 1 makes this command
start that many copies of itself (torch's elastic launcher, as ``torchrun --standalone`` would), so `dvc repro`,
the Prefect flow and ``make run`` all use every GPU; rank 0 alone tracks and writes the outputs, and the command
exits non-zero when any rank fails. Under an outside launcher (WORLD_SIZE set) it is one rank and launches nothing.
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
from pipelines.tracking import TrackingUnavailable, write_json
from yolov1.config import Params, flatten

log = logging.getLogger("yolov1.train")
WEIGHTS = Path("models/yolov1.pt")
META = Path("models/yolov1.json")
LOSS_CSV = Path("reports/train_loss.csv")
LOSS_PNG = Path("reports/train_loss.png")
LOSS_KEYS = ("loss", "loss_coord", "loss_obj", "loss_noobj", "loss_class")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _datasets(params: Params):
    from yolov1.data import VOCDetection, load_split

    root = Path(params.data.root)
    common = dict(root=root, data_cfg=params.data, input_size=params.model.input_size,
                  grid_size=params.model.grid_size)
    train_set = VOCDetection(*load_split(root / "prepared", "train"), train=True, **common)
    val_set = VOCDetection(*load_split(root / "prepared", "test"), train=False, **common)
    return train_set, val_set


def _val_fn(params: Params, val_set):
    from yolov1.evaluate import evaluate

    def validate(model, epoch: int) -> dict[str, float]:
        device = next(model.parameters()).device
        # Decoding JPEGs in loader workers: the training loop waits for validation, so it should not wait for
        # one process to read the images. The workers are started per validation and gone after it.
        result = evaluate(model, val_set, model_cfg=params.model, eval_cfg=params.eval, device=device,
                          limit=params.train.val_images, num_workers=params.train.num_workers)
        return {"map_voc07": result.voc07.map, "map_area": result.area.map}

    return validate if params.train.val_every > 0 else None


class EpochProgress:
    """A tqdm bar per epoch (steps, loss, ETA) on a terminal; nothing otherwise, so logs (DVC under Prefect, CI)
    get only the library's one line per epoch. Fed by the `on_step` callback, every ``train.log_every`` steps."""

    def __init__(self, epochs: int, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.epochs, self.bar, self.done = epochs, None, 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics.get("epoch"):
            return
        steps_per_epoch = max(1, round(step / metrics["epoch"]))  # "epoch" = step / steps_per_epoch
        in_epoch = step - (min(int(metrics["epoch"] - 1e-9), self.epochs - 1)) * steps_per_epoch
        if self.bar is None:
            from tqdm import tqdm

            epoch = min(int(metrics["epoch"] - 1e-9) + 1, self.epochs)
            self.bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{self.epochs}", unit="step",
                            file=self.stream, leave=False, dynamic_ncols=True)
            self.done = 0
        self.bar.update(in_epoch - self.done)
        self.done = in_epoch
        self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.3f}")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _History:
    """Keeps the step losses for the DVC plot and forwards to MLflow when tracking (and to a progress bar)."""

    def __init__(self, forward=None, progress: EpochProgress | None = None) -> None:
        self.rows: list[dict[str, float]] = []
        self.forward = forward
        self.progress = progress

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append({"step": step, **{k: float(metrics[k]) for k in LOSS_KEYS if k in metrics}})
        if self.forward:
            self.forward.on_step(step, metrics)
        if self.progress:
            self.progress.on_step(step, metrics)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.progress:
            self.progress.on_epoch_end(epoch, metrics)
        if self.forward:
            self.forward.on_epoch_end(epoch, metrics)

    def write_csv(self, path: Path) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["step", "total", "coord", "obj", "noobj", "class"])
        for row in self.rows:
            writer.writerow([row["step"], *(f"{row.get(k, float('nan')):.6g}" for k in LOSS_KEYS)])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, path)


def run(params: Params, *, track: bool = True) -> dict:
    from yolov1.checkpoint import save_weights
    from yolov1.data import collate_train, worker_init_fn
    from yolov1.train import resolve_device, train

    rank = _rank()
    tracking = track and rank == 0
    if tracking:  # before any data loading or training: fail fast when the store is unreachable
        from pipelines.tracking import configure

        experiment_id = configure(params.tracking)
    train_set, val_set = _datasets(params)
    if params.train.num_workers == 0:
        from yolov1.data import tune_malloc

        tune_malloc()  # loader workers do this themselves; without workers the samples are decoded here
    device = resolve_device(params.train.device)
    checkpoint_dir = Path(params.train.checkpoint_dir)
    active = None
    history = _History(progress=EpochProgress(params.train.epochs))
    if tracking:
        active = _start_run(params, experiment_id, checkpoint_dir, device)
        from pipelines.tracking import MlflowCallbacks

        history.forward = MlflowCallbacks()
    try:
        result = train(params.model, params.train, train_set, checkpoint_dir=checkpoint_dir,
                       callbacks=history if rank == 0 else None, val_fn=_val_fn(params, val_set),
                       collate_fn=collate_train, worker_init_fn=worker_init_fn,
                       hash_extra={"classes": list(params.data.classes)}, classes=list(params.data.classes))
    except BaseException:
        if active is not None:
            import mlflow

            mlflow.end_run(status="FAILED")
        raise
    if rank != 0:
        return {}
    meta = {"steps": result.steps, "epochs": result.epochs, "wall_time_s": round(result.wall_time_s, 2),
            "images_per_second": round(result.images_per_second, 2), "params_hash": result.params_hash,
            "device": str(device), "final_metrics": {k: float(v) for k, v in result.final_metrics.items()},
            "processes": _world(), "best": _best(result.best)}
    save_weights(WEIGHTS, result.model, params.model, list(params.data.classes),
                 extra={"params_hash": result.params_hash, "steps": result.steps, "epochs": result.epochs},
                 inference=_inference_settings(params))  # self-describing: predict needs no params file
    history.write_csv(LOSS_CSV)
    if history.rows:
        from yolov1.plots import plot_loss_curves

        plot_loss_curves(history.rows, LOSS_PNG, keys=LOSS_KEYS)
    if tracking:
        meta.update(_finish_run(params, active))
    write_json(META, meta)
    # The run is complete: its checkpoint is only for resuming a killed run. Left behind, the next `dvc repro` of
    # this stage would fail on a params change (hash mismatch) or, after a code change, "resume" the finished run
    # and silently skip training.
    result.checkpoint.unlink(missing_ok=True)
    return meta


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _best(best: dict | None) -> dict | None:
    """best.pt's metric, value and epoch (JSON-able), or None when validation never ran."""
    if best is None:
        return None
    return {"path": str(best["path"]), "metric": best["metric"], "value": float(best["value"]),
            "epoch": int(best["epoch"])}


def _launch_workers(params: Params, argv: list[str], track: bool) -> int | None:
    """Start ``train.gpus`` copies of this command when that is more than one and no launcher started us; their
    exit status (0, or the first failing rank's), or None to train in this process."""
    from yolov1.distributed import LaunchFailed, launch, world_size_for

    if "WORLD_SIZE" in os.environ:
        return None
    nprocs = world_size_for(params.train.gpus, params.train.device)
    if nprocs <= 1:
        return None
    if track:  # fail fast here, before N processes start
        from pipelines.tracking import configure

        configure(params.tracking)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    try:
        launch(nprocs, ["-m", "pipelines.train", *argv])
    except LaunchFailed as err:
        print(f"yolov1 train: error: {err}", file=sys.stderr)
        return err.exitcode
    return 0


def _inference_settings(params: Params) -> dict:
    """The thresholds and image limit stored in the weights file (see `yolov1.predict.InferenceSettings`)."""
    from yolov1.predict import InferenceSettings

    return InferenceSettings.from_params(params.eval, params.serve).to_dict()


def _start_run(params: Params, experiment_id: str, checkpoint_dir: Path, device: torch.device):
    import mlflow

    from pipelines.tracking import lineage_tags, log_training_data, run_name, system_tags

    run_file = checkpoint_dir / "mlflow_run_id"
    resume_id = None
    if params.train.resume == "auto" and run_file.is_file() and (checkpoint_dir / "last.pt").is_file():
        resume_id = run_file.read_text().strip() or None
    active = mlflow.start_run(run_id=resume_id, experiment_id=None if resume_id else experiment_id,
                              run_name=None if resume_id else run_name("train", params),
                              log_system_metrics=params.tracking.system_metrics)  # CPU/memory (GPU: pynvml)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(active.info.run_id)
    if resume_id is None:
        from yolov1.redact import redact  # tracking.uri or a path may carry credentials: never log them

        mlflow.log_params({k: redact(json.dumps(v)) if isinstance(v, list) else redact(v) if isinstance(v, str) else v
                           for k, v in flatten(params).items() if not k.startswith("data.archives")})
    mlflow.set_tags({**lineage_tags(Path(params.data.root) / "prepared"), **system_tags(str(device))})
    if resume_id is None:
        log_training_data(Path(params.data.root) / "prepared")
    return active


def _finish_run(params: Params, active) -> dict:
    import mlflow

    from pipelines.pyfunc import log_pyfunc
    from yolov1.data import load_split

    mlflow.log_artifact(str(LOSS_CSV), artifact_path="training")
    if LOSS_PNG.is_file():
        mlflow.log_artifact(str(LOSS_PNG), artifact_path="training")
    from pipelines.tracking import log_params_artifact

    log_params_artifact(params)  # the params this run used (from --params), not whatever params.yaml is in the cwd
    images, _ = load_split(Path(params.data.root) / "prepared", "test")
    example = Path(params.data.root) / images.iloc[0]["path"]
    info = log_pyfunc(WEIGHTS, example_image=example, score_threshold=params.eval.draw_score_threshold,
                      nms_iou_threshold=params.eval.nms_iou_threshold, max_detections=params.eval.max_detections,
                      serve=params.serve)
    mlflow.end_run()
    (Path(params.train.checkpoint_dir) / "mlflow_run_id").unlink(missing_ok=True)  # the run is complete
    return {"mlflow_run_id": active.info.run_id, "model_uri": info.model_uri,
            "mlflow_experiment": params.tracking.experiment, "mlflow_experiment_id": active.info.experiment_id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow (no model is logged)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if _rank() == 0 else logging.WARNING, format="%(message)s")
    try:
        params = load_params(args.params)
        launched = _launch_workers(params, argv, track=not args.no_track)
        if launched is not None:
            return launched
        meta = run(params, track=not args.no_track)
    except (FileNotFoundError, ValueError, TrackingUnavailable) as err:
        print(f"yolov1 train: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from yolov1.train import NonFiniteLossError, ResumeError, TrainingInterrupted

        if isinstance(err, (ResumeError, NonFiniteLossError, TrainingInterrupted)):
            print(f"yolov1 train: error: {err}", file=sys.stderr)
            return 2
        raise
    if meta:
        print(json.dumps({k: meta[k] for k in ("steps", "epochs", "wall_time_s", "images_per_second")}, indent=2))
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 train"))
