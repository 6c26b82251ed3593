"""Scale-out, run for real: the training flow deployed to a Prefect `process` work pool and run by a worker.

`prefect server start` on a free loopback port with its own PREFECT_HOME (its own SQLite database), a `process`
work pool, the flow deployed to it with `flow.from_source(<this checkout>, "pipelines/flows.py:training_pipeline")
.deploy(...)` (a local code source where a Docker or Kubernetes pool would take an image), a run created with
`run_deployment`, and `prefect worker start --pool ... --run-once`, which picks the run up, executes it in a
subprocess and returns when it has finished. The run works on the tiny test workspace, whose stages are all up to
date, so the flow does the orchestration only. Every process started is stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline_fixtures import Workspace, shared_workspace, stages_ran
from tests.server_process import free_port
from tests.test_scaleout_mlflow import DEADLINE_S, stop, wait_http

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
POOL, DEPLOYMENT = "yolov1-test-pool", "yolov1-pool-test"
DEPLOY_SCRIPT = """
import sys
from prefect import flow
from prefect.deployments import run_deployment
source, workspace, pool, name = sys.argv[1:5]
remote = flow.from_source(source=source, entrypoint="pipelines/flows.py:training_pipeline")
deployment_id = remote.deploy(name=name, work_pool_name=pool, parameters={"workspace": workspace}, build=False,
                              push=False, print_next_steps=False)
run = run_deployment(f"yolov1-training-pipeline/{name}", timeout=0)  # scheduled now; the worker runs it
print("FLOW_RUN", run.id)
"""
STATE_SCRIPT = """
import sys
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    run = client.read_flow_run(sys.argv[1])
    print("STATE", run.state.type.value, run.state.name)
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return shared_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory, ws):
    """Env pointing at a fresh `prefect server start` on loopback (stopped after the module)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = dict(ws.env, PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db")
    env.pop("PREFECT_PROFILES_PATH", None)
    log = home / "server.log"
    prefect = str(Path(sys.executable).parent / "prefect")
    with log.open("w") as out:
        server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", time.monotonic() + DEADLINE_S, server, log)
        yield env
    finally:
        stop(server)


def _run(env: dict, *args: str, timeout: float = 600) -> str:
    out = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, f"{' '.join(args[:4])} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def test_flow_deployed_to_a_process_pool_is_run_by_a_worker(prefect_env, ws):
    prefect = str(Path(sys.executable).parent / "prefect")
    _run(prefect_env, prefect, "work-pool", "create", POOL, "--type", "process")
    deployed = _run(prefect_env, sys.executable, "-c", DEPLOY_SCRIPT, str(ROOT), str(ws.path), POOL, DEPLOYMENT)
    flow_run_id = deployed.split("FLOW_RUN ", 1)[1].split()[0]
    # --run-once: one poll, then wait for the runs it started to finish (no sleeping in the test).
    worker = _run(prefect_env, prefect, "worker", "start", "--pool", POOL, "--type", "process", "--run-once")
    state = _run(prefect_env, sys.executable, "-c", STATE_SCRIPT, flow_run_id).split("STATE ", 1)[1].split()
    assert state[0] == "COMPLETED", f"flow run {flow_run_id} ended {state}:\n{worker[-3000:]}"
    assert stages_ran(worker) == set()  # the workspace was up to date: orchestration only
    assert os.environ.get("PREFECT_API_URL") != prefect_env["PREFECT_API_URL"]  # the test's own server
