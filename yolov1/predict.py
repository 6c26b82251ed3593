"""Prediction on arbitrary images: load, preprocess exactly as evaluation does, run the net, decode to pixels.

`Detector` is what the CLI's `predict`, the MLflow pyfunc model and the pictures use. Boxes come out as
continuous 0-based pixel xyxy in each input image's own frame, labels as class names.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from yolov1.boxes import denormalize_xyxy
from yolov1.config import ModelConfig
from yolov1.encode import decode

ImageSource = str | Path | bytes | np.ndarray | Image.Image | Tensor


@dataclass(frozen=True)
class Prediction:
    """Detections of one image: boxes (D, 4) pixel xyxy float32, scores (D,), label indices (D,) and names."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    width: int
    height: int

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "detections": [
                {"label": n, "score": round(float(s), 5), "box_xyxy": [round(float(v), 2) for v in b]}
                for b, s, n in zip(self.boxes_xyxy, self.scores, self.names, strict=True)
            ],
        }


def load_image(source: ImageSource) -> Tensor:
    """Any supported image source -> uint8 RGB tensor (3, H, W).

    Accepts a path, encoded bytes (JPEG/PNG), a PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor.
    """
    if isinstance(source, Tensor):
        if source.dtype != torch.uint8 or source.ndim != 3 or source.shape[0] != 3:
            raise ValueError(f"image tensor must be uint8 (3, H, W), got {source.dtype} {tuple(source.shape)}")
        return source
    if isinstance(source, Image.Image):
        source = np.asarray(source.convert("RGB"))
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"image array must be uint8 (H, W, 3), got {source.dtype} {source.shape}")
        # np.require: a read-only array (pillow's, or np.asarray of one) is copied; torch needs writable memory.
        return torch.from_numpy(np.require(source, requirements=("C", "W"))).permute(2, 0, 1)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image")
        data = path.read_bytes()
    else:
        data = bytes(source)
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        # torchvision decodes JPEG/PNG/GIF/WEBP; pillow covers the rest (BMP, TIFF, ...).
        with Image.open(io.BytesIO(data)) as img:
            return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def preprocess(image: Tensor, input_size: int) -> Tensor:
    """uint8 (3, H, W) -> float32 (3, input_size, input_size) in [0, 1]: the paper's plain resize, no letterbox."""
    resized = TF.resize(image, [input_size, input_size], antialias=True)
    return resized.float().div_(255.0)


class Detector:
    """A trained YOLOv1 ready to predict: model in eval mode plus the decode thresholds."""

    def __init__(self, model: nn.Module, model_cfg: ModelConfig, classes: Sequence[str], *,
                 score_threshold: float, nms_iou_threshold: float, max_detections: int,
                 device: torch.device | str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.model_cfg = model_cfg
        self.classes = tuple(classes)
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self.device = torch.device(device)

    @torch.inference_mode()
    def predict_tensors(self, batch: Tensor) -> list:
        """Preprocessed float batch (N, 3, input_size, input_size) -> decoded detections (image-normalised xyxy)."""
        preds = self.model(batch.to(self.device, non_blocking=True))  # (N, S, S, 5B + C)
        return decode(preds, boxes_per_cell=self.model_cfg.boxes_per_cell, num_classes=self.model_cfg.num_classes,
                      score_threshold=self.score_threshold, nms_iou_threshold=self.nms_iou_threshold,
                      max_detections=self.max_detections)

    def __call__(self, sources: Sequence[ImageSource], batch_size: int = 32) -> list[Prediction]:
        """Images of any size -> one `Prediction` per image, boxes in that image's pixels."""
        out: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            images = [load_image(s) for s in sources[start : start + batch_size]]
            batch = torch.stack([preprocess(img, self.model_cfg.input_size) for img in images])
            for img, det in zip(images, self.predict_tensors(batch), strict=True):
                height, width = int(img.shape[1]), int(img.shape[2])
                boxes = denormalize_xyxy(det.boxes_xyxy.float().cpu(), width, height).numpy()
                labels = det.labels.cpu().numpy()
                out.append(Prediction(boxes, det.scores.float().cpu().numpy(), labels,
                                      tuple(self.classes[i] for i in labels), width, height))
        return out
