"""Serving the registered champion: pyfunc in a fresh process, `mlflow models serve` over HTTP, `yolov1 predict`.

Uses the session's tiny workspace (tests/pipeline_fixtures.py); the registry lives in its sqlite store.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.pipeline_fixtures import Workspace, profile_classes, run_cmd, sample_image, shared_workspace

pytestmark = pytest.mark.slow

COLUMNS = ["image", "label", "score", "xmin", "ymin", "xmax", "ymax"]
SERVE_DEADLINE_S = 180  # mlflow + torch import and model load on 2 busy cores; only bounds a hung server
# Threshold 0 (an inference param): the tiny model scores nothing above the logged 0.3, and the point is the plumbing.
PREDICT_SCRIPT = """
import json, sys
import mlflow.pyfunc
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
image_path, b64 = sys.argv[2], open(sys.argv[3]).read()
every = {"score_threshold": 0.0}
out = {key: model.predict(pd.DataFrame({"image": images}), params=every).to_dict(orient="split")
       for key, images in (("b64", [b64]), ("path", [image_path]), ("both", [image_path, b64]))}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    return shared_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def image(ws):
    """(path, width, height, base64 text) of a test image of the workspace's data."""
    path, width, height = sample_image(ws)
    return path, width, height, base64.b64encode(path.read_bytes()).decode("ascii")


def _check_detections(columns: list[str], rows: list[list], width: int, height: int, n_images: int) -> None:
    assert columns == COLUMNS
    classes = set(profile_classes())
    for image, label, score, xmin, ymin, xmax, ymax in rows:
        assert 0 <= image < n_images
        assert label in classes
        assert 0.0 <= score <= 1.0
        assert 0.0 <= xmin <= xmax <= width and 0.0 <= ymin <= ymax <= height


def test_champion_loads_and_predicts_in_a_fresh_process(ws, image, tmp_path):
    path, width, height, b64 = image
    b64_file = tmp_path / "image.b64"
    b64_file.write_text(b64)
    # A fresh interpreter started outside the workspace: only the registry URI and the model's bundled code.
    out = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, f"models:/{ws.model_name}@champion", str(path),
                          str(b64_file)], cwd=tmp_path, env=ws.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    for key, n_images in (("b64", 1), ("path", 1), ("both", 2)):
        _check_detections(result[key]["columns"], result[key]["data"], width, height, n_images)
    assert result["b64"]["data"], "threshold 0 keeps every box that survives NMS: there must be detections"
    # The same image as a path and as base64 gives the same detections (a batch of 2 may differ in the last bits).
    assert result["path"]["data"] == result["b64"]["data"]
    assert {row[0] for row in result["both"]["data"]} == {0, 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, lines: queue.Queue, port: int, deadline: float) -> list[str]:
    """Read the server's output until it says it listens, then check /ping; returns the lines read."""
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "server not ready in time:\n" + "\n".join(seen[-30:])
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        assert line is not None, f"server exited ({proc.poll()}) before listening:\n" + "\n".join(seen[-30:])
        seen.append(line.rstrip())
        if "Uvicorn running on" in line or "Listening at" in line:
            break
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=30) as resp:
        assert resp.status == 200
    return seen


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # end of output: the server exited


def _invoke(port: int, payload: dict) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200
        return json.loads(resp.read())["predictions"]


def test_mlflow_models_serve_answers_invocations(ws, image):
    path, width, height, b64 = image
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "models", "serve", "-m", f"models:/{ws.model_name}@champion", "--env-manager", "local",
           "--host", "127.0.0.1", "-p", str(port), "--workers", "1"]
    # A new process group: the server's workers die with it.
    proc = subprocess.Popen(cmd, cwd=ws.path, env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    try:
        _wait_ready(proc, lines, port, time.monotonic() + SERVE_DEADLINE_S)
        split = {"columns": ["image"], "data": [[b64]]}
        detections = _invoke(port, {"dataframe_split": split, "params": {"score_threshold": 0.0}})
        assert detections, "threshold 0 keeps every box that survives NMS: there must be detections"
        for d in detections:
            assert set(d) == set(COLUMNS)
        _check_detections(COLUMNS, [[d[c] for c in COLUMNS] for d in detections], width, height, n_images=1)
        # Without the param, the threshold the model was logged with (params eval.draw_score_threshold) applies.
        logged = yaml.safe_load((ws.path / "params.yaml").read_text())["eval"]["draw_score_threshold"]
        default = _invoke(port, {"dataframe_split": split})
        assert all(d["score"] > logged for d in default) and len(default) <= len(detections)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_predict_cli_with_weights_file_writes_json_and_pictures(ws, image, tmp_path, monkeypatch):
    from pipelines.predict import main

    folder = image[0].parent
    out_dir = tmp_path / "pred"
    monkeypatch.chdir(ws.path)
    assert main([str(folder), "--model", "models/yolov1.pt", "--out", str(out_dir), "--score-threshold", "0"]) == 0
    detections = json.loads((out_dir / "detections.json").read_text())
    jpgs = sorted(folder.glob("*.jpg"))
    assert set(detections) == {str(p) for p in jpgs}
    assert {p.name for p in out_dir.glob("*.png")} == {f"{p.stem}.png" for p in jpgs}
    classes = set(profile_classes())
    for result in detections.values():
        for det in result["detections"]:
            assert det["label"] in classes
            xmin, ymin, xmax, ymax = det["box_xyxy"]
            assert 0 <= xmin <= xmax <= result["width"] and 0 <= ymin <= ymax <= result["height"]


def test_predict_cli_resolves_a_registry_uri(ws, image, tmp_path):
    # In a subprocess: resolving the URI points mlflow's global tracking URI at the workspace store.
    out_dir = tmp_path / "pred"
    script = "from pipelines.predict import main; raise SystemExit(main())"
    out = run_cmd(ws, sys.executable, "-c", script, str(image[0]), "--model", f"models:/{ws.model_name}@champion",
                  "--out", str(out_dir), "--score-threshold", "0")
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["images"] == 1 and summary["detections"] > 0
    detections = json.loads((out_dir / "detections.json").read_text())
    assert list(detections) == [str(image[0])]
    assert (out_dir / f"{image[0].stem}.png").is_file()
