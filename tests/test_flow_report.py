"""What a Prefect user sees of a flow run: clean log records with the right levels, and two artifacts.

The real `training_pipeline` runs on the session's Prefect test server against a DVC repo whose five stages (the
pipeline's names) only write small JSON files, so the whole flow takes seconds.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.flows import STAGES, ap_table, clean_line, line_level, report_markdown

METRICS = {"map_voc07": 0.75, "map_area": 0.8, "ap_voc07": {"cat": 1.0, "dog": 0.5},
           "ap_area": {"cat": 1.0, "dog": 0.6}, "images_per_second": 10.0, "num_images": 4}
REGISTRATION = {"model_name": "yolov1-demo", "version": "2", "alias": "challenger", "promoted": False,
                "reason": "mAP 0.7500 vs 0.7600 (champion): gain -0.0100 < 0.005",  # no quote: echoed by sh
                "previous_champion": {"version": "1", "map_voc07": 0.76}}
META = {"mlflow_run_id": "0123456789abcdef", "mlflow_experiment_id": "7"}
# A stage that prints like the real ones: a tqdm bar redrawn with carriage returns, an MLflow-style coloured
# warning, a Python warning.
NOISY = ("printf 'load:   0%%|   | 0/3\\rload:  67%%|## | 2/3\\rload: 100%%|###| 3/3\\n'; "
         "printf '\\033[33mAdd type hints to the predict method\\033[0m WARNING\\n'; "
         "printf 'x.py:1: UserWarning: something odd\\n'")


def _stage(cmd: str, deps: list[str], outs: list[str]) -> dict:
    stage: dict = {"cmd": cmd}
    if deps:
        stage["deps"] = deps
    stage["outs"] = [{out: {"cache": False}} for out in outs]
    return stage


def _write(path: str, payload: dict) -> str:
    return f"mkdir -p {Path(path).parent} && echo '{json.dumps(payload)}' > {path}"


@pytest.fixture
def workspace(tmp_path, repo_params_dict) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(repo_params_dict, sort_keys=False))  # sqlite store in ws
    stages = {
        "download": _stage("mkdir -p data && echo a > data/raw.txt", [], ["data/raw.txt"]),
        "prepare": _stage(f"{NOISY} && cp data/raw.txt data/prepared.txt", ["data/raw.txt"], ["data/prepared.txt"]),
        "train": _stage(_write("models/yolov1.json", META), ["data/prepared.txt"], ["models/yolov1.json"]),
        "evaluate": _stage(_write("reports/metrics.json", METRICS), ["models/yolov1.json"], ["reports/metrics.json"]),
        "register": _stage(_write("reports/registration.json", REGISTRATION), ["reports/metrics.json"],
                           ["reports/registration.json"]),
    }
    assert tuple(stages) == STAGES
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    return ws


def test_clean_line_keeps_the_final_state_of_a_progress_bar_without_colour():
    assert clean_line(b"a:  0%|  | 0/2\ra: 100%|##| 2/2\r\n") == "a: 100%|##| 2/2"
    assert clean_line(b"\x1b[33mAdd type hints\x1b[0m  \n") == "Add type hints"
    assert clean_line(b"\r\r\n") == "" and clean_line(b"caf\xc3\xa9 \xff\n") == "caf\u00e9 \ufffd"


@pytest.mark.parametrize(("line", "level"), [
    ("/x/y.py:3: UserWarning: hi", logging.WARNING),
    ("WARNING yolov1.download: mirror 1 failed", logging.WARNING),
    ("2026/11/28 23:51:27 INFO mlflow.store.db.utils: Updating database tables", logging.INFO),
    ("ERROR: failed to reproduce 'train'", logging.ERROR),
    ("epoch 3/16 (step 186): loss 1.2, lr 0.002, 210.0 images/s", logging.INFO),
    ("warnings about nothing", logging.INFO),
])
def test_line_level(line, level):
    assert line_level(line) == level


def test_report_markdown_has_stages_ap_table_decision_and_links():
    summary = {"workspace": "/w", "stages": {"train": "ran", "prepare": "up to date"}, "map_voc07": 0.75,
               "map_area": 0.8}
    rows = ap_table(METRICS)
    assert rows == [{"class": "cat", "ap_voc07": 1.0, "ap_area": 1.0}, {"class": "dog", "ap_voc07": 0.5, "ap_area": 0.6}]
    local = report_markdown(summary, rows, REGISTRATION, META, "sqlite:///mlflow.db")
    assert "| train | ran |" in local and "| prepare | up to date |" in local
    assert "| dog | 0.5000 | 0.6000 |" in local and "0.7500 (VOC07 11-point), 0.8000 (area)" in local
    assert "version 2 -> **challenger**, compared with champion v1 (mAP 0.7600)" in local
    assert "`models:/yolov1-demo/2`" in local and "mlflow ui --backend-store-uri sqlite:///mlflow.db" in local
    served = report_markdown(summary, rows, REGISTRATION, META, "http://127.0.0.1:5000")
    assert "(http://127.0.0.1:5000/#/experiments/7/runs/0123456789abcdef)" in served
    assert "(http://127.0.0.1:5000/#/models/yolov1-demo/versions/2)" in served


def test_flow_run_publishes_artifacts_and_clean_logs(prefect_api, workspace, monkeypatch, repo_params_dict):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    from pipelines.flows import AP_TABLE_KEY, REPORT_KEY, training_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    state = training_pipeline(workspace=str(workspace), return_state=True)
    assert state.is_completed(), state
    flow_run_id = state.state_details.flow_run_id
    APILogWorker.drain_all(timeout=30)  # logs are sent in batches by a background worker

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    by_key = {a.key: a for a in artifacts if a.key}  # keyless ones: Prefect's own persisted-result records
    assert set(by_key) == {REPORT_KEY, AP_TABLE_KEY}
    report = by_key[REPORT_KEY].data
    assert "| train | ran |" in report and "| cat | 1.0000 | 1.0000 |" in report
    assert f"tracking store: `{repo_params_dict['tracking']['uri']}`" in report
    assert "`models:/yolov1-demo/2`" in report
    table = json.loads(by_key[AP_TABLE_KEY].data)
    assert [row["class"] for row in table] == ["cat", "dog"] and table[1]["ap_area"] == 0.6

    prepare = [(r.level, r.message) for r in logs  # the stage's output, not DVC's echo of its command ("> ...")
               if r.message.startswith("[prepare] ") and not r.message.startswith("[prepare] > ")]
    bars = [m for _, m in prepare if "load:" in m]
    assert bars == ["[prepare] load: 100%|###| 3/3"]  # one record, the bar's final state
    assert not any("\x1b" in m for _, m in prepare)
    levels = {m: level for level, m in prepare}
    assert levels["[prepare] Add type hints to the predict method WARNING"] == logging.WARNING
    assert levels["[prepare] x.py:1: UserWarning: something odd"] == logging.WARNING
