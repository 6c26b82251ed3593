"""Scheduled retraining: the real `training_pipeline` deployment on a real local Prefect API, run by a Runner.

The workspace is a real DVC repo whose five stages (same names as the project's) only write small files, so the
real flow code runs `dvc repro --single-item <stage>` five times in seconds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.flows import STAGES
from yolov1.config import params_from_dict

REGISTRATION = {"model_name": "yolov1-voc", "version": "1", "alias": "champion", "promoted": True,
                "reason": "no champion yet: the first model becomes champion"}


def _stage(cmd: str, deps: list[str], outs: list[str], *, uncached: tuple[str, ...] = ()) -> dict:
    stage: dict = {"cmd": cmd}
    if deps:
        stage["deps"] = deps
    stage["outs"] = [{out: {"cache": False}} if out in uncached else out for out in outs]
    return stage


@pytest.fixture
def tiny_workspace(tmp_path, repo_params_dict) -> Path:
    """A DVC repo (no git) with the pipeline's five stage names, each writing a small file, and the project's
    params.yaml (its tracking section is what the flow checks before training)."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(repo_params_dict, sort_keys=False))
    metrics = json.dumps({"map_voc07": 0.5, "map_area": 0.25})
    stages = {
        "download": _stage("mkdir -p data && echo archive > data/raw.txt", [], ["data/raw.txt"]),
        "prepare": _stage("cat data/raw.txt > data/prepared.txt", ["data/raw.txt"], ["data/prepared.txt"]),
        "train": _stage("mkdir -p models && cat data/prepared.txt > models/weights.txt", ["data/prepared.txt"],
                        ["models/weights.txt"]),
        "evaluate": _stage(f"mkdir -p reports && echo '{metrics}' > reports/metrics.json", ["models/weights.txt"],
                           ["reports/metrics.json"], uncached=("reports/metrics.json",)),
        "register": _stage(f"echo '{json.dumps(REGISTRATION)}' > reports/registration.json",
                           ["reports/metrics.json"], ["reports/registration.json"],
                           uncached=("reports/registration.json",)),
    }
    assert tuple(stages) == STAGES
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    return ws


def test_build_deployment_carries_the_schedule_and_workspace(tmp_path, repo_params_dict):
    from prefect.client.schemas.schedules import CronSchedule

    from pipelines.serve import build_deployment

    raw = dict(repo_params_dict, schedule={"deployment": "nightly", "cron": "30 1 * * *", "timezone": "Europe/Paris"})
    deployment = build_deployment(params_from_dict(raw), tmp_path / "ws" / ".." / "ws")
    assert deployment.name == "nightly"
    assert deployment.entrypoint == "pipelines.flows.training_pipeline"  # importable from any cwd
    assert deployment.parameters == {"workspace": str(tmp_path / "ws")}  # absolute and normalised
    [schedule] = deployment.schedules
    assert isinstance(schedule.schedule, CronSchedule)
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 1 * * *", "Europe/Paris")


def test_served_deployment_runs_the_five_stages(prefect_api, tiny_workspace, tmp_path, repo_params_dict):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    from pipelines.flows import training_pipeline
    from pipelines.serve import build_deployment

    params = params_from_dict(repo_params_dict)
    deployment = build_deployment(params, tiny_workspace)
    # Persisted results let this process read the flow's return value from the runner's subprocess.
    with temporary_settings({PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_LOCAL_STORAGE_PATH: tmp_path / "res"}):
        runner = Runner(name="test-runner", pause_on_shutdown=False)
        deployment_id = runner.add_deployment(deployment)  # applies it to the API
        flow_run = run_deployment(f"{training_pipeline.name}/{params.schedule.deployment}", timeout=0)
        assert flow_run.state.is_scheduled()
        # One poll: picks up the scheduled run, executes it in a subprocess and returns when it has finished.
        asyncio.run(runner.start(run_once=True))

        with get_client(sync_client=True) as client:
            final = client.read_flow_run(flow_run.id)
            stored = client.read_deployment(deployment_id)
        assert final.state.is_completed(), final.state
        summary = final.state.result()

    assert summary["workspace"] == str(tiny_workspace)
    assert summary["stages"] == dict.fromkeys(STAGES, "ran")
    assert (summary["map_voc07"], summary["alias"], summary["version"]) == (0.5, "champion", "1")
    assert (tiny_workspace / "models" / "weights.txt").read_text() == "archive\n"
    assert (tiny_workspace / "dvc.lock").is_file()  # the stages ran through DVC, not around it

    assert stored.name == params.schedule.deployment
    assert stored.parameters == {"workspace": str(tiny_workspace)}
    [schedule] = stored.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (params.schedule.cron, params.schedule.timezone)
    assert schedule.active


def test_serve_main_rejects_a_folder_without_dvc_yaml(tmp_path, capsys):
    from pipelines.serve import main

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert main(["--params", str(params), "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err and "dvc.yaml" in err


def test_next_run_time_of_a_weekly_cron():
    import datetime as dt

    from pipelines.serve import next_run_times

    wednesday_noon = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    # "0 3 * * 0" = Sundays 03:00: the Sunday after Wednesday 25 November 2026 is the 29th.
    [sunday] = next_run_times("0 3 * * 0", "UTC", after=wednesday_noon)
    assert sunday == dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC)
    # Every minute, in Paris (UTC+1 in November): strictly after the start, two in a row a minute apart.
    first, second = next_run_times("* * * * *", "Europe/Paris", count=2, after=wednesday_noon)
    assert first == wednesday_noon + dt.timedelta(minutes=1) and second - first == dt.timedelta(minutes=1)
    assert first.utcoffset() == dt.timedelta(hours=1)


def test_serve_main_reads_the_workspace_params_and_prints_the_schedule(tiny_workspace, repo_params_dict, tmp_path,
                                                                       monkeypatch, capsys):
    """The served schedule is the workspace's own, not ./params.yaml's; nothing is served (prefect.serve stubbed)."""
    import prefect

    from pipelines.serve import main

    ws_params = dict(repo_params_dict, schedule={"deployment": "every-minute", "cron": "* * * * *", "timezone": "UTC"})
    (tiny_workspace / "params.yaml").write_text(yaml.safe_dump(ws_params, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"  # a cwd whose params.yaml has another (weekly) cron
    elsewhere.mkdir()
    (elsewhere / "params.yaml").write_text(yaml.safe_dump(repo_params_dict, sort_keys=False))
    monkeypatch.chdir(elsewhere)
    served = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments, **kw: served.extend(deployments))

    assert main(["--workspace", str(tiny_workspace)]) == 0

    [deployment] = served
    assert deployment.name == "every-minute"
    assert [s.schedule.cron for s in deployment.schedules] == ["* * * * *"]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"deployment every-minute: cron '* * * * *' (UTC) from {tiny_workspace / 'params.yaml'}"
    assert out[1].startswith("next run: ") and out[1].endswith("+00:00")

    # --params still overrides the workspace's file.
    served.clear()
    assert main(["--workspace", str(tiny_workspace), "--params", str(elsewhere / "params.yaml")]) == 0
    assert [s.schedule.cron for s in served[0].schedules] == [repo_params_dict["schedule"]["cron"]]


def test_serve_main_names_a_missing_workspace_params_file(tiny_workspace, capsys):
    from pipelines.serve import main

    (tiny_workspace / "params.yaml").unlink()
    assert main(["--workspace", str(tiny_workspace)]) == 2  # the DVC repo has no params.yaml
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tiny_workspace / "params.yaml") in err
