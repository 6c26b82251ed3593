"""The train and evaluate stages (pipelines.train / pipelines.evaluate) on a tiny prepared dataset, without MLflow,
and the train stage's refusal to start when the tracking server is down."""

from __future__ import annotations

import copy
import csv
import json
import math
import socket
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pipelines import evaluate as evaluate_stage
from pipelines import predict as predict_stage
from pipelines import train as train_stage
from pipelines.prepare import read_tables
from yolov1.checkpoint import load_weights
from yolov1.config import params_from_dict
from yolov1.synth import generate_voc

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["aeroplane", "bicycle", "bird"]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_params() -> dict:
    """profiles/tiny.yaml shrunk further: 3 classes, one epoch of batches of 4 on the CPU, no loader workers."""
    raw = copy.deepcopy(yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text()))
    raw["data"].update(root="data", classes=CLASSES, train_sets=["2007/trainval"], test_sets=["2007/test"])
    raw["model"].update(variant="fast", width_multiplier=0.125, head="conv", input_size=112, grid_size=7,
                        num_classes=len(CLASSES))
    raw["train"].update(device="cpu", epochs=1, batch_size=4, num_workers=0, val_every=1, val_images=4, log_every=1,
                        resume="never", checkpoint_dir="models/checkpoints")
    raw["eval"].update(batch_size=8, num_pictures=4)
    return raw


def test_train_fails_before_training_without_tracking_server(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_raw_params()))
    assert train_stage.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert uri in err and "cannot be reached" in err
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()  # training never started


@pytest.fixture
def prepared(tmp_path: Path, monkeypatch):
    """A workspace in tmp_path: 12 trainval + 6 test generated images, prepared tables in data/prepared."""
    monkeypatch.chdir(tmp_path)
    generate_voc(tmp_path / "data" / "extracted", num_trainval=12, num_test=6, image_size=((80, 140), (64, 120)),
                 seed=5, classes=CLASSES, max_objects=2, object_size=(0.25, 0.5), difficult_size=(0.06, 0.1),
                 difficult_fraction=0.1, truncated_fraction=0.1, max_overhang=0.2, max_iou=0.3, colour_jitter=10)
    params = params_from_dict(_raw_params())
    tables = read_tables(params.data, workers=1)
    out = tmp_path / "data" / "prepared"
    out.mkdir()
    tables.images.to_parquet(out / "images.parquet", index=False)
    tables.objects.to_parquet(out / "objects.parquet", index=False)
    return params


def _png_ok(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        img.load()


def test_train_then_evaluate_stage_outputs(prepared, tmp_path: Path):
    params = prepared
    meta = train_stage.run(params, track=False)
    # 12 training images in batches of 4 (drop_last): 3 steps in the one epoch.
    assert meta["steps"] == 3 and meta["epochs"] == 1 and meta["device"] == "cpu"
    assert "mlflow_run_id" not in meta  # not tracked
    assert all(math.isfinite(v) for v in meta["final_metrics"].values())
    assert "val_map_voc07" in meta["final_metrics"]  # validation ran (val_every 1)

    model, model_cfg, classes = load_weights(tmp_path / "models" / "yolov1.pt")
    assert model_cfg == params.model and classes == CLASSES and not model.training
    assert tuple(model(torch.zeros(1, 3, 112, 112)).shape) == (1, 7, 7, 5 * 2 + 3)
    assert json.loads((tmp_path / "models" / "yolov1.json").read_text()) == meta
    assert not (tmp_path / "models" / "checkpoints" / "last.pt").exists()  # finished: no stale resume point

    with (tmp_path / "reports" / "train_loss.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "total", "coord", "obj", "noobj", "class"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3]  # log_every 1
    assert all(math.isfinite(float(v)) for r in rows[1:] for v in r[1:])

    metrics = evaluate_stage.run(params, track=False)
    reports = tmp_path / "reports"
    written = json.loads((reports / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert {"map_voc07", "map_area", "ap_voc07", "ap_area", "images_per_second", "num_images"} <= set(written)
    assert written["num_images"] == 6 and written["images_per_second"] > 0
    assert set(written["ap_voc07"]) == set(CLASSES)
    for value in [written["map_voc07"], written["map_area"], *written["ap_voc07"].values()]:
        assert value is None or 0.0 <= value <= 1.0
    with (reports / "pr.csv").open() as f:  # every class's PR points in one file, for one DVC plot
        header, *pr_rows = csv.reader(f)
    assert header == ["class", "rank", "recall", "precision"]
    assert {r[0] for r in pr_rows} <= set(CLASSES)
    for name in {r[0] for r in pr_rows}:
        ranks = [int(r[1]) for r in pr_rows if r[0] == name]
        assert ranks == list(range(len(ranks)))  # rank order within a class
    _png_ok(reports / "pr_curves.png")
    _png_ok(reports / "predictions.png")
    assert not [p for p in reports.rglob(".*")]  # no temp files left behind

    # Tracking on, but the model was trained untracked: models/yolov1.json names no MLflow run, so evaluation
    # writes its reports and logs nothing (no store is created) instead of failing on the missing run id.
    again = evaluate_stage.run(params, track=True)
    assert again["map_voc07"] == metrics["map_voc07"] and not (tmp_path / "mlflow.db").exists()

    # `yolov1 predict` with the trained weights: one drawn PNG per image and their detections as JSON.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_raw_params()))
    jpegs = sorted((tmp_path / "data" / "extracted" / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:2]
    out = tmp_path / "predictions"
    assert predict_stage.main([*map(str, jpegs), "--model", "models/yolov1.pt", "--params", "params.yaml",
                               "--conf", "0.0", "--out", str(out)]) == 0
    detections = json.loads((out / "detections.json").read_text())
    assert set(detections) == {str(p) for p in jpegs}
    for p in jpegs:
        _png_ok(out / f"{p.stem}.png")
        with Image.open(p) as img:
            assert (detections[str(p)]["width"], detections[str(p)]["height"]) == img.size
    assert predict_stage.main(["missing.jpg", "--model", "models/yolov1.pt"]) == 2  # a message, not a traceback


def _stage(tmp_path: Path, raw: dict, *args: str, timeout: float = 600):
    """`python -m pipelines.train --params <raw> --no-track ...` in tmp_path, as dvc.yaml runs it."""
    import os
    import subprocess
    import sys

    params = tmp_path / "params-stage.yaml"
    params.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "pipelines.train", "--params", str(params), "--no-track", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_stage_starts_two_gloo_ranks_itself(prepared, tmp_path: Path):
    raw = _raw_params()
    # train.gpus 2 on CPU: the stage launches two gloo processes; global batch 4 = 2 ranks x 2 micro-batches of 1,
    # so the 12 images still make 3 optimizer steps.
    raw["train"].update(gpus=2, batch_size=4, grad_accumulation=2, num_workers=1, val_every=1)
    proc = _stage(tmp_path, raw)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((tmp_path / "models" / "yolov1.json").read_text())
    assert meta["processes"] == 2 and meta["steps"] == 3 and meta["epochs"] == 1
    # rank 0 alone wrote the outputs; both ranks ended with identical parameters (checked by the library at the
    # end of training: a divergence fails the run)
    assert "the 2 replicas hold identical parameters" in proc.stderr
    model, _, classes = load_weights(tmp_path / "models" / "yolov1.pt")
    assert classes == CLASSES
    assert [r[0] for r in csv.reader((tmp_path / "reports" / "train_loss.csv").open())] == ["step", "1", "2", "3"]
    assert meta["best"]["metric"] == "map_voc07" and meta["best"]["epoch"] == 1
    best = load_weights(tmp_path / meta["best"]["path"])[0]  # best.pt is a weights file
    for (name, a), b in zip(model.state_dict().items(), best.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # one epoch: the best weights are the final ones


@pytest.mark.slow
def test_train_stage_exits_non_zero_when_the_ranks_fail(prepared, tmp_path: Path):
    raw = _raw_params()
    raw["train"].update(gpus=2, batch_size=6, grad_accumulation=2)  # 6 images over 2 ranks x 2 micro-batches
    proc = _stage(tmp_path, raw)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "train.batch_size: 6 is not divisible by 2 process(es) x train.grad_accumulation 2" in proc.stderr
    assert "training process rank" in proc.stderr and "failed (exit code 2)" in proc.stderr
    assert not (tmp_path / "models" / "yolov1.pt").exists()


def test_the_failure_reported_is_the_cause_not_a_rank_the_agent_stopped():
    """When rank 1 fails (exit 2) the agent SIGTERMs rank 0, and both come back as failures: the stage must
    report rank 1's code whichever order they are listed in (a loaded CI machine once reported rank 0's -15)."""
    from yolov1.distributed import root_failure

    assert root_failure({0: -15, 1: 2}) == (1, 2)
    assert root_failure({1: 2, 0: -15}) == (1, 2)
    assert root_failure({0: -15, 1: -9, 2: -15}) == (1, -9)  # a signal from outside (OOM killer), not the agent
    assert root_failure({0: 3, 1: 2}) == (0, 3)  # two real errors: the lowest rank
    assert root_failure({0: -15, 1: -15}) == (0, -15)
    assert root_failure({1: None}) == (1, None)


def test_train_gpus_must_fit_the_machine(prepared, tmp_path: Path, monkeypatch, capsys):
    from yolov1.distributed import world_size_for

    assert world_size_for("auto", "cpu") == 1 and world_size_for(3, "cpu") == 3
    with pytest.raises(ValueError, match="train.gpus"):
        world_size_for(0, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert world_size_for("auto", "cuda") == 2
    with pytest.raises(ValueError, match="train.gpus: 4 processes asked for but only 2 CUDA device"):
        world_size_for(4, "cuda")
