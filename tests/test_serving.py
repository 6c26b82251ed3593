"""Serving: the pyfunc's refusals in-process (fast), then the registered champion in a fresh process, over
`mlflow models serve` HTTP and through `yolov1 predict` (slow: the session's tiny workspace, tests/pipeline_fixtures.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.pipeline_fixtures import Workspace, profile_classes, run_cmd, sample_image, shared_workspace
from tests.server_process import free_port, running_server

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
       for key, images in (("b64", [b64]), ("both", [b64, b64]))}
try:
    model.predict(pd.DataFrame({"image": [image_path]}))
    out["path"] = "accepted"
except Exception as err:
    out["path"] = str(err)
print("RESULT " + json.dumps(out))
"""


# -- the pyfunc in-process: what a served model accepts and refuses (fast) -------------------------------------

LIMITS = {"max_image_pixels": 1_000_000, "max_rows": 4, "max_request_bytes": 200_000}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A loaded YoloV1Pyfunc over a tiny random net (threshold 0: every NMS survivor is returned)."""
    import types

    import torch

    from pipelines.pyfunc import YoloV1Pyfunc
    from yolov1.checkpoint import save_weights
    from yolov1.config import ModelConfig
    from yolov1.model import build_model

    cfg = ModelConfig(variant="fast", input_size=64, grid_size=2, boxes_per_cell=2, num_classes=3, batch_norm=True,
                      width_multiplier=0.125, head="conv", head_hidden=16, dropout=0.0)
    torch.manual_seed(0)
    path = save_weights(tmp_path_factory.mktemp("w") / "yolov1.pt", build_model(cfg), cfg, ["a", "b", "c"])
    model = YoloV1Pyfunc(score_threshold=0.0, nms_iou_threshold=0.5, max_detections=10, **LIMITS)
    model.load_context(types.SimpleNamespace(artifacts={"weights": str(path)}))
    return model


def _png_b64(width: int = 40, height: int = 30) -> str:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _refusal(model, images: list, params: dict | None = None) -> str:
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        model.predict(None, pd.DataFrame({"image": images}), params=params)
    assert err.value.get_http_status_code() == 400 and "stack_trace" not in err.value.json_kwargs
    return err.value.message


def test_served_model_predicts_base64_images(served):
    import pandas as pd

    out = served.predict(None, pd.DataFrame({"image": [_png_b64(), _png_b64(50, 20)]}))
    assert list(out.columns) == COLUMNS and set(out["image"]) <= {0, 1} and len(out) > 0
    assert (out.loc[out["image"] == 1, "xmax"] <= 50).all() and (out.loc[out["image"] == 1, "ymax"] <= 20).all()


def test_served_model_never_reads_server_side_paths(served, tmp_path):
    existing = tmp_path / "real.png"
    existing.write_bytes(base64.b64decode(_png_b64()))
    messages = {_refusal(served, [str(p)]) for p in (existing, tmp_path / "gone.png", "/etc/shadow", "/etc/passwd")}
    # One refusal for every path, existing or not, readable or not: the answer says nothing about the disk.
    assert messages == {"row 0: expected base64 text of encoded image bytes (JPEG/PNG); server-side paths are not "
                        "accepted"}
    assert _refusal(served, [base64.b64encode(b"not an image").decode()]) == messages.pop()


@pytest.mark.parametrize("threshold", [float("nan"), -0.1, 1.5, "0.5", True])
def test_served_model_validates_params(served, threshold):
    message = _refusal(served, [_png_b64()], {"score_threshold": threshold})
    assert message.startswith("params.score_threshold: expected a number in [0, 1]")
    assert _refusal(served, [_png_b64()], {"iou": 0.3}).startswith("params: unknown ['iou']")


def test_served_model_limits(served):
    assert "5 images in one request; the limit is 4 (serve.max_rows)" in _refusal(served, [_png_b64()] * 5)
    big = base64.b64encode(b"\0" * 210_000).decode()  # 280,000 base64 characters > 200,000
    assert "280,000 bytes of image data in one request; the limit is 200,000" in _refusal(served, [big])
    cut = base64.b64encode(base64.b64decode(_png_b64())[:16]).decode()  # a PNG cut inside its header
    assert _refusal(served, [cut]).startswith("row 0: expected base64 text of encoded image bytes")
    from tests.test_predict import _bomb_png

    message = _refusal(served, [_png_b64(), base64.b64encode(_bomb_png(2000, 1000)).decode()])
    assert message == ("row 1: 2000x1000 = 2,000,000 pixels exceeds the limit of 1,000,000 "
                       "(serve.max_image_pixels); refused before decoding")


def test_pickled_model_is_plain_numbers(served):
    import pickletools

    import cloudpickle

    blob = cloudpickle.dumps(served)  # what mlflow.pyfunc.log_model stores as python_model.pkl
    assert len(blob) < 4096  # numbers and a class reference; the weights are the artifact
    modules = {arg for op, arg, _ in pickletools.genops(blob) if op.name in ("SHORT_BINUNICODE", "BINUNICODE")
               and isinstance(arg, str) and arg.startswith("torch")}
    assert not modules, modules
    assert cloudpickle.loads(blob)._detector is None and served._detector is not None


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


@pytest.mark.slow
@pytest.mark.e2e
def test_champion_loads_and_predicts_in_a_fresh_process(ws, image, tmp_path):
    path, width, height, b64 = image
    b64_file = tmp_path / "image.b64"
    b64_file.write_text(b64)
    # A fresh interpreter started outside the workspace: only the registry URI and the model's bundled code.
    out = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, f"models:/{ws.model_name}@champion", str(path),
                          str(b64_file)], cwd=tmp_path, env=ws.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    for key, n_images in (("b64", 1), ("both", 2)):
        _check_detections(result[key]["columns"], result[key]["data"], width, height, n_images)
    assert result["b64"]["data"], "threshold 0 keeps every box that survives NMS: there must be detections"
    assert {row[0] for row in result["both"]["data"]} == {0, 1}
    assert "server-side paths are not accepted" in result["path"]  # a served model never opens files


def _invoke(port: int, payload: dict) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200
        return json.loads(resp.read())["predictions"]


def _invoke_raw(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
@pytest.mark.e2e
def test_mlflow_models_serve_answers_invocations(ws, image):
    path, width, height, b64 = image
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "models", "serve", "-m", f"models:/{ws.model_name}@champion", "--env-manager", "local",
           "--host", "127.0.0.1", "-p", str(port), "--workers", "1"]
    # The server prints its address once it listens; /ping must then answer.
    with running_server(cmd, cwd=ws.path, env=ws.env, ready=["Uvicorn running on", "Listening at"],
                        deadline_s=SERVE_DEADLINE_S):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=30) as resp:
            assert resp.status == 200
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
        # Refusals: HTTP 400, our one-line message, no stack trace, nothing about the server's files.
        for payload, words in [
            ({"dataframe_split": {"columns": ["image"], "data": [["/etc/shadow"]]}}, "server-side paths are not"),
            ({"dataframe_split": {"columns": ["image"], "data": [[str(path)]]}}, "server-side paths are not"),
            ({"dataframe_split": split, "params": {"score_threshold": -1.0}}, "params.score_threshold: expected"),
        ]:
            status, body = _invoke_raw(port, payload)
            assert status == 400 and words in body["message"], body
            assert "stack_trace" not in body and "Traceback" not in body["message"]


@pytest.mark.slow
@pytest.mark.e2e
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


@pytest.mark.slow
@pytest.mark.e2e
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


SERVED_RSS_SCRIPT = """
import base64, json, resource, sys, types
import numpy as np, pandas as pd, torch
from mlflow.exceptions import MlflowException
from pipelines.pyfunc import YoloV1Pyfunc
from yolov1.checkpoint import save_weights
from yolov1.config import ModelConfig
from yolov1.model import build_model
folder, good, bomb = sys.argv[1:4]
cfg = ModelConfig(variant="fast", input_size=64, grid_size=2, boxes_per_cell=2, num_classes=3, batch_norm=True,
                  width_multiplier=0.125, head="conv", head_hidden=16, dropout=0.0)
torch.manual_seed(0)
path = save_weights(folder + "/yolov1.pt", build_model(cfg), cfg, ["a", "b", "c"])
model = YoloV1Pyfunc(score_threshold=0.0, nms_iou_threshold=0.5, max_detections=10, max_image_pixels=40_000_000,
                     max_rows=4, max_request_bytes=2_000_000)
model.load_context(types.SimpleNamespace(artifacts={"weights": str(path)}))
b64 = lambda p: base64.b64encode(open(p, "rb").read()).decode("ascii")
model.predict(None, pd.DataFrame({"image": [b64(good)]}))  # imports and one forward pass: before the baseline
request = pd.DataFrame({"image": [b64(bomb)]})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    model.predict(None, request)
    outcome = {"status": 200}
except MlflowException as err:
    outcome = {"status": err.get_http_status_code(), "message": err.message}
outcome["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print("RESULT " + json.dumps(outcome))
"""


def test_served_model_refuses_a_real_20000x20000_png_without_decoding_it(tmp_path):
    """A real 400-megapixel PNG (~390 KB, ~520 KB as base64, under the request size limit): the served model
    answers 400 naming the pixel limit, and its process's peak RSS barely moves (it used to decode it: +1.2 GB)."""
    from tests.test_predict import check_real_png, write_real_bomb_png

    bomb = tmp_path / "bomb.png"
    assert write_real_bomb_png(bomb) < 1_000_000
    check_real_png(bomb, 20000, 20000)
    good = tmp_path / "good.png"
    good.write_bytes(base64.b64decode(_png_b64()))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SERVED_RSS_SCRIPT, str(tmp_path), str(good), str(bomb)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["status"] == 400, result
    assert result["message"] == ("row 0: 400,000,000 pixels exceeds the limit of 40,000,000 "
                                 "(serve.max_image_pixels); refused before decoding")
    assert result["growth_mb"] < 300, result  # measured growth, bounded generously; a decode would be >= 400 MB
