"""Prediction on arbitrary images: check, load, preprocess exactly as evaluation does, run the net, decode to pixels.

`Detector` is what the CLI's `predict`, the MLflow pyfunc model and the pictures use. Boxes come out as
continuous 0-based pixel xyxy in each input image's own frame, labels as class names. Encoded images (paths,
bytes) are checked from their header before any pixel is decoded: an image over ``max_pixels`` (width x height)
or one that is not an image raises `ImageError` naming the source.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from yolov1.boxes import denormalize_xyxy
from yolov1.config import ModelConfig
from yolov1.encode import decode

__all__ = ["Detector", "ImageError", "InferenceSettings", "Prediction", "image_size", "load_image", "preprocess"]

ImageSource = str | Path | bytes | np.ndarray | Image.Image | Tensor


class ImageError(ValueError):
    """An input that is not a decodable image, or one over the pixel limit; the message starts with its name."""


@dataclass(frozen=True)
class InferenceSettings:
    """What a weights file says about its own use (stored by `save_weights`, so predict needs no params file).

    score_threshold: keep detections with class-specific confidence above it, in [0, 1];
    nms_iou_threshold: per-class NMS suppresses IoU above it, in [0, 1]; max_detections: per image, >= 1;
    max_image_pixels: width x height limit checked from an image's header before it is decoded, >= 1.
    """

    score_threshold: float
    nms_iou_threshold: float
    max_detections: int
    max_image_pixels: int

    def __post_init__(self) -> None:
        _check_unit("score_threshold", self.score_threshold)
        _check_unit("nms_iou_threshold", self.nms_iou_threshold)
        for name in ("max_detections", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {str(value)[:40]}")

    @classmethod
    def from_params(cls, eval_cfg: Any, serve_cfg: Any) -> InferenceSettings:
        """From params' ``eval`` (the drawing threshold, NMS, cap) and ``serve`` (image limit) sections."""
        return cls(float(eval_cfg.draw_score_threshold), float(eval_cfg.nms_iou_threshold),
                   int(eval_cfg.max_detections), int(serve_cfg.max_image_pixels))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "inference") -> InferenceSettings:
        """Checked construction from plain data (e.g. a weights file); errors start with ``<where>.<key>``."""
        names = [f.name for f in fields(cls)]
        if not isinstance(raw, Mapping) or set(raw) != set(names):
            got = sorted(map(str, raw))[:8] if isinstance(raw, Mapping) else type(raw).__name__
            raise ValueError(f"{where}: expected the keys {names}, got {got}")
        try:
            return cls(**{n: float(raw[n]) if n.endswith("threshold") and _is_number(raw[n]) else raw[n]
                          for n in names})
        except ValueError as err:
            raise ValueError(f"{where}.{err}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_unit(name: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {str(value)[:40]}")


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


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def image_size(data: bytes, *, name: str = "<bytes>", max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of encoded image bytes, read from the header only (nothing is decoded).

    Raises `ImageError` naming `name` when the bytes are empty or not a recognised image format, or when
    width x height exceeds `max_pixels`.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with Image.open(io.BytesIO(data)) as img:  # lazy: parses the header, decodes no pixel
                width, height = img.size
    except Image.DecompressionBombError as err:  # over 2 x pillow's own limit: refused inside open()
        pixels = _BOMB_PIXELS.search(str(err))
        count = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise ImageError(f"{name}: {count} exceeds the limit of {max_pixels or Image.MAX_IMAGE_PIXELS:,} "
                         "(serve.max_image_pixels); refused before decoding") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"{name}: not a recognised image format ({len(data):,} bytes)") from None
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                         f"{max_pixels:,} (serve.max_image_pixels); refused before decoding")
    return width, height


def load_image(source: ImageSource, *, max_pixels: int | None = None, name: str | None = None) -> Tensor:
    """Any supported image source -> uint8 RGB tensor (3, H, W).

    Accepts a path, encoded bytes (JPEG/PNG/BMP/...), a PIL image, an (H, W, 3) uint8 array or a (3, H, W)
    uint8 tensor. Encoded sources are checked from their header first (`image_size`); a truncated or corrupt
    file raises `ImageError` naming it (`name`, default the path or ``<bytes>``), never a decoder traceback.
    `max_pixels` also bounds in-memory inputs.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
    else:
        image = _from_memory(source)
        if max_pixels is not None and image.shape[1] * image.shape[2] > max_pixels:
            raise ImageError(f"{name or '<array>'}: {image.shape[2]}x{image.shape[1]} pixels exceeds the limit "
                             f"of {max_pixels:,} (serve.max_image_pixels)")
        return image
    image_size(data, name=name, max_pixels=max_pixels)
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        pass  # torchvision decodes JPEG/PNG/GIF/WEBP; pillow covers the rest (BMP, TIFF, ...) and says what broke
    try:
        with Image.open(io.BytesIO(data)) as img:
            return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).split("\n")[0][:120]
        raise ImageError(f"{name}: cannot decode the image ({reason})") from None


def _from_memory(source: np.ndarray | Image.Image | Tensor) -> Tensor:
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
    raise TypeError(f"unsupported image source {type(source).__name__}")


def preprocess(image: Tensor, input_size: int) -> Tensor:
    """uint8 (3, H, W) -> float32 (3, input_size, input_size) in [0, 1]: the paper's plain resize, no letterbox."""
    resized = TF.resize(image, [input_size, input_size], antialias=True)
    return resized.float().div_(255.0)


class Detector:
    """A trained YOLOv1 ready to predict: model in eval mode plus the decode thresholds.

    ``keep_labels`` (class indices) keeps only those classes, before the ``max_detections`` cap (as
    Ultralytics' ``classes``). ``input_size`` runs the net at another square size than it was trained at; only
    a conv head accepts it (its grid grows with the image), and it must be a multiple of the net's stride.
    """

    def __init__(self, model: nn.Module, model_cfg: ModelConfig, classes: Sequence[str], *,
                 score_threshold: float, nms_iou_threshold: float, max_detections: int,
                 device: torch.device | str = "cpu", max_image_pixels: int | None = None,
                 keep_labels: Sequence[int] | None = None, input_size: int | None = None) -> None:
        _check_unit("score_threshold", score_threshold)
        _check_unit("nms_iou_threshold", nms_iou_threshold)
        if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
            raise ValueError(f"max_detections: expected an int >= 1, got {max_detections!r}")
        self.model = model.eval().to(device)
        self.model_cfg = model_cfg
        self.classes = tuple(classes)
        self.score_threshold = float(score_threshold)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections = max_detections
        self.max_image_pixels = max_image_pixels
        self.device = torch.device(device)
        self.keep_labels = None if keep_labels is None else sorted({int(c) for c in keep_labels})
        if self.keep_labels and not 0 <= self.keep_labels[0] <= self.keep_labels[-1] < len(self.classes):
            raise ValueError(f"classes: indices must be in [0, {len(self.classes) - 1}], got {self.keep_labels}")
        self.input_size = self._check_input_size(input_size)

    def _check_input_size(self, size: int | None) -> int:
        cfg = self.model_cfg
        if size is None or size == cfg.input_size:
            return cfg.input_size
        stride = cfg.input_size // cfg.grid_size
        if cfg.head != "conv":
            raise ValueError(f"imgsz: this model has an fc head, which only runs at its trained {cfg.input_size} px")
        if size < stride or size % stride:
            raise ValueError(f"imgsz: must be a positive multiple of the net's stride {stride}, got {size}")
        return size

    @classmethod
    def from_weights(cls, path: str | Path, *, device: torch.device | str = "cpu",
                     settings: InferenceSettings | None = None, **options: Any) -> Detector:
        """A detector from a `save_weights` file, with the thresholds and image limit the file stores.

        `settings` replaces the stored ones (required for files written before they were stored); `options`
        go to the constructor (``keep_labels``, ``input_size``). Raises `CheckpointError` naming the file.
        """
        from yolov1.checkpoint import CheckpointError, read_weights

        found = read_weights(path, device=device)
        if settings is None:
            if found.inference is None:
                raise CheckpointError(f"{path}: holds no inference settings (written before they were stored); "
                                      "give them explicitly (e.g. a params file)")
            try:
                settings = InferenceSettings.from_dict(found.inference)
            except ValueError as err:
                raise CheckpointError(f"{path}: {err}") from None
        return cls(found.model, found.model_cfg, found.classes, score_threshold=settings.score_threshold,
                   nms_iou_threshold=settings.nms_iou_threshold, max_detections=settings.max_detections,
                   max_image_pixels=settings.max_image_pixels, device=device, **options)

    @torch.inference_mode()
    def predict_tensors(self, batch: Tensor) -> list:
        """Preprocessed float batch (N, 3, size, size) -> decoded detections (image-normalised xyxy)."""
        preds = self.model(batch.to(self.device, non_blocking=True))  # (N, S, S, 5B + C)
        if self.keep_labels is None:
            return decode(preds, boxes_per_cell=self.model_cfg.boxes_per_cell, num_classes=self.model_cfg.num_classes,
                          score_threshold=self.score_threshold, nms_iou_threshold=self.nms_iou_threshold,
                          max_detections=self.max_detections)
        # Every NMS survivor first (at most S*S*B*C), then the class filter, then the cap: the cap counts only
        # the kept classes.
        every = preds.shape[1] * preds.shape[2] * self.model_cfg.boxes_per_cell * self.model_cfg.num_classes
        dets = decode(preds, boxes_per_cell=self.model_cfg.boxes_per_cell, num_classes=self.model_cfg.num_classes,
                      score_threshold=self.score_threshold, nms_iou_threshold=self.nms_iou_threshold,
                      max_detections=every)
        keep_set = torch.tensor(self.keep_labels, device=preds.device)
        out = []
        for det in dets:
            keep = torch.isin(det.labels, keep_set).nonzero().flatten()[: self.max_detections]
            out.append(type(det)(det.boxes_xyxy[keep], det.scores[keep], det.labels[keep]))
        return out

    def predict_images(self, images: Sequence[Tensor]) -> list[Prediction]:
        """Loaded uint8 (3, H, W) images, one batch -> one `Prediction` per image, boxes in its own pixels."""
        if not images:
            return []
        batch = torch.stack([preprocess(img, self.input_size) for img in images])  # (N, 3, size, size)
        out = []
        for img, det in zip(images, self.predict_tensors(batch), strict=True):
            height, width = int(img.shape[1]), int(img.shape[2])
            boxes = denormalize_xyxy(det.boxes_xyxy.float().cpu(), width, height).numpy()
            labels = det.labels.cpu().numpy()
            out.append(Prediction(boxes, det.scores.float().cpu().numpy(), labels,
                                  tuple(self.classes[i] for i in labels), width, height))
        return out

    def __call__(self, sources: Sequence[ImageSource], batch_size: int = 32) -> list[Prediction]:
        """Images of any size -> one `Prediction` per image, boxes in that image's pixels.

        Each source is loaded with `load_image` under this detector's ``max_image_pixels``; the first bad one
        raises `ImageError` naming it (the CLI loads images itself to skip and count bad ones instead).
        """
        out: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            images = [load_image(s, max_pixels=self.max_image_pixels) for s in chunk]
            out += self.predict_images(images)
        return out
