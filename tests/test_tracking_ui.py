"""What an MLflow user sees: run names that say what ran, the training data as a dataset input, model cards on
registered versions, and a pyfunc that logs without warnings. MLflow on a SQLite file in tmp_path."""

from __future__ import annotations

import subprocess
import warnings

import pandas as pd
import pytest

from pipelines.tracking import describe_version, log_training_data, model_card, params_digest, run_name
from yolov1.config import params_from_dict

METRICS = {"map_voc07": 0.91, "map_area": 0.95, "ap_voc07": {"cat": 1.0, "dog": 0.82},
           "ap_area": {"cat": 1.0, "dog": 0.9}}
SUMMARY = {"alias": "champion", "reason": "mAP 0.9100 beats the champion's 0.9000 by +0.0100 >= 0.005",
           "previous_champion": {"version": "3", "map_voc07": 0.9}}


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_run_name_has_stage_commit_dirty_flag_and_params_digest(tmp_path, repo_params_dict):
    params = params_from_dict(repo_params_dict)
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "a.txt").write_text("a")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert run_name("train", params, cwd=tmp_path) == f"train-{head[:7]}-p{params_digest(params)}"
    (tmp_path / "a.txt").write_text("edited")
    assert run_name("train", params, cwd=tmp_path) == f"train-{head[:7]}+dirty-p{params_digest(params)}"


def test_params_digest_ignores_data_sources_but_not_training_params(repo_params_dict):
    import copy

    base = params_digest(params_from_dict(repo_params_dict))
    moved = copy.deepcopy(repo_params_dict)
    moved["data"]["archives"][0]["mirrors"] = ["http://127.0.0.1:9999/elsewhere.tar"]
    assert params_digest(params_from_dict(moved)) == base  # a mirror is no property of the model
    changed = copy.deepcopy(repo_params_dict)
    changed["train"]["lr"] = changed["train"]["lr"] * 2
    assert params_digest(params_from_dict(changed)) != base
    assert len(base) == 8 and int(base, 16) >= 0


def test_model_card_names_the_reason_champion_data_and_per_class_ap():
    card = model_card(SUMMARY, METRICS, "abc123.dir")
    assert card.startswith("**champion**: mAP 0.9100 beats")
    assert "compared with: champion v3 (VOC07 mAP 0.9000)" in card
    assert "DVC `data/prepared` md5 `abc123.dir`" in card
    assert "| dog | 0.8200 | 0.9000 |" in card and "test VOC07 mAP 0.9100, area mAP 0.9500" in card
    first = model_card({"alias": "champion", "reason": "no champion yet", "previous_champion": {"version": None}},
                       {"ap_voc07": {"cat": None}}, None)
    assert "no champion (first model)" in first and "| cat | n/a | n/a |" in first and "md5 `unknown`" in first


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def test_training_data_is_a_dataset_input_with_the_dvc_hash(mlflow_store, tmp_path, recwarn):
    import mlflow
    import yaml

    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "split": ["train", "train", "test"],
                  "width": [10, 20, 30]}).to_parquet(prepared / "images.parquet")
    lock = {"stages": {"prepare": {"outs": [{"path": "data/prepared", "md5": "0123456789abcdef.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    with mlflow.start_run() as run:
        log_training_data(prepared.relative_to(tmp_path))
    messages = " ".join(str(w.message) for w in recwarn)
    assert "integer column" not in messages and "interpreted in multiple ways" not in messages
    [inp] = mlflow.MlflowClient(mlflow_store).get_run(run.info.run_id).inputs.dataset_inputs
    assert inp.dataset.digest == "0123456789abcdef.dir"
    assert inp.dataset.name == "data/prepared@train"
    assert str(prepared) in inp.dataset.source
    tags = {t.key: t.value for t in inp.tags}
    assert tags["mlflow.data.context"] == "training"
    assert (tags["dvc_path"], tags["dvc_md5"], tags["split"]) == ("data/prepared", "0123456789abcdef.dir", "train")
    assert tags["images"] == "2"  # the train rows only


def test_describe_version_sets_the_model_card(mlflow_store):
    import mlflow

    client = mlflow.MlflowClient(mlflow_store)
    client.create_registered_model("m")
    with mlflow.start_run() as run:
        mlflow.log_text("x", "model/x.txt")
    version = client.create_model_version("m", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version
    card = model_card(SUMMARY, METRICS, "abc")
    describe_version(client, "m", str(version), card)
    assert client.get_model_version("m", str(version)).description == card
    assert "model card" in client.get_registered_model("m").description


def test_pyfunc_logs_without_type_hint_or_integer_column_warnings(mlflow_store, tmp_path, capfd, caplog):
    import mlflow
    import numpy as np
    from PIL import Image

    from pipelines.pyfunc import log_pyfunc
    from yolov1.checkpoint import save_weights
    from yolov1.config import ModelConfig
    from yolov1.model import build_model

    cfg = ModelConfig(variant="fast", input_size=64, grid_size=2, boxes_per_cell=2, num_classes=2, batch_norm=True,
                      width_multiplier=0.125, head="conv", head_hidden=16, dropout=0.0)
    save_weights(tmp_path / "w.pt", build_model(cfg), cfg, ["cat", "dog"])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.jpg")
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run():
        warnings.simplefilter("always")
        info = log_pyfunc(tmp_path / "w.pt", example_image=tmp_path / "x.jpg", score_threshold=0.3,
                          nms_iou_threshold=0.5, max_detections=10)
    out, err = capfd.readouterr()
    text = out + err + caplog.text + "\n".join(str(w.message) for w in caught)
    assert "Add type hints" not in text and "integer column" not in text
    outputs = {c.name: c.type.name for c in info.signature.outputs.inputs}
    assert outputs == {"image": "long", "label": "string", "score": "double", "xmin": "double", "ymin": "double",
                       "xmax": "double", "ymax": "double"}
