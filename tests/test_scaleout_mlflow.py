"""Scale-out, run for real: an MLflow tracking server on PostgreSQL, with the pipeline and the registry on it.

A PostgreSQL cluster is created in a temp dir and listens on 127.0.0.1 only (binaries from `pg_config --bindir`;
`.ci/run` installs Debian's `postgresql` where they are missing; initdb refuses root, so as root the cluster runs
as the `postgres` user). `mlflow server --backend-store-uri postgresql://... --artifacts-destination <tmp>` serves
it on a free loopback port. Then, through MLFLOW_TRACKING_URI=http://127.0.0.1:<port> only: a tiny workspace runs
`dvc repro` (train -> evaluate -> register), four processes race to register, and a fresh interpreter loads the
champion back. Every wait polls a health endpoint against a deadline; every process is stopped at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.server_process import free_port

pytestmark = pytest.mark.scaleout

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 240  # server start-up on 2 busy cores (MLflow creates its tables on first start); bounds a hang only


def _pg_bindir() -> Path | None:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file() and (path / "postgres").is_file():
            return path
    return None


def wait_http(url: str, deadline: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it exits or the deadline passes."""
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError as err:  # refused while starting, or a 5xx while migrating
            last = str(err)
        time.sleep(0.2)  # poll interval, not a wait for an event
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{url} not healthy (last error: {last}; exit code {proc.poll() if proc else None}):\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, SIGKILL it after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def postgres():
    """postgresql+psycopg2://mlflow@127.0.0.1:<port>/mlflow on a throwaway cluster (trust auth, loopback only)."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary (dev dependency) is needed for MLflow on PostgreSQL")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin); "
                    ".ci/run installs Debian's postgresql")
    base = Path(tempfile.mkdtemp(prefix="yolov1-pg-"))  # not under pytest's 0700 tmp: the server user reads it
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no `postgres` user to run initdb as")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    try:
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
                        "-E", "UTF8", "--no-instructions"], check=True, capture_output=True, timeout=300)
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                        "-t", str(DEADLINE_S), "-o", f"-h 127.0.0.1 -p {port} -k {base}", "start"],
                       check=True, capture_output=True, timeout=DEADLINE_S + 30)
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"  # psycopg2-binary, pinned in dev
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """http://127.0.0.1:<port> of `mlflow server` on the PostgreSQL store, artifacts proxied to a temp dir."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port, log = free_port(), base / "server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", postgres,
           "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with log.open("w") as out:
        # No job runner: its worker pool (GenAI jobs, unused here) is five more interpreters on 2 cores.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true",
                                         MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        wait_http(f"http://127.0.0.1:{port}/health", time.monotonic() + DEADLINE_S, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def workspace(server, tmp_path_factory):
    """A tiny workspace whose `dvc repro` tracked and registered through the server; (path, env, model name)."""
    from pipelines.demo import build_tarball, demo_params
    from pipelines.workspace import create_workspace
    from tests.pipeline_fixtures import DATA_SPEC, PROFILE, REPRO_TIMEOUT_S

    base = tmp_path_factory.mktemp("pg-pipeline")
    spec = yaml.safe_load(DATA_SPEC.read_text())
    md5, size = build_tarball(base / "served", spec)
    params = demo_params(PROFILE, spec, md5, size, base / "served", base / "ws")
    path = create_workspace(base / "ws", params, message="tiny workspace tracked on a server")
    env = dict(os.environ, MLFLOW_TRACKING_URI=server)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("YOLOV1_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=path, env=env, capture_output=True, text=True,
                         timeout=REPRO_TIMEOUT_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return path, env, params["register"]["model_name"]


def test_pipeline_tracks_and_registers_through_the_server(workspace, server):
    from mlflow.tracking import MlflowClient

    path, _, name = workspace
    assert not (path / "mlflow.db").exists(), "the pipeline wrote a local store instead of using the server"
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    registration = json.loads((path / "reports" / "registration.json").read_text())
    version = client.get_model_version(name, registration["version"])
    metrics = json.loads((path / "reports" / "metrics.json").read_text())
    assert float(version.tags["map_voc07"]) == pytest.approx(metrics["map_voc07"])
    logged = client.get_run(version.run_id).data.metrics  # train's epochs and evaluate's scores, on the server
    assert any(key.startswith("epoch/") for key in logged), sorted(logged)
    assert logged.get("test/map_voc07") == pytest.approx(metrics["map_voc07"]), sorted(logged)
    assert client.get_registered_model(name).aliases[registration["alias"]] == registration["version"]


def test_champion_loads_in_a_fresh_process_through_the_server(workspace, tmp_path):
    from tests.pipeline_fixtures import sample_image
    from tests.test_serving import PREDICT_SCRIPT

    path, env, name = workspace
    image = sample_image(type("W", (), {"path": path})())[0]
    b64 = tmp_path / "image.b64"
    import base64

    b64.write_text(base64.b64encode(image.read_bytes()).decode())
    out = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, f"models:/{name}@champion", str(image), str(b64)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["b64"]["columns"][:3] == ["image", "label", "score"] and result["b64"]["data"]


def test_racing_registrations_on_the_server(server, tmp_path, monkeypatch, repo_params_dict):
    """Four processes register at once. A server has no lock and aliases have no compare-and-set, so what holds is
    what the register stage promises there: every version is created, exactly one champion, each decision is
    consistent with the champion its re-check saw (pipelines/register.py says to run one at a time on a server).
    Two first writes of one alias collide on PostgreSQL (duplicate key on registered_model_alias_pk, BAD_REQUEST):
    this test found that; promote() now takes it as a lost race and decides again, so every racer exits 0."""
    from mlflow.tracking import MlflowClient

    from pipelines.register import decide
    from tests.test_register import _make_params, run_racing_registrations

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # inherited by the spawned racers
    monkeypatch.chdir(tmp_path)
    params = _make_params(repo_params_dict)
    params = dataclasses.replace(params, register=dataclasses.replace(params.register, model_name="race-on-server"))
    maps, folders = run_racing_registrations(params, tmp_path, join_timeout=300)

    client = MlflowClient(tracking_uri=server, registry_uri=server)
    name = params.register.model_name
    versions = {str(mv.version): float(mv.tags["map_voc07"]) for mv in client.search_model_versions(f"name='{name}'")}
    assert sorted(versions, key=int) == ["1", "2", "3", "4"] and sorted(versions.values()) == sorted(maps)
    aliases = {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}
    assert aliases["champion"] in versions  # one alias, one version: exactly one champion
    summaries = [json.loads((f / "registration.json").read_text()) for f in folders]
    assert sorted(s["version"] for s in summaries) == ["1", "2", "3", "4"]
    assert sum(s["promoted"] for s in summaries) >= 1
    for s in summaries:
        promoted, _ = decide(s["map_voc07"], s["previous_champion"]["map_voc07"], params.register.min_improvement,
                             params.register.min_map)
        assert s["promoted"] == promoted
