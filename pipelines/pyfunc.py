"""The MLflow pyfunc flavour of a trained YOLOv1: a batch of images in, detections out.

Input: a pandas DataFrame with one column ``image``; each value is a path to an image file readable by the
serving process, or the base64 text of the encoded image bytes (JPEG/PNG) — the form to send over HTTP, e.g.
``{"dataframe_split": {"columns": ["image"], "data": [["/9j/4AAQ..."]]}}``. Raw ``bytes`` values and a uint8 numpy
array (N, H, W, 3) are accepted too when calling `predict` in Python.
Output: a DataFrame with one row per detection: ``image`` (row index of the input), ``label`` (VOC class name),
``score``, and ``xmin, ymin, xmax, ymax`` in continuous 0-based pixels of that input image.
Inference param ``score_threshold`` (default: the one the model was logged with) overrides the score cut-off,
e.g. ``{"dataframe_split": {...}, "params": {"score_threshold": 0.05}}``.
"""

from __future__ import annotations

import base64
import binascii
import copy
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

OUTPUT_COLUMNS = ["image", "label", "score", "xmin", "ymin", "xmax", "ymax"]


class YoloV1Pyfunc(mlflow.pyfunc.PythonModel):
    """Loads the weights artifact (``weights``) with the library's `Detector` and serves `predict`."""

    def __init__(self, *, score_threshold: float, nms_iou_threshold: float, max_detections: int) -> None:
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self._detector = None

    def load_context(self, context) -> None:
        import torch

        from yolov1.checkpoint import load_weights
        from yolov1.predict import Detector

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, model_cfg, classes = load_weights(Path(context.artifacts["weights"]), device=device)
        self._detector = Detector(model, model_cfg, classes, score_threshold=self.score_threshold,
                                  nms_iou_threshold=self.nms_iou_threshold, max_detections=self.max_detections,
                                  device=device)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        sources = _sources(model_input)
        detector = self._detector
        threshold = (params or {}).get("score_threshold")
        if threshold is not None and float(threshold) != detector.score_threshold:
            detector = copy.copy(detector)  # shares the net; the served instance keeps its own threshold
            detector.score_threshold = float(threshold)
        rows = []
        for i, pred in enumerate(detector(sources)):
            for box, score, name in zip(pred.boxes_xyxy, pred.scores, pred.names, strict=True):
                rows.append((i, name, float(score), *(float(v) for v in box)))
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def _sources(model_input) -> list:
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 4:
            return list(model_input.astype(np.uint8))
        model_input = pd.DataFrame({"image": list(model_input)})
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
        raise ValueError("expected a DataFrame with an 'image' column (paths or base64-encoded image bytes)")
    return [_decode(v) for v in model_input["image"].tolist()]


def _decode(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        return value
    text = str(value)
    if len(text) < 4096 and Path(text).is_file():
        return Path(text)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"image value is neither an existing file nor base64 image bytes: {text[:60]!r}") from None


def example_input(image_path: Path) -> pd.DataFrame:
    """A one-image input example in the HTTP form (base64 text)."""
    return pd.DataFrame({"image": [base64.b64encode(image_path.read_bytes()).decode("ascii")]})


def log_pyfunc(weights_path: Path, *, example_image: Path, score_threshold: float, nms_iou_threshold: float,
               max_detections: int, name: str = "model"):
    """Log the model to the active run as a self-contained pyfunc (library code bundled); returns ModelInfo."""
    import torch
    import torchvision
    from mlflow.models import infer_signature
    from PIL import Image as _PIL  # noqa: F401 (pillow must be importable where the model is served)

    import yolov1

    python_model = YoloV1Pyfunc(score_threshold=score_threshold, nms_iou_threshold=nms_iou_threshold,
                                max_detections=max_detections)
    example = example_input(example_image)
    output = pd.DataFrame({"image": [0], "label": ["cat"], "score": [0.9], "xmin": [0.0], "ymin": [0.0],
                           "xmax": [1.0], "ymax": [1.0]})
    signature = infer_signature(example, output, params={"score_threshold": float(score_threshold)})
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
