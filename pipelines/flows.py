"""The Prefect flow: the five DVC stages chained as tasks.

How the flow and DVC relate: each task runs ``dvc repro --single-item <stage>`` in the workspace, so a flow run
executes exactly the stage code that dvc.yaml names, updates dvc.lock and the DVC cache, and skips stages whose
code, params and inputs did not change (``dvc repro`` and the flow can be used interchangeably). The download
task retries with exponential backoff (mirrors go down); every task streams DVC's output to the Prefect log;
the flow returns a summary: mAP, the registered version and the alias it got.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from pipelines.tracking import FLOW_RUN_ENV

STAGES = ("download", "prepare", "train", "evaluate", "register")


def _stage_env() -> dict[str, str]:
    from prefect.runtime import flow_run

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # dvc's `python` = ours
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if flow_run.id:
        env[FLOW_RUN_ENV] = str(flow_run.id)
    return env


def reproduce(stage: str, workspace: str, force: bool = False) -> dict:
    """Run one DVC stage in `workspace`; returns whether it ran or was up to date. Raises on failure."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    logger.info("$ %s  (in %s)", " ".join(cmd[2:]), workspace)
    proc = subprocess.Popen(cmd, cwd=workspace, env=_stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            logger.info("[%s] %s", stage, line)
    if proc.wait() != 0:
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"stage {stage!r} failed (dvc repro exit {proc.returncode}):\n{tail}")
    skipped = any("didn't change, skipping" in line for line in lines)
    return {"stage": stage, "ran": not skipped}


@task(name="download", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5)
def download(workspace: str) -> dict:
    return reproduce("download", workspace)


@task(name="prepare")
def prepare(workspace: str) -> dict:
    return reproduce("prepare", workspace)


@task(name="train")
def train(workspace: str, force: bool) -> dict:
    return reproduce("train", workspace, force=force)


@task(name="evaluate")
def evaluate(workspace: str) -> dict:
    return reproduce("evaluate", workspace)


@task(name="register")
def register(workspace: str) -> dict:
    return reproduce("register", workspace)


@flow(name="yolov1-training-pipeline", log_prints=True, persist_result=True)  # summary readable via the API
def training_pipeline(workspace: str = ".", retrain: bool = False) -> dict:
    """download -> prepare -> train -> evaluate -> register in `workspace` (a DVC repo).

    ``retrain=True`` forces the train stage even when nothing changed (scheduled retraining on fresh data
    reruns by itself, since new data changes the prepare outputs).
    """
    workspace = str(Path(workspace).resolve())
    stages = [download(workspace), prepare(workspace), train(workspace, retrain), evaluate(workspace),
              register(workspace)]
    summary = {"workspace": workspace, "stages": {s["stage"]: ("ran" if s["ran"] else "up to date") for s in stages}}
    metrics_path = Path(workspace) / "reports" / "metrics.json"
    registration_path = Path(workspace) / "reports" / "registration.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        summary["map_voc07"] = metrics.get("map_voc07")
        summary["map_area"] = metrics.get("map_area")
    if registration_path.is_file():
        reg = json.loads(registration_path.read_text())
        summary.update({k: reg.get(k) for k in ("model_name", "version", "alias", "promoted", "reason")})
    get_run_logger().info("pipeline summary: %s", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 flow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=".", help="the DVC repo to run in (default: the current folder)")
    parser.add_argument("--retrain", action="store_true", help="force the train stage to run")
    args = parser.parse_args(argv)
    summary = training_pipeline(workspace=args.workspace, retrain=args.retrain)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
