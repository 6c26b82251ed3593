"""No secret in any log, error, artifact, MLflow param/tag or Prefect state, and credentials that work.

Planted secrets: the tracking server's password (in MLFLOW_TRACKING_URI, ``http://alice:<password>@...``) and a
mirror URL's password and token (in params ``data.archives``). A loopback proxy in front of the tracking server
demands HTTP basic auth, so the credentials must reach the server, and must be found nowhere else.
"""

from __future__ import annotations

import base64
import copy
import http.client
import http.server
import os
import secrets
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from pipelines.tracking import TrackingUnavailable, check_reachable, split_credentials, tracking_uri
from tests.server_process import free_port, running_server
from yolov1.config import TrackingConfig

ROOT = Path(__file__).resolve().parents[1]
# Fresh per session: a value that appears in no source file (the logged model bundles the pipeline's code).
USER, PASSWORD = "alice", f"pw{secrets.token_hex(8)}"
MIRROR_PASSWORD, MIRROR_TOKEN = f"mp{secrets.token_hex(8)}", f"tk{secrets.token_hex(8)}"
MIRROR = f"https://bob:{MIRROR_PASSWORD}@mirror.invalid/VOCtrainval_06-Nov-2007.tar?token={MIRROR_TOKEN}&x=1"
SECRETS = (PASSWORD, MIRROR_PASSWORD, MIRROR_TOKEN, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
TRACKING = TrackingConfig(experiment="e", uri="sqlite:///mlflow.db", artifact_root="mlartifacts")


def _assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} found in {where}: ...{text[max(0, text.find(secret) - 200):][:400]}"


class _BasicAuthProxy:
    """HTTP on 127.0.0.1 that answers 401 without ``USER:PASSWORD`` basic auth, and otherwise forwards to
    `upstream` (host, port) or, with none, answers ``/health`` itself. `seen` keeps the Authorization headers."""

    def __init__(self, upstream: tuple[str, int] | None = None):
        self.upstream, self.seen = upstream, []
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []  # artifact uploads stream a file: chunked transfer encoding
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                    if size == 0:
                        return b"".join(chunks)

            def _handle(self):
                body = self._body()
                proxy.seen.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != expected:
                    self._reply(401, {"WWW-Authenticate": 'Basic realm="mlflow"'}, b"unauthorized")
                elif proxy.upstream is None:
                    self._reply(200, {}, b"OK" if self.path == "/health" else b"{}")
                else:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=300)
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("authorization", "host", "connection", "content-length",
                                                    "transfer-encoding")}
                    headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    skip = ("transfer-encoding", "connection", "content-length")
                    self._reply(resp.status, {k: v for k, v in resp.getheaders() if k.lower() not in skip}, data)
                    conn.close()

            def _reply(self, status, headers, data):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_server():
    proxy = _BasicAuthProxy()
    yield proxy
    proxy.close()


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.setenv(key, "")  # recorded, so the code under test's own writes to these are undone afterwards
        monkeypatch.delenv(key)
    return monkeypatch


# --- credentials that work ------------------------------------------------------------------------------------------

def test_reachability_probe_sends_credentials_from_the_uri_or_the_env(auth_server, clean_env):
    bare = f"http://127.0.0.1:{auth_server.port}"
    check_reachable(f"http://{USER}:{PASSWORD}@127.0.0.1:{auth_server.port}")  # urllib alone cannot parse this
    clean_env.setenv("MLFLOW_TRACKING_USERNAME", USER)
    clean_env.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    check_reachable(bare)
    assert len(auth_server.seen) == 2 and all(auth_server.seen)


def test_reachability_probe_says_401_and_never_shows_the_password(auth_server, clean_env):
    with pytest.raises(TrackingUnavailable) as err:
        check_reachable(f"http://127.0.0.1:{auth_server.port}")
    assert "answered HTTP 401" in str(err.value) and "MLFLOW_TRACKING_PASSWORD" in str(err.value)
    with pytest.raises(TrackingUnavailable) as err:
        check_reachable(f"http://{USER}:Wr0ngPw@127.0.0.1:{auth_server.port}")
    assert f"http://{USER}:***@127.0.0.1:{auth_server.port}" in str(err.value) and "Wr0ngPw" not in str(err.value)
    with pytest.raises(TrackingUnavailable) as err:
        check_reachable(f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}")
    assert "cannot be reached" in str(err.value)
    _assert_clean(str(err.value), "the unreachable-server message")


def test_tracking_uri_moves_uri_credentials_to_mlflows_env_vars(clean_env):
    clean_env.setenv("MLFLOW_TRACKING_URI", "https://alice:p%40ss%3Aword@mlflow.example:8443/prefix")
    assert tracking_uri(TRACKING) == "https://mlflow.example:8443/prefix"
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example:8443/prefix"  # what child processes see
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "p@ss:word")
    # Credentials already in the env win over the URI's; non-http URIs keep theirs (their driver needs them).
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mallory:other@h")
    assert tracking_uri(TRACKING) == "http://h" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss:word"
    assert split_credentials("postgresql://u:p@db/x") == ("postgresql://u:p@db/x", None, None)
    assert split_credentials("http://h:5000") == ("http://h:5000", None, None)
    assert split_credentials("http://tok@h") == ("http://h", "tok", None)


def test_train_stage_against_a_dead_server_prints_no_secret(tmp_path, clean_env, capfd, repo_params_dict):
    from pipelines import train as train_stage

    clean_env.chdir(tmp_path)
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}")
    raw = copy.deepcopy(repo_params_dict)
    raw["data"]["archives"][0]["mirrors"] = [MIRROR]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert train_stage.main(["--params", "params.yaml"]) == 2
    out, err = capfd.readouterr()
    assert "cannot be reached" in err and "http://127.0.0.1:" in err  # the bare URI: credentials moved to env
    _assert_clean(out + err, "the train stage's output")


@pytest.mark.parametrize("where", ["env, dead server", "env, server behind basic auth", "params tracking.uri"])
def test_predict_registry_lookup_leaks_no_secret(tmp_path, clean_env, capfd, caplog, auth_server, where):
    """`yolov1 predict --model models:/<name>@<alias>` with the tracking password in the URI (from
    MLFLOW_TRACKING_URI or the params file's tracking.uri): the lookup fails (no server, or a server that knows
    no such model), and the secret is in no printed line, log record or file."""
    import logging

    import mlflow
    import numpy as np
    from PIL import Image

    from pipelines import predict as predict_stage

    clean_env.chdir(tmp_path)
    live = where == "env, server behind basic auth"  # a stub answering {}: MLflow finds no weights there
    port = auth_server.port if live else free_port()
    uri = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    argv = ["img.png", "--model", "models:/yolov1-voc@champion", "--out", "out"]
    if where == "params tracking.uri":
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["tracking"]["uri"] = uri
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        argv += ["--params", "params.yaml"]
    else:
        clean_env.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        with caplog.at_level(logging.DEBUG):
            code = predict_stage.main(argv)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    out, err = capfd.readouterr()
    assert code == 2
    assert err.startswith("yolov1 predict: error: models:/yolov1-voc@champion: ") and len(err.splitlines()) == 1
    if live:
        assert auth_server.seen and all(auth_server.seen)  # the credentials reached the server, on every request
    else:  # the bare URI: its credentials moved to MLflow's env
        assert f"MLflow tracking server http://127.0.0.1:{port} cannot be reached" in err, err
    _assert_clean(out + err, "predict's stdout/stderr")
    _assert_clean("\n".join(r.getMessage() for r in caplog.records), "log records")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "params.yaml"]  # params.yaml: the input
    for path in files:
        _assert_clean(path.read_bytes().decode("latin-1"), str(path))


# --- Prefect: logs, states, results -------------------------------------------------------------------------------

def test_flow_stores_no_secret_in_logs_states_or_results(prefect_api, tmp_path, clean_env, repo_params_dict):
    """A download stage that echoes a mirror URL with credentials, then a train task against a dead server
    whose URI carries a password: both fail; nothing Prefect keeps (logs, flow/task run states and their
    messages, persisted results, its database) holds a secret."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_HOME

    from pipelines import flows

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "stage.py").write_text(f"print('fetching {MIRROR}')\nraise SystemExit(2)\n")
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"download": {"cmd": f"{sys.executable} stage.py"}}}))
    (ws / "params.yaml").write_text(yaml.safe_dump(repo_params_dict))
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True, env=env)
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}")

    @flow(persist_result=True)
    def leaky(workspace: str) -> list:
        states = [flows.download(workspace, return_state=True), flows.train(workspace, True, return_state=True)]
        return [str(s.message) for s in states]

    state = leaky(str(ws), return_state=True)
    messages = state.result()
    assert "stage 'download' failed" in messages[0] and "bob:***@mirror.invalid" in messages[0]
    assert "cannot be reached" in messages[1] and "127.0.0.1" in messages[1]
    flow_run_id = state.state_details.flow_run_id
    APILogWorker.drain_all(timeout=60)  # every log record sent before reading them back
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        task_states = [s for t in task_runs for s in client.read_task_run_states(t.id)]
        flow_states = client.read_flow_run_states(flow_run_id)
    assert any("[download] fetching https://bob:***@mirror.invalid" in r.message for r in logs)
    _assert_clean("\n".join(r.message for r in logs), "Prefect logs")
    _assert_clean(repr(runs) + repr(task_runs), "flow/task runs")
    _assert_clean(repr(task_states) + repr(flow_states), "Prefect states")
    for s in task_states:
        if s.is_failed():
            _assert_clean(repr(s.result(raise_on_failure=False)), "a task's persisted exception")
    for path in Path(PREFECT_HOME.value()).rglob("*"):  # results storage, and the server database if it is there
        if path.is_file():
            _assert_clean(path.read_bytes().decode("latin-1"), str(path))


# --- train, evaluate, register against a real MLflow server behind basic auth -----------------------------------

@contextmanager
def _mlflow_server(store: Path):
    """`mlflow server` on a free loopback port, yielded once it logs that it listens (no polling, no sleeps)."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
           f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    with running_server(cmd, cwd=store, env=env, ready=["Uvicorn running on", "Listening at"], deadline_s=300):
        yield port


@pytest.mark.slow
@pytest.mark.e2e
def test_train_evaluate_register_leak_no_secret(tmp_path, clean_env, capfd, caplog):
    """The tiny pipeline stages, in-process, tracked through the basic-auth proxy to a real MLflow server; every
    line printed or logged, every file written (workspace and server store: database and artifacts), every
    MLflow param and tag is searched for the planted secrets."""
    import logging

    from mlflow.tracking import MlflowClient

    from pipelines import evaluate as evaluate_stage
    from pipelines import register as register_stage
    from pipelines import train as train_stage
    from pipelines.prepare import read_tables
    from tests.test_train_stage import _raw_params
    from yolov1.config import params_from_dict
    from yolov1.synth import generate_voc

    store, ws = tmp_path / "server", tmp_path / "ws"
    store.mkdir()
    ws.mkdir()
    with _mlflow_server(store) as port:
        proxy = _BasicAuthProxy(("127.0.0.1", port))
        try:
            clean_env.chdir(ws)
            generate_voc(ws / "data" / "extracted", num_trainval=8, num_test=4, image_size=((80, 120), (64, 100)),
                         seed=5, classes=["aeroplane", "bicycle", "bird"], max_objects=2, object_size=(0.25, 0.5),
                         difficult_size=(0.06, 0.1), difficult_fraction=0.1, truncated_fraction=0.1, max_overhang=0.2,
                         max_iou=0.3, colour_jitter=10)
            raw = _raw_params()
            raw["data"]["archives"][0]["mirrors"] = [MIRROR]
            raw["register"]["min_map"] = 0.0
            tables = read_tables(params_from_dict(raw).data, workers=1)
            (ws / "data" / "prepared").mkdir()
            tables.images.to_parquet(ws / "data" / "prepared" / "images.parquet", index=False)
            tables.objects.to_parquet(ws / "data" / "prepared" / "objects.parquet", index=False)
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))  # outside the searched folders: the input
            clean_env.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}")
            params = ["--params", str(tmp_path / "params.yaml")]
            with caplog.at_level(logging.DEBUG):
                assert train_stage.main(params) == 0
                assert evaluate_stage.main(params) == 0
                assert register_stage.main(params) == 0
            assert proxy.seen and all(proxy.seen)  # every request carried the credentials
            out, err = capfd.readouterr()
            _assert_clean(out + err, "stdout/stderr")
            _assert_clean("\n".join(r.getMessage() for r in caplog.records), "log records")
            client = MlflowClient(f"http://127.0.0.1:{port}")  # straight to the server, behind the proxy's back
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            assert runs
            for run in runs:
                _assert_clean(repr(run.data.params) + repr(run.data.tags), f"run {run.info.run_id} params/tags")
            for mv in client.search_model_versions():
                _assert_clean(repr(mv), "a model version")
            searched = 0
            for folder in (ws, store):
                for path in folder.rglob("*"):
                    if path.is_file():
                        _assert_clean(path.read_bytes().decode("latin-1"), str(path))
                        searched += 1
            params_artifacts = list((store / "artifacts").rglob("params.yaml"))
            assert params_artifacts and "bob:***@mirror.invalid" in params_artifacts[0].read_text()
            assert searched > 20
        finally:
            proxy.close()
