"""Scheduled retraining: serve the Prefect flow `training_pipeline` as a deployment on the cron of params `schedule`.

`python -m pipelines.serve` registers deployment ``schedule.deployment`` (cron ``schedule.cron`` in
``schedule.timezone``, parameter ``workspace`` = the absolute --workspace path) and then runs each of its flow runs
in a subprocess of this process until interrupted (Ctrl-C pauses the schedule). The schedule comes from the
workspace's own params.yaml (``--params`` overrides it); the deployment, its cron and the next run time are
printed before serving starts.

Schedules need a real Prefect server. Prefect's temporary server (the one started on the fly when
PREFECT_API_URL is unset) runs without its background services, so it never turns a cron into flow runs:

    prefect server start                                  # another terminal; state in $PREFECT_HOME
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.serve --workspace .
    prefect deployment run yolov1-training-pipeline/yolov1-retrain     # a run now, besides the cron

Kubernetes or Docker instead of this process: put the flow on a work pool, and a worker starts every run in its
own pod or container from an image that holds this project (`pip install .`) and a workspace (a DVC repo whose
remote holds the data):

    prefect work-pool create yolov1 --type kubernetes     # or --type docker (needs prefect-kubernetes / -docker)
    prefect worker start --pool yolov1

and deploy the same flow to it, from Python (`build_deployment` builds the served variant):

    from pipelines.flows import training_pipeline
    from prefect.schedules import Cron
    training_pipeline.deploy("yolov1-retrain", work_pool_name="yolov1", image="registry.example/yolov1:0.1",
                             build=False, schedules=[Cron("0 3 * * 0", timezone="UTC")],
                             parameters={"workspace": "/workspace"})

or from the CLI (`prefect deploy` stores these answers in a prefect.yaml it offers to write):

    prefect deploy pipelines/flows.py:training_pipeline --name yolov1-retrain --pool yolov1 \\
        --cron "0 3 * * 0" --timezone UTC --param workspace=/workspace
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.params import load_params
from yolov1.config import ConfigError, Params

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment


def build_deployment(params: Params, workspace: str | Path) -> RunnerDeployment:
    """The served deployment of `training_pipeline`: cron schedule from params `schedule`, runs in `workspace`.

    The flow is referenced by module path (``pipelines.flows.training_pipeline``), so the runner's subprocesses
    import it from the installed project whatever their working directory. Nothing is sent to the API until the
    deployment is applied (`prefect.serve`, `Runner.add_deployment` or `.apply()`).
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from pipelines.flows import training_pipeline

    cfg = params.schedule
    return training_pipeline.to_deployment(
        name=cfg.deployment,
        schedules=[Cron(cfg.cron, timezone=cfg.timezone)],
        parameters={"workspace": str(Path(workspace).resolve())},
        description=f"Scheduled retraining ({cfg.cron}, {cfg.timezone}): download -> prepare -> train -> "
                    "evaluate -> register, each stage a `dvc repro --single-item` in the workspace.",
        tags=["yolov1"],
        entrypoint_type=EntrypointType.MODULE_PATH,
        _sync=True,  # to_deployment dispatches to its coroutine version inside an event loop
    )


def next_run_times(cron: str, timezone: str, *, count: int = 1, after: dt.datetime | None = None) -> list[dt.datetime]:
    """The next `count` times (timezone-aware, in `timezone`) the cron fires strictly after `after` (default: now).

    Computed with Prefect's own server-side schedule, so what is printed is what the scheduler will create.
    """
    import asyncio

    from prefect.server.schemas.schedules import CronSchedule

    after = after or dt.datetime.now(dt.UTC)
    dates = asyncio.run(CronSchedule(cron=cron, timezone=timezone).get_dates(n=count + 1, start=after))
    return [d for d in dates if d > after][:count]


def describe_schedule(params: Params, params_path: Path, *, after: dt.datetime | None = None) -> str:
    """The lines printed when serving starts: deployment, cron and where it came from, next run time."""
    cfg = params.schedule
    [next_run] = next_run_times(cfg.cron, cfg.timezone, after=after)
    return (f"deployment {cfg.deployment}: cron {cfg.cron!r} ({cfg.timezone}) from {params_path}\n"
            f"next run: {next_run.isoformat()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yolov1 serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None,
                        help="params file with the `schedule` section (default: <workspace>/params.yaml)")
    parser.add_argument("--workspace", type=Path, default=Path("."),
                        help="the DVC repo the scheduled runs work in (default: the current folder)")
    args = parser.parse_args(argv)
    if not (args.workspace / "dvc.yaml").is_file():
        print(f"yolov1 serve: error: {args.workspace.resolve()} has no dvc.yaml (pass --workspace <a DVC repo>)",
              file=sys.stderr)
        return 2
    params_path = (args.params or args.workspace / "params.yaml").resolve()
    try:
        params = load_params(params_path)
    except (ConfigError, FileNotFoundError) as err:
        print(f"yolov1 serve: error: {err}", file=sys.stderr)
        return 2
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # env or the active Prefect profile
        print("yolov1 serve: warning: PREFECT_API_URL is unset, so Prefect's temporary server is used and the cron "
              "schedule will not fire (start `prefect server start` and export PREFECT_API_URL; see --help)",
              file=sys.stderr)
    print(describe_schedule(params, params_path), flush=True)
    serve(build_deployment(params, args.workspace))
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 serve"))
