"""The whole chain in a real workspace: `dvc repro` runs download -> prepare -> train -> evaluate -> register.

One tiny workspace per session (tests/pipeline_fixtures.py). The tests run in file order: the repro-is-a-no-op and
status checks come before the test that edits params and reruns, which is last.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.pipeline_fixtures import (
    STAGES,
    Workspace,
    dvc,
    git_commit,
    mlflow_client,
    run_cmd,
    shared_workspace,
    stages_ran,
    stages_skipped,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    return shared_workspace(tmp_path_factory)


def _registration(ws: Workspace) -> dict:
    return json.loads((ws.path / "reports" / "registration.json").read_text())


def _lock(ws: Workspace) -> dict:
    return yaml.safe_load((ws.path / "dvc.lock").read_text())


def _aliases(client, name: str) -> dict[str, str]:
    # The sqlite store hands versions back as ints here and as strings elsewhere.
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_first_repro_runs_every_stage_and_writes_its_outputs(ws):
    assert stages_ran(ws.first_repro) == set(STAGES), ws.first_repro
    assert set(_lock(ws)["stages"]) == set(STAGES)
    prepared = ws.path / "data" / "prepared"
    assert {p.name for p in prepared.glob("*.parquet")} == {"images.parquet", "objects.parquet"}
    assert (ws.path / "data" / "extracted" / "VOCdevkit" / "VOC2007" / "JPEGImages").is_dir()
    assert (ws.path / "models" / "yolov1.pt").stat().st_size > 0
    metrics = json.loads((ws.path / "reports" / "metrics.json").read_text())
    assert 0.0 <= metrics["map_voc07"] <= 1.0
    meta = json.loads((ws.path / "models" / "yolov1.json").read_text())
    assert meta["epochs"] == 2 and meta["steps"] > 0
    # train_loss.csv: one row per logged step, the columns dvc.yaml's plot names.
    header, *rows = (ws.path / "reports" / "train_loss.csv").read_text().splitlines()
    assert header == "step,total,coord,obj,noobj,class" and rows


def test_first_model_is_version_1_and_champion(ws):
    reg = _registration(ws)
    assert (reg["model_name"], reg["version"], reg["alias"], reg["promoted"]) == (ws.model_name, "1", "champion", True)
    assert "no champion yet" in reg["reason"]
    client = mlflow_client(ws)
    assert _aliases(client, ws.model_name) == {"champion": "1"}
    mv = client.get_model_version_by_alias(ws.model_name, "champion")
    assert str(mv.version) == "1"
    metrics = json.loads((ws.path / "reports" / "metrics.json").read_text())
    assert float(mv.tags["map_voc07"]) == pytest.approx(metrics["map_voc07"], abs=1e-6)


def test_training_run_has_lineage_system_tags_params_and_loss(ws):
    client = mlflow_client(ws)
    meta = json.loads((ws.path / "models" / "yolov1.json").read_text())
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    head = run_cmd(ws, "git", "rev-parse", "HEAD").stdout.strip()
    assert tags["git_commit"] == head
    # dvc.lock and DVC's .gitignore files are new (untracked) during the first run: the tracked tree is clean.
    assert tags["git_dirty"] == "false"
    prepare_outs = {o["path"]: o["md5"] for o in _lock(ws)["stages"]["prepare"]["outs"]}
    assert tags["dvc_data_hash"] == prepare_outs["data/prepared"]
    for key in ("device", "torch_version", "torchvision_version", "python_version"):
        assert tags[key], key
    assert tags["device"] == "cpu"
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.variant"] == "fast"
    assert json.loads(params["data.classes"])[0] == "aeroplane"
    assert not any(k.startswith("data.archives") for k in params)  # mirror URLs are no model param
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert losses and all(m.value == m.value for m in losses)  # logged and finite (NaN != NaN)
    metrics = json.loads((ws.path / "reports" / "metrics.json").read_text())
    assert run.data.metrics["test/map_voc07"] == pytest.approx(metrics["map_voc07"])  # evaluate logs to the run
    # The registered version points back at this run.
    assert client.get_model_version(ws.model_name, "1").run_id == run.info.run_id

    # What the MLflow UI shows: a run name that says what ran, the training data, system metrics, a model card.
    from pipelines.params import load_params
    from pipelines.tracking import params_digest

    assert run.info.run_name == f"train-{head[:7]}-p{params_digest(load_params(ws.path / 'params.yaml'))}"
    [data] = run.inputs.dataset_inputs
    assert data.dataset.digest == prepare_outs["data/prepared"][:36]
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "training"
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
    card = client.get_model_version(ws.model_name, "1").description
    assert "**champion**" in card and "no champion (first model)" in card and "| aeroplane |" in card


def test_second_repro_runs_nothing(ws):
    out = dvc(ws, "repro")
    text = out.stdout + out.stderr
    assert stages_ran(text) == set(), text
    assert stages_skipped(text) == set(STAGES), text
    assert "Data and pipelines are up to date" in text
    status = dvc(ws, "status", "--json")
    assert json.loads(status.stdout) == {}


def test_metrics_and_plots_show(ws, tmp_path):
    shown = json.loads(dvc(ws, "metrics", "show", "--json").stdout)
    # {"": {"data": {"reports/metrics.json": {"data": {"map_voc07": ...}}}}}
    metrics = shown[""]["data"]["reports/metrics.json"]["data"]
    assert "map_voc07" in metrics and "map_area" in metrics
    out_dir = tmp_path / "plots"
    dvc(ws, "plots", "show", "-o", str(out_dir))
    html = (out_dir / "index.html").read_text()
    assert "train_loss.csv" in html and "pr_curves.png" in html


def test_editing_the_loss_marks_train_changed_not_prepare(ws):
    loss = ws.path / "yolov1" / "loss.py"
    original = loss.read_bytes()
    try:
        loss.write_bytes(original + b"# an edit only the train stage depends on\n")
        status = json.loads(dvc(ws, "status", "--json").stdout)
        # Only train lists loss.py; evaluate and register change only once train's outputs do.
        assert set(status) == {"train"}, status
        assert {"changed deps": {"yolov1/loss.py": "modified"}} in status["train"]
    finally:
        loss.write_bytes(original)
    assert json.loads(dvc(ws, "status", "--json").stdout) == {}


def test_train_param_change_reruns_train_evaluate_register_and_registers_a_challenger(ws):
    params_path = ws.path / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # A learning rate too small to move the weights: the new model cannot beat the first one by min_improvement.
    params["train"]["lr"] = 1.0e-9
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    git_commit(ws, "train with a learning rate that cannot learn")
    head = run_cmd(ws, "git", "rev-parse", "HEAD").stdout.strip()

    out = dvc(ws, "repro")
    text = out.stdout + out.stderr
    assert stages_ran(text) == {"train", "evaluate", "register"}, text
    assert stages_skipped(text) == {"download", "prepare"}, text

    reg = _registration(ws)
    assert (reg["version"], reg["alias"], reg["promoted"]) == ("2", "challenger", False), reg
    assert reg["previous_champion"]["version"] == "1"
    first_map = reg["previous_champion"]["map_voc07"]
    gain = round(reg["map_voc07"] - first_map, 6)
    min_improvement = params["register"]["min_improvement"]
    assert gain < min_improvement
    assert f"gain {gain:+.4f} < {min_improvement}" in reg["reason"]

    client = mlflow_client(ws)
    assert _aliases(client, ws.model_name) == {"champion": "1", "challenger": "2"}
    v2 = client.get_model_version(ws.model_name, "2")
    assert v2.tags["promotion"] == reg["reason"]
    run = client.get_run(v2.run_id)
    assert run.data.params["train.lr"] == "1e-09"
    assert run.data.tags["git_commit"] == head
    assert dvc(ws, "status", "--json").stdout.strip() == "{}"
