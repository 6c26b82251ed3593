"""Faults that must not cost the current model or a clear message: a retrain against a dead tracking server,
deterministic vs network failures in the flow's download retries, Ctrl-C, and Prefect's server start-up."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import flows
from pipelines.cli import EXIT_INTERRUPTED, run_main
from pipelines.tracking import TrackingUnavailable
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _dvc_init(ws: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True, env=_env())


# --- a failed retrain keeps the current model ---------------------------------------------------------------------

def test_failed_train_stage_under_dvc_keeps_the_model_byte_identical(tmp_path, repo_params_dict):
    """The real train stage and the real outs of dvc.yaml's train stage (persist), forced to rerun with the
    tracking server down: DVC used to delete models/yolov1.pt and .json before the stage's check failed."""
    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    stage = {"cmd": f"{sys.executable} -m pipelines.train --params params.yaml", "outs": real["outs"]}
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    (ws / "params.yaml").write_text(yaml.safe_dump(repo_params_dict))
    _dvc_init(ws)
    (ws / "models").mkdir()
    old = {"models/yolov1.pt": os.urandom(4096), "models/yolov1.json": b'{"mlflow_run_id": "champion"}\n'}
    for name, data in old.items():
        (ws / name).write_bytes(data)
    uri = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", "train"], cwd=ws, capture_output=True,
                         text=True, env=_env(MLFLOW_TRACKING_URI=uri), timeout=600)
    assert out.returncode != 0 and "cannot be reached" in out.stdout + out.stderr, out.stdout + out.stderr
    for name, data in old.items():
        assert (ws / name).read_bytes() == data, name


def test_flow_train_task_checks_tracking_before_dvc_runs(tmp_path, repo_params_dict, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params_dict))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TrackingUnavailable, match="cannot be reached"):
        flows.check_tracking(str(tmp_path))
    # The workspace's relative sqlite store is checked where the stage will use it (in the workspace), not in
    # the flow's working directory.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    raw = copy.deepcopy(repo_params_dict)
    raw["tracking"]["uri"] = "sqlite:///store/mlflow.db"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(TrackingUnavailable, match="folder .*store is missing"):
        flows.check_tracking(str(tmp_path))
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(ROOT)  # not the workspace
    flows.check_tracking(str(tmp_path))
    assert (tmp_path / "store" / "mlflow.db").is_file()


# --- the download task retries network failures only ------------------------------------------------------------

STAGE_SCRIPT = """
import sys
from pathlib import Path
with open("attempts", "a") as f:
    f.write("x")
print("fetching https://bob:M1rr0rPw@mirror.invalid/VOC.tar?token=T0ken5ecret")
sys.exit(int(Path("exit_code").read_text()))
"""


@pytest.fixture
def one_stage_repo(tmp_path) -> Path:
    """A DVC repo whose `download` stage counts its runs and exits with the code in ./exit_code."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "stage.py").write_text(STAGE_SCRIPT)
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"download": {"cmd": f"{sys.executable} stage.py"}}}))
    _dvc_init(ws)
    return ws


@pytest.mark.parametrize(("exit_code", "attempts", "error"), [
    (75, 4, flows.NetworkStageError),  # EXIT_NETWORK: every mirror unreachable; 1 try + 3 retries
    (2, 1, flows.StageError),  # a config error, md5 mismatch or hostile archive: retrying cannot help
])
def test_download_task_retries_only_network_failures(prefect_api, one_stage_repo, exit_code, attempts, error):
    from prefect import flow

    (one_stage_repo / "exit_code").write_text(str(exit_code))
    fast = flows.download.with_options(retry_delay_seconds=0, retry_jitter_factor=None)

    @flow
    def only_download(workspace: str):
        return fast(workspace)

    state = only_download(str(one_stage_repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(error) as err:
        state.result()
    assert type(err.value) is error
    assert (one_stage_repo / "attempts").read_text() == "x" * attempts
    # The stage's output is in the error, with the mirror's credentials redacted.
    assert "bob:***@mirror.invalid" in str(err.value) and "token=***" in str(err.value)
    assert "M1rr0rPw" not in str(err.value) and "T0ken5ecret" not in str(err.value)


def test_download_stage_exit_code_tells_network_from_deterministic_failures(tmp_path, repo_params_dict,
                                                                            monkeypatch):
    import http.server
    import threading

    from pipelines import download as download_stage
    from pipelines.download import EXIT_NETWORK

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)
    try:
        for mirror, code in [(f"http://127.0.0.1:{free_port()}/a.tar", EXIT_NETWORK),
                             (f"http://127.0.0.1:{server.server_address[1]}/a.tar", 2)]:
            raw = copy.deepcopy(repo_params_dict)
            raw["data"]["root"] = "data"
            raw["data"]["archives"] = [dict(raw["data"]["archives"][0], mirrors=[mirror])]
            (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
            assert download_stage.main(["--params", "p.yaml"]) == code, mirror
    finally:
        server.shutdown()
        server.server_close()
    (tmp_path / "bad.yaml").write_text("data: *alias\n")
    assert download_stage.main(["--params", "bad.yaml"]) == 2  # a config error is never "network"


# --- Ctrl-C ---------------------------------------------------------------------------------------------------------

def test_run_main_turns_ctrl_c_into_a_message_and_exit_130(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted, [], prog="yolov1 train") == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert "yolov1 train: interrupted (Ctrl-C)" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["-m", "pipelines.cli", "train"], ["-m", "pipelines.prepare"]])
def test_sigint_in_a_real_command_prints_no_traceback(tmp_path, command):
    """The command blocks reading its params from a FIFO; opening the FIFO's write end returns only once the
    command has opened it, so SIGINT arrives while it is waiting (no sleeps, no races)."""
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    # SIG_DFL before exec, so Python installs its Ctrl-C handler even when this test runs in a background job
    # (whose shell made SIGINT ignored, a disposition exec would otherwise pass on).
    proc = subprocess.Popen([sys.executable, *command, "--params", str(fifo)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until the command opened the FIFO for reading
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        os.close(fd)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err and "KeyboardInterrupt" not in err


# --- Prefect's temporary server ----------------------------------------------------------------------------------

def test_flows_module_gives_prefects_temporary_server_time_to_start():
    code = ("import pipelines.flows\n"
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s\n"
            "print(s.value())")
    env = _env()
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == flows.STARTUP_TIMEOUT_S >= 120  # Prefect's default is 20 s


def test_prefect_startup_timeout_is_a_short_clear_error(monkeypatch, capsys):
    def timed_out(**kwargs):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server. stdout: "
                           + "uvicorn noise " * 10_000)

    monkeypatch.setattr(flows, "training_pipeline", timed_out)
    assert flows.main(["--workspace", "."]) == 2
    err = capsys.readouterr().err
    assert err.startswith("yolov1 flow: error: Prefect's temporary API server did not answer within")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in err and len(err) < 1000

    def other(**kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(flows, "training_pipeline", other)
    with pytest.raises(RuntimeError, match="something else"):
        flows.main([])


# --- outputs respect the umask ------------------------------------------------------------------------------------

def test_evaluate_outputs_and_logged_artifacts_respect_the_umask(tmp_path, monkeypatch):
    """Under umask 022 everything the evaluate stage writes (reports/) and every artifact it logs to a local
    MLflow store (sqlite + artifact folder) is readable by group and others: files written through mkstemp used
    to stay 0600, and MLflow copies a file's mode into the artifact store."""
    import json
    import stat

    import mlflow

    from pipelines import evaluate as evaluate_stage
    from pipelines.prepare import read_tables
    from pipelines.tracking import configure
    from tests.test_train_stage import CLASSES, _raw_params
    from yolov1.checkpoint import save_weights
    from yolov1.config import params_from_dict
    from yolov1.model import build_model
    from yolov1.synth import generate_voc

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    generate_voc(tmp_path / "data" / "extracted", num_trainval=2, num_test=4, image_size=((80, 120), (64, 100)),
                 seed=5, classes=CLASSES, max_objects=2, object_size=(0.25, 0.5), difficult_size=(0.06, 0.1),
                 difficult_fraction=0.1, truncated_fraction=0.1, max_overhang=0.2, max_iou=0.3, colour_jitter=10)
    raw = _raw_params()
    raw["tracking"].update(experiment="umask", uri=f"sqlite:///{tmp_path}/mlflow.db",
                           artifact_root=str(tmp_path / "mlartifacts"))
    params = params_from_dict(raw)
    tables = read_tables(params.data, workers=1)
    (tmp_path / "data" / "prepared").mkdir()
    tables.images.to_parquet(tmp_path / "data" / "prepared" / "images.parquet", index=False)
    tables.objects.to_parquet(tmp_path / "data" / "prepared" / "objects.parquet", index=False)
    save_weights(tmp_path / "models" / "yolov1.pt", build_model(params.model), params.model, CLASSES)
    old = os.umask(0o022)
    try:
        experiment_id = configure(params.tracking)
        with mlflow.start_run(experiment_id=experiment_id) as run:  # the training run evaluate logs into
            pass
        (tmp_path / "models" / "yolov1.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id}))
        evaluate_stage.run(params, track=True)
    finally:
        os.umask(old)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    reports = tmp_path / "reports"
    artifacts = tmp_path / "mlartifacts"
    written = {p.relative_to(tmp_path).as_posix() for p in reports.rglob("*") if p.is_file()}
    assert {"reports/metrics.json", "reports/pr.csv", "reports/pr_curves.png", "reports/predictions.png"} <= written
    logged = [p for p in artifacts.rglob("*") if p.is_file()]
    assert {"pr_curves.png", "predictions.png", "metrics.json", "params.yaml"} <= {p.name for p in logged}
    for path in [reports, *reports.rglob("*"), artifacts, *artifacts.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = 0o055 if path.is_dir() else 0o044  # folders: group/others may also enter them
        assert mode & wanted == wanted, f"{path.relative_to(tmp_path)}: mode {mode:o} under umask 022"
