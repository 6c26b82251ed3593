"""The Prefect flow: the five DVC stages chained as tasks.

How the flow and DVC relate: each task runs ``dvc repro --single-item <stage>`` in the workspace, so a flow run
executes exactly the stage code that dvc.yaml names, updates dvc.lock and the DVC cache, and skips stages whose
code, params and inputs did not change (``dvc repro`` and the flow can be used interchangeably). The download
task retries with exponential backoff (mirrors go down); every task streams DVC's output to the Prefect log,
one record per line (a progress bar's carriage-return redraws collapse to their final state, ANSI colours are
stripped, and warnings and errors keep their level); the flow returns a summary (mAP, the registered version and
the alias it got) and publishes it as two Prefect artifacts: a markdown report and a table of per-class AP.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

# Prefect reads its settings when it is imported. Its temporary API server gets 20 s to start by default, which
# a loaded 2-core machine missed (`make demo` failed before any stage); give it STARTUP_TIMEOUT_S unless set.
STARTUP_TIMEOUT_S = 180
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(STARTUP_TIMEOUT_S))

from prefect import flow, get_run_logger, task  # noqa: E402 (after the setting above)
from prefect.tasks import exponential_backoff  # noqa: E402

from pipelines.download import EXIT_NETWORK  # noqa: E402
from pipelines.tracking import FLOW_RUN_ENV  # noqa: E402
from yolov1.redact import redact  # noqa: E402

STAGES = ("download", "prepare", "train", "evaluate", "register")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Python warnings ("file.py:3: UserWarning: ..."), logging records and DVC's "WARNING:" / "ERROR:" prefixes.
_WARNING = re.compile(r"\bWARN(ING)?\b|\b\w*Warning: ")
_ERROR = re.compile(r"\b(ERROR|CRITICAL)\b|^Traceback ")


def clean_line(raw: bytes) -> str:
    """One line of a stage's output as it should read in a log: the last carriage-return segment (what a
    terminal would show after a progress bar redrew itself), without ANSI escape codes or trailing space."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    segments = [seg for seg in text.split("\r") if seg.strip()]
    return _ANSI.sub("", segments[-1]).rstrip() if segments else ""


def line_level(line: str) -> int:
    """The logging level a stage's output line is forwarded at."""
    if _ERROR.search(line):
        return logging.ERROR
    if _WARNING.search(line):
        return logging.WARNING
    return logging.INFO


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
    # Bytes, not text mode: text mode's universal newlines would turn every progress-bar redraw ("\r") into a
    # log record of its own.
    proc = subprocess.Popen(cmd, cwd=workspace, env=_stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = redact(clean_line(raw))  # a stage may echo a URL with credentials: never into Prefect's logs
        if line:
            lines.append(line)
            logger.log(line_level(line), "[%s] %s", stage, line)
    if proc.wait() != 0:
        tail = "\n".join(lines[-15:])  # already redacted, line by line
        transient = any(f"exited with {EXIT_NETWORK}" in line for line in lines)  # DVC names the stage's exit code
        error = NetworkStageError if transient else StageError
        raise error(f"stage {stage!r} failed (dvc repro exit {proc.returncode}):\n{tail}")
    skipped = any("didn't change, skipping" in line for line in lines)
    return {"stage": stage, "ran": not skipped}


class StageError(RuntimeError):
    """A stage failed for a reason that another try will meet again (bad params, md5, a bug)."""


class NetworkStageError(StageError):
    """A stage failed because every source was unreachable (its exit code was `EXIT_NETWORK`): worth a retry."""


def _network_failure(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's retry_condition_fn signature)
    """Retry the download only after a network failure, never after a deterministic one (e.g. a config error)."""
    try:
        err = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read is no reason to retry
        return False
    return isinstance(err, NetworkStageError)


@task(name="download", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
      retry_condition_fn=_network_failure)
def download(workspace: str) -> dict:
    return reproduce("download", workspace)


@task(name="prepare")
def prepare(workspace: str) -> dict:
    return reproduce("prepare", workspace)


def check_tracking(workspace: str) -> None:
    """Raise `TrackingUnavailable` unless the workspace's tracking store answers.

    Run before ``dvc repro train``: DVC deletes the stage's outputs before the stage's own check runs, so a
    retrain against a dead server would otherwise leave no model (dvc.yaml also marks them ``persist``).
    """
    from pipelines.params import load_params
    from pipelines.tracking import check_reachable, tracking_uri

    uri = tracking_uri(load_params(Path(workspace) / "params.yaml").tracking)  # moves URI credentials to env
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        uri = "sqlite:///" + str(Path(workspace) / uri.removeprefix("sqlite:///"))  # the stage runs in workspace
    check_reachable(uri)


@task(name="train")
def train(workspace: str, force: bool) -> dict:
    check_tracking(workspace)
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
    publish_report(summary, Path(workspace))
    return summary


REPORT_KEY = "yolov1-pipeline-report"
AP_TABLE_KEY = "yolov1-per-class-ap"


def publish_report(summary: dict, workspace: Path) -> None:
    """Two artifacts on the current flow run: the markdown report and the per-class AP table (keys above, so the
    Artifacts page keeps one versioned history of each across runs)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    metrics = _read_json(workspace / "reports" / "metrics.json")
    registration = _read_json(workspace / "reports" / "registration.json")
    meta = _read_json(workspace / "models" / "yolov1.json")
    rows = ap_table(metrics)
    create_markdown_artifact(report_markdown(summary, rows, registration, meta, _tracking_uri(workspace)),
                             key=REPORT_KEY, description="Stages, test mAP, registration decision, links")
    if rows:
        create_table_artifact(rows, key=AP_TABLE_KEY, description="Test-set AP per class (VOC07 11-point, area)")


def ap_table(metrics: dict) -> list[dict]:
    """metrics.json's per-class AP as table rows {class, ap_voc07, ap_area} (None where a class has no truth)."""
    ap07, area = metrics.get("ap_voc07") or {}, metrics.get("ap_area") or {}
    return [{"class": name, "ap_voc07": ap07.get(name), "ap_area": area.get(name)} for name in ap07]


def report_markdown(summary: dict, rows: list[dict], registration: dict, meta: dict, tracking_uri: str) -> str:
    """The flow run's report: stages ran or skipped, mAP and per-class AP, registration decision, MLflow links."""
    def num(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"# yolov1 pipeline in `{summary['workspace']}`", "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {result} |" for stage, result in summary["stages"].items()]
    lines += ["", f"**Test mAP@0.5**: {num(summary.get('map_voc07'))} (VOC07 11-point), "
              f"{num(summary.get('map_area'))} (area)", ""]
    if rows:
        lines += ["| class | AP (VOC07) | AP (area) |", "|---|---:|---:|"]
        lines += [f"| {r['class']} | {num(r['ap_voc07'])} | {num(r['ap_area'])} |" for r in rows]
        lines.append("")
    if registration:
        name, version = registration.get("model_name"), registration.get("version")
        previous = registration.get("previous_champion") or {}
        compared = (f"champion v{previous['version']} (mAP {num(previous.get('map_voc07'))})"
                    if previous.get("version") else "no champion")
        lines += ["## Registration", "",
                  f"`{name}` version {version} -> **{registration.get('alias')}**, compared with {compared}: "
                  f"{registration.get('reason')}", ""]
    lines += ["## MLflow", "", f"- tracking store: `{tracking_uri}`"]
    if meta.get("mlflow_run_id"):
        lines.append(f"- training run: {_run_link(tracking_uri, meta)}")
    if registration.get("version"):
        lines.append(f"- model version: {_version_link(tracking_uri, registration)}")
    if not tracking_uri.startswith(("http://", "https://")):
        lines.append(f"- open it with `mlflow ui --backend-store-uri {tracking_uri}` (run in `{summary['workspace']}`)")
    return "\n".join(lines) + "\n"


def _run_link(uri: str, meta: dict) -> str:
    run_id = meta["mlflow_run_id"]
    experiment_id = meta.get("mlflow_experiment_id")
    if uri.startswith(("http://", "https://")) and experiment_id:
        return f"[{run_id}]({uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}`"


def _version_link(uri: str, registration: dict) -> str:
    name, version = registration["model_name"], registration["version"]
    if uri.startswith(("http://", "https://")):
        return f"[{name} v{version}]({uri.rstrip('/')}/#/models/{name}/versions/{version})"
    return f"`models:/{name}/{version}`"


def _tracking_uri(workspace: Path) -> str:
    """The workspace's MLflow store (as the stages see it), credentials redacted."""
    from yolov1.redact import redact_url

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        try:
            from pipelines.params import load_params

            uri = load_params(workspace / "params.yaml").tracking.uri
        except Exception:  # the report must not fail a finished pipeline
            uri = "unknown"
    return redact_url(uri)


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 flow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=".", help="the DVC repo to run in (default: the current folder)")
    parser.add_argument("--retrain", action="store_true", help="force the train stage to run")
    args = parser.parse_args(argv)
    try:
        summary = run_pipeline(workspace=args.workspace, retrain=args.retrain)
    except PrefectUnavailable as err:
        print(f"yolov1 flow: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


class PrefectUnavailable(RuntimeError):
    """Prefect's temporary API server did not come up; says how to give it more time or use a real server."""


def run_pipeline(workspace: str = ".", retrain: bool = False) -> dict:
    """`training_pipeline`, with Prefect's "Timed out ... ephemeral Prefect API server" turned into a short
    `PrefectUnavailable` (Prefect's own message appends the server's whole stdout and stderr)."""
    try:
        return training_pipeline(workspace=workspace, retrain=retrain)
    except RuntimeError as err:
        if "ephemeral Prefect API server" not in str(err):
            raise
        timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
        raise PrefectUnavailable(
            f"Prefect's temporary API server did not answer within {timeout} s ({redact(str(err))[:300]}). "
            "Raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api; `yolov1 demo --engine dvc` runs the same stages without "
            "Prefect."
        ) from None


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 flow"))
