"""The MLflow pyfunc flavour of a trained YOLOv1: a batch of encoded images in, detections out.

Input: a pandas DataFrame with one column ``image``; each value is the base64 text of encoded image bytes
(JPEG/PNG/...), e.g. ``{"dataframe_split": {"columns": ["image"], "data": [["/9j/4AAQ..."]]}}``. Raw ``bytes``
and a uint8 numpy array (N, H, W, 3) are accepted when calling `predict` in Python. A served model never reads
server-side files: a path is just text that is not base64 image bytes, refused with the same message whether
or not the file exists.
Output: a DataFrame with one row per detection: ``image`` (row index of the input), ``label`` (class name),
``score``, and ``xmin, ymin, xmax, ymax`` in continuous 0-based pixels of that input image.
Inference param ``score_threshold`` (default: the one the model was logged with; a number in [0, 1]) overrides
the score cut-off: ``{"dataframe_split": {...}, "params": {"score_threshold": 0.05}}``.

Limits (params ``serve``, fixed when the model is logged): at most ``max_rows`` images per request, at most
``max_request_bytes`` of encoded image data per request, at most ``max_image_pixels`` per image (read from each
image's header before decoding). A request over a limit, a bad value or a bad param raises an ``MlflowException``
with ``INVALID_PARAMETER_VALUE``: MLflow 3.17's scoring server answers it with HTTP 400 and a JSON body
``{"error_code", "message"}`` and no ``stack_trace`` (it attaches a full traceback only to exceptions that are
not MlflowExceptions). Its message is ours, prefixed by MLflow with ``Failed to predict data '<input repr>'``.
The scoring server reads the whole body before the model sees it (no size limit of its own), so
``max_request_bytes`` here bounds the decoding work, not the body's memory. `pipelines.serve_model`
(``yolov1 serve-model``) serves the same scoring app behind a body-size limit enforced before the body is read
(HTTP 413); with plain ``mlflow models serve``, put a proxy limit in front (e.g. nginx ``client_max_body_size``).

Weights: the pickled part (python_model.pkl) holds only this class and a few numbers; the weights are the
``weights`` artifact, read in `load_context` with ``torch.load(weights_only=True)`` and validated
(`yolov1.checkpoint.read_weights`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import math
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

OUTPUT_COLUMNS = ["image", "label", "score", "xmin", "ymin", "xmax", "ymax"]
NOT_AN_IMAGE = "expected base64 text of encoded image bytes (JPEG/PNG); server-side paths are not accepted"


class RequestRefused(ValueError):
    """A request the served model refuses; becomes an HTTP 400 with this message only."""


class YoloV1Pyfunc(mlflow.pyfunc.PythonModel):
    """Loads the weights artifact (``weights``) with the library's `Detector` and serves `predict`."""

    def __init__(self, *, score_threshold: float, nms_iou_threshold: float, max_detections: int,
                 max_image_pixels: int, max_rows: int, max_request_bytes: int) -> None:
        # Plain numbers only: this object is what MLflow cloudpickles.
        self.score_threshold = float(score_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections = int(max_detections)
        self.max_image_pixels = int(max_image_pixels)
        self.max_rows = int(max_rows)
        self.max_request_bytes = int(max_request_bytes)
        self._detector = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_detector": None}  # never pickle a loaded net

    def load_context(self, context) -> None:
        import torch

        from yolov1.checkpoint import read_weights
        from yolov1.predict import Detector

        device = "cuda" if torch.cuda.is_available() else "cpu"
        found = read_weights(Path(context.artifacts["weights"]), device=device)  # weights_only=True, validated
        self._detector = Detector(found.model, found.model_cfg, found.classes, score_threshold=self.score_threshold,
                                  nms_iou_threshold=self.nms_iou_threshold, max_detections=self.max_detections,
                                  max_image_pixels=self.max_image_pixels, device=device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            detector = self._with_params(params or {})
            sources = _sources(model_input, self.max_rows, self.max_request_bytes)
            images = [_load(i, s, self.max_image_pixels) for i, s in enumerate(sources)]
        except RequestRefused as err:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        rows = []
        for start in range(0, len(images), 32):
            for k, pred in enumerate(detector.predict_images(images[start : start + 32])):
                for box, score, name in zip(pred.boxes_xyxy, pred.scores, pred.names, strict=True):
                    rows.append((start + k, name, float(score), *(float(v) for v in box)))
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)

    def _with_params(self, params: dict):
        unknown = sorted(set(params) - {"score_threshold"})
        if unknown:
            raise RequestRefused(f"params: unknown {unknown[:3]} (only score_threshold)")
        threshold = params.get("score_threshold")
        if threshold is None:
            return self._detector
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
                or not 0.0 <= threshold <= 1.0:
            raise RequestRefused(f"params.score_threshold: expected a number in [0, 1], got {str(threshold)[:20]}")
        detector = copy.copy(self._detector)  # shares the net; the served instance keeps its own threshold
        detector.score_threshold = float(threshold)
        return detector


def _sources(model_input, max_rows: int, max_bytes: int) -> list:
    if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
        values = list(model_input.astype(np.uint8, copy=False))  # (N, H, W, 3) images, in-process callers
    else:
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise RequestRefused("expected a DataFrame with one column 'image' of base64-encoded image bytes")
        values = model_input["image"].tolist()
    if len(values) > max_rows:
        raise RequestRefused(f"{len(values)} images in one request; the limit is {max_rows} (serve.max_rows)")
    total = sum(len(v) if isinstance(v, (str, bytes, bytearray)) else getattr(v, "nbytes", 0) for v in values)
    if total > max_bytes:
        raise RequestRefused(f"{total:,} bytes of image data in one request; the limit is {max_bytes:,} "
                             "(serve.max_request_bytes)")
    return [_decode(i, v) for i, v in enumerate(values)]


def _decode(row: int, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, str):
        raise RequestRefused(f"row {row}: {NOT_AN_IMAGE}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(f"row {row}: {NOT_AN_IMAGE}") from None


def _load(row: int, source, max_pixels: int):
    from yolov1.predict import ImageError, load_image

    try:
        return load_image(source, max_pixels=max_pixels, name=f"row {row}")
    except ImageError as err:
        if "not a recognised image format" in str(err) or "empty file" in str(err):
            raise RequestRefused(f"row {row}: {NOT_AN_IMAGE}") from None  # the same words as bad base64
        raise RequestRefused(str(err)) from None
    except ValueError as err:  # an in-process array of the wrong shape or dtype
        raise RequestRefused(f"row {row}: {err}") from None


def example_input(image_path: Path) -> pd.DataFrame:
    """A one-image input example in the HTTP form (base64 text)."""
    return pd.DataFrame({"image": [base64.b64encode(image_path.read_bytes()).decode("ascii")]})


def log_pyfunc(weights_path: Path, *, example_image: Path, score_threshold: float, nms_iou_threshold: float,
               max_detections: int, serve=None, name: str = "model"):
    """Log the model to the active run as a self-contained pyfunc (library code bundled); returns ModelInfo.

    `serve` is params' ``serve`` section (limits); without it the image limit stored in the weights file and
    the defaults of params.yaml apply (64 rows, 50 MB).
    """
    import torch
    import torchvision
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema
    from PIL import Image as _PIL  # noqa: F401 (pillow must be importable where the model is served)

    import yolov1

    if serve is not None:
        limits = {"max_image_pixels": serve.max_image_pixels, "max_rows": serve.max_rows,
                  "max_request_bytes": serve.max_request_bytes}
    else:
        from yolov1.checkpoint import read_weights

        stored = read_weights(weights_path).inference or {}
        limits = {"max_image_pixels": stored.get("max_image_pixels", 40_000_000), "max_rows": 64,
                  "max_request_bytes": 50_000_000}
    python_model = YoloV1Pyfunc(score_threshold=score_threshold, nms_iou_threshold=nms_iou_threshold,
                                max_detections=max_detections, **limits)
    example = example_input(example_image)
    # The output schema is written out: inferring it from the example flags the int `image` column with
    # MLflow's "integer column" hint, and that column never holds missing values.
    inferred = infer_signature(example, params={"score_threshold": float(score_threshold)})
    signature = ModelSignature(inputs=inferred.inputs, params=inferred.params, outputs=Schema(
        [ColSpec("long", "image"), ColSpec("string", "label")]
        + [ColSpec("double", c) for c in ("score", "xmin", "ymin", "xmax", "ymax")]))  # OUTPUT_COLUMNS
    import PIL

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
                    f"numpy=={np.__version__}", f"pandas=={pd.__version__}", f"pillow=={PIL.__version__}",
                    f"mlflow=={mlflow.__version__}"]
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=python_model,
        artifacts={"weights": str(weights_path)},
        code_paths=[str(Path(yolov1.__file__).parent), str(Path(__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=requirements,  # explicit: skips MLflow's slow dependency inference
    )
