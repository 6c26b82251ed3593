"""The rehearsal of `make run`: the paper profile (the repository's params.yaml) on stand-ins for the three official
PASCAL VOC archives, through the real chain, on CPU, in a fresh git + DVC workspace.

The archives carry the official names and layout and the 20 VOC class names, a few images each
(`yolov1.synth.write_voc_standins`). params.yaml is copied unchanged into the workspace and changed only through
DVC's own documented override, ``dvc exp run -S key=value`` (Hydra override grammar): the archives' md5/size, one
archive by ``local`` and two over a loopback mirror (127.0.0.1), CPU, a tiny width, one epoch, two training
processes (gloo) started by the train stage itself. Preflight reads the same overrides: they are applied to a copy
by the function behind ``-S`` (`dvc.utils.hydra.apply_overrides`), and the test checks that copy equals the
params.yaml ``dvc exp run`` left in the workspace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from yolov1.config import params_from_dict

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # the chain takes a few minutes on 2 busy cores; this only stops a hung stage


def _overrides(standins, local_dir: Path, port: int) -> list[str]:
    """The -S overrides: archives from the stand-ins, then a CPU smoke run of a tiny net."""
    out = []
    for i, s in enumerate(standins):  # params.yaml lists them in this order: 2007 trainval, 2007 test, 2012
        out += [f"data.archives.{i}.md5='{s.md5}'", f"data.archives.{i}.size={s.size}"]
        if i == 0:  # by `local`, as the README recommends for tarballs one already has
            out += [f"data.archives.{i}.local='{local_dir / s.filename}'", f"data.archives.{i}.mirrors=[]"]
        else:  # over a loopback mirror
            out += [f"data.archives.{i}.mirrors=['http://127.0.0.1:{port}/{s.filename}']"]
    return out + [
        "model.variant=fast", "model.input_size=112", "model.width_multiplier=0.125", "model.head=conv",
        "model.head_hidden=64", "train.device=cpu", "train.gpus=2", "train.epochs=1", "train.batch_size=4",
        "train.num_workers=0", "train.val_every=0", "train.log_every=1", "train.checkpoint_every=1",
        "eval.batch_size=4", "eval.num_pictures=2",
    ]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_make_run_rehearsal_on_official_name_standins(tmp_path, monkeypatch):
    from dvc.utils.hydra import apply_overrides

    from pipelines.demo import serve_folder
    from pipelines.workspace import create_workspace
    from yolov1.synth import write_voc_standins

    standins = write_voc_standins(tmp_path / "archives", num_2007_trainval=6, num_2007_test=6,
                                  num_2012_trainval=6)
    assert [s.filename for s in standins] == ["VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar",
                                              "VOCtrainval_11-May-2012.tar"]
    assert all(s.difficult_objects for s in standins)
    local_dir, mirror_dir = tmp_path / "have", tmp_path / "mirror"
    local_dir.mkdir()
    mirror_dir.mkdir()
    shutil.copy(standins[0].path, local_dir / standins[0].filename)
    for s in standins[1:]:
        shutil.copy(s.path, mirror_dir / s.filename)

    repo_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ws = create_workspace(tmp_path / "ws", repo_params, message="rehearsal: the paper profile, unchanged")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws}/mlflow.db"
    for key in ("YOLOV1_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)

    with serve_folder(mirror_dir, 0) as port:
        overrides = _overrides(standins, local_dir, port)
        preflight_params = tmp_path / "preflight-params.yaml"
        shutil.copy(ws / "params.yaml", preflight_params)
        apply_overrides(preflight_params, overrides)  # what `-S` does to params.yaml
        out = _run([sys.executable, "-m", "pipelines.preflight", "--allow-cpu", "--params", str(preflight_params)],
                   ws, env)
        assert "every archive is available" in out.stdout
        set_params = [arg for o in overrides for arg in ("-S", o)]
        repro = _run([sys.executable, "-m", "dvc", "exp", "run", *set_params], ws, env)
    log = repro.stdout + repro.stderr
    for stage in ("download", "prepare", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in log, log

    # The params the chain ran with are the overrides applied to the unchanged paper profile.
    used = yaml.safe_load((ws / "params.yaml").read_text())
    assert used == yaml.safe_load(preflight_params.read_text())
    params = params_from_dict(used)
    assert (params.train.gpus, params.train.epochs, params.model.width_multiplier) == (2, 1, 0.125)
    assert params.register.min_map == repo_params["register"]["min_map"] > 0  # the floor is the paper profile's

    # DVC: everything up to date, the weights tracked (in dvc.lock and in the cache).
    status = _run([sys.executable, "-m", "dvc", "status"], ws, env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    (weights_out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/yolov1.pt"]
    assert weights_out["md5"] == _md5(ws / "models" / "yolov1.pt")
    assert (ws / ".dvc" / "cache" / "files" / "md5" / weights_out["md5"][:2] / weights_out["md5"][2:]).is_file()
    assert (ws / "data" / "raw").is_dir()  # the `local` route produces the declared output too

    # Data: 2007 and 2012 ids distinct, train and test disjoint, difficult objects out of the targets.
    prepared = ws / "data" / "prepared"
    images = pd.read_parquet(prepared / "images.parquet")
    objects = pd.read_parquet(prepared / "objects.parquet")
    assert images["image_id"].is_unique and len(images) == 18
    assert set(images.loc[images["split"] == "train", "year"]) == {2007, 2012}
    assert set(images.loc[images["split"] == "test", "year"]) == {2007}
    train_ids = set(images.loc[images["split"] == "train", "image_id"])
    assert not train_ids & set(images.loc[images["split"] == "test", "image_id"])
    report = json.loads((prepared / "report.json").read_text())["splits"]["train"]
    train_objects = objects[objects["image_id"].isin(train_ids)]
    difficult = int(train_objects["difficult"].sum())
    assert difficult == standins[0].difficult_objects + standins[2].difficult_objects > 0
    assert report["objects_in_targets"] == len(train_objects) - difficult
    targets = np.load(prepared / "targets_train.npy")  # (n, S, S, 5 + C): channel 4 is obj
    responsible = int(targets[..., 4].sum())
    assert responsible == report["objects_in_targets"] - report["displaced_by_cell_collisions"]

    # Training ran as two processes started by the stage; MLflow holds the params actually used.
    from mlflow.tracking import MlflowClient

    uri = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    meta = json.loads((ws / "models" / "yolov1.json").read_text())
    assert meta.get("processes") == 2, meta
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.params["train.gpus"] == "2" and run.data.params["train.epochs"] == "1"
    assert run.data.params["model.width_multiplier"] == "0.125"
    artifact = Path(client.download_artifacts(run.info.run_id, "params.yaml", str(tmp_path / "dl")))
    assert params_from_dict(yaml.safe_load(artifact.read_text())) == params
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    assert metrics["match_comparison"] == ">=" and run.data.tags["eval.match_comparison"] == ">="
    assert run.data.tags["test_split_hash"] == metrics["test_split_hash"]

    # Register: the one-epoch model is below the paper profile's floor, so it is not champion.
    registration = json.loads((ws / "reports" / "registration.json").read_text())
    assert metrics["map_voc07"] < params.register.min_map
    assert (registration["version"], registration["alias"], registration["promoted"]) == ("1", "challenger", False)
    assert "below the floor" in registration["reason"]
    aliases = client.get_registered_model(params.register.model_name).aliases
    assert "champion" not in aliases

    # The registry's champion scorer, on the real registered weights and this test split, reproduces the
    # evaluate stage's figure (same weights, same data, same rule).
    import mlflow

    from pipelines.register import champion_scorer

    mv = client.get_model_version(params.register.model_name, "1")
    monkeypatch.chdir(ws)  # data.root is relative to the workspace
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    rescored = champion_scorer(params)(mv)
    assert rescored == pytest.approx(metrics["map_voc07"], abs=1e-6)

    # Registering the same run again adds no version.
    again = _run([sys.executable, "-m", "pipelines.register"], ws, env)
    assert json.loads(again.stdout)["already_registered"] is True
    assert [str(v.version) for v in client.search_model_versions(f"name='{params.register.model_name}'")] == ["1"]
