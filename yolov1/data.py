"""The torch Dataset over the prepared VOC tables, with the paper's training augmentation (section 2.2).

Training samples get a random scale and translation, a horizontal flip and a random HSV exposure/saturation change,
done once at the network's input size on tv_tensors (Image, BoundingBoxes); evaluation samples are only resized and
carry their untouched ground truth for mAP. All randomness comes from torch's global RNG, which DataLoader seeds.
Samples are uint8 images, 4x less shared memory between loader workers and the trainer than float32; the consumer
makes them float on its device with `images_to_float`.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image as PILImage
from torch import Tensor
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from yolov1.boxes import normalize_xyxy, xyxy_to_cxcywh
from yolov1.config import AugmentConfig, DataConfig
from yolov1.encode import encode

__all__ = [
    "VOCDetection",
    "AugmentedSample",
    "images_to_float",
    "augment",
    "adjust_hsv",
    "collate_train",
    "collate_eval",
    "worker_init_fn",
    "tune_malloc",
    "read_rgb",
    "available_memory",
    "load_split",
]

logger = logging.getLogger(__name__)

try:  # torchvision 0.29 deprecates its decoders for torchcodec; pillow takes over where they are gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover
    decode_jpeg = None

_IMAGE_COLUMNS = ("image_id", "path", "width", "height")
_OBJECT_COLUMNS = ("image_id", "class_index", "xmin", "ymin", "xmax", "ymax", "difficult")
_JPEG_MAGIC = b"\xff\xd8"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


class AugmentedSample(NamedTuple):
    """A training sample before encoding: image float32 (3, S_in, S_in) in [0, 1]; kept boxes (K, 4) xyxy
    image-normalised; their labels (K,) int64 and difficult flags (K,) bool."""

    image: Tensor
    boxes_xyxy: Tensor
    labels: Tensor
    difficult: Tensor


class VOCDetection(torch.utils.data.Dataset):
    """Images and grid targets from the prepared tables (schema: images.parquet / objects.parquet).

    ``images`` rows are the samples, in order; ``objects`` rows of other images are ignored, so the whole objects
    table can be passed. Image paths are relative to ``root``. Objects marked difficult go into the target
    (S, S, 5 + C) only when ``data_cfg.use_difficult``; evaluation infos always list them, flagged.

    ``train=True``: ``(image, target)`` with the augmentation of `augment`. ``train=False``: no augmentation,
    ``(image, target, info)`` where info is ``{"image_id": str, "width": int, "height": int, "boxes": float32
    (G, 4) pixel xyxy as in the table, "labels": int64 (G,), "difficult": bool (G,)}``. Images are uint8
    (3, input_size, input_size) in [0, 255], resized to a square ignoring the aspect ratio, as in the paper;
    `images_to_float` turns a batch of them into the network's float [0, 1] input (on the device).

    ``data_cfg.cache == "ram"``: every image is decoded once, here, resized to the input square, and kept in one
    uint8 tensor (N, 3, input_size, input_size) that forked loader workers share (its size is logged; 2,000
    images at 112 px take 75 MB, VOC's 16,551 at 448 px 10 GB). Evaluation samples are then identical to
    uncached ones; training samples are too while ``augment.scale`` and ``augment.translate`` are 0, otherwise
    the scale/shift crops from the cached square instead of the full image (as Ultralytics' ``cache=ram`` does).
    """

    def __init__(
        self,
        images: pd.DataFrame,
        objects: pd.DataFrame,
        *,
        root: Path,
        data_cfg: DataConfig,
        input_size: int,
        grid_size: int,
        train: bool,
    ) -> None:
        _check_columns(images, _IMAGE_COLUMNS, "images")
        _check_columns(objects, _OBJECT_COLUMNS, "objects")
        _check_augment(data_cfg.augment)
        if input_size <= 0 or grid_size <= 0:
            raise ValueError(f"input_size and grid_size must be > 0, got {input_size} and {grid_size}")
        self.root = Path(root)
        self.input_size, self.grid_size, self.train = input_size, grid_size, train
        self.num_classes = len(data_cfg.classes)
        self.augment_cfg, self.use_difficult = data_cfg.augment, data_cfg.use_difficult

        # numpy (not object) arrays: forked DataLoader workers then share them without copy-on-refcount.
        ids = images["image_id"].astype(str).to_numpy().astype(str)
        if len(np.unique(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
            raise ValueError(f"images: image_id {dup!r} appears more than once")
        self._image_ids = ids
        self._paths = images["path"].astype(str).to_numpy().astype(str)
        self._sizes = images[["width", "height"]].to_numpy(np.int64)  # (n, 2) W, H
        self._group_objects(objects)
        self._cache = self._build_cache() if data_cfg.cache == "ram" else None  # (n, 3, s, s) uint8 or None

    def _group_objects(self, objects: pd.DataFrame) -> None:
        """Sort objects by image row once, so a sample's objects are the slice offsets[i]:offsets[i + 1]."""
        row = pd.Index(self._image_ids).get_indexer(objects["image_id"].astype(str).to_numpy())  # (M,)
        mine = row >= 0
        order = np.argsort(row[mine], kind="stable")
        row = row[mine][order]
        boxes = objects[["xmin", "ymin", "xmax", "ymax"]].to_numpy(np.float32)[mine][order]  # (K, 4)
        labels = objects["class_index"].to_numpy(np.int64)[mine][order]
        difficult = objects["difficult"].to_numpy().astype(bool)[mine][order]
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"objects: image {self._image_ids[row[k]]}: class_index {labels[k]} is outside "
                             f"[0, {self.num_classes}) (data.classes has {self.num_classes} names)")
        w, h = self._sizes[row, 0], self._sizes[row, 1]
        x1, y1, x2, y2 = boxes.T
        bad = ~((x1 >= 0) & (y1 >= 0) & (x1 < x2) & (y1 < y2) & (x2 <= w) & (y2 <= h))
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"objects: image {self._image_ids[row[k]]}: box {boxes[k].tolist()} is not "
                             f"0 <= xmin < xmax <= {w[k]}, 0 <= ymin < ymax <= {h[k]} (pixel xyxy)")
        self._boxes, self._labels, self._difficult = boxes, labels, difficult
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(self._image_ids)))])
        logger.info("dataset: %d images, %d objects (%d difficult); %d object rows of other images ignored",
                    len(self._image_ids), len(labels), int(difficult.sum()), int((~mine).sum()))

    def __len__(self) -> int:
        return len(self._image_ids)

    def _build_cache(self) -> Tensor:
        """Decode and resize every image to (3, input_size, input_size) uint8, in threads (decoding and resizing
        release the GIL); returns them stacked (N, 3, s, s)."""
        n, size = len(self._image_ids), self.input_size
        nbytes, available = n * 3 * size * size, available_memory()
        if available is not None and nbytes > available:  # refuse now, not after the kernel's OOM killer
            raise ValueError(f"data.cache: ram needs {nbytes / 1e9:.2f} GB for {n} images at {size} px, but only "
                             f"{available / 1e9:.2f} GB of memory is available; set data.cache: none")
        cache = torch.empty(n, 3, size, size, dtype=torch.uint8)
        logger.info("data.cache ram: decoding %d images into %.1f MB of memory", n, nbytes / 1e6)

        def fill(i: int) -> None:
            cache[i] = F.resize(self._read_image(i), [size, size], antialias=True)

        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for _ in pool.map(fill, range(n)):  # iterating re-raises the first error, naming the file
                pass
        return cache

    def _resized(self, i: int) -> Tensor:
        """Image i resized to (3, input_size, input_size) uint8: from the cache, or decoded now."""
        if self._cache is not None:
            return self._cache[i].clone()
        return F.resize(self._read_image(i), [self.input_size] * 2, antialias=True)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Any]]:
        if self.train:
            sample = self._load_augmented(i)
            image = sample.image.mul_(255.0).round_().to(torch.uint8)  # (3, S_in, S_in); float work stays here
            return image, self._encode(sample.boxes_xyxy, sample.labels)
        resized = self._resized(i)  # (3, S_in, S_in) uint8
        boxes, labels, difficult = self._objects(i)
        width, height = (int(v) for v in self._sizes[i])
        used = difficult.logical_not() | self.use_difficult
        boxes_n = normalize_xyxy(boxes[used], width, height).clamp_(0.0, 1.0)  # (K, 4)
        info = {"image_id": str(self._image_ids[i]), "width": width, "height": height,
                "boxes": boxes, "labels": labels, "difficult": difficult}  # fmt: skip
        return resized, self._encode(boxes_n, labels[used]), info

    def _load_augmented(self, i: int) -> AugmentedSample:
        """The augmented image and its kept boxes (image-normalised xyxy), before encoding; draws from torch's RNG."""
        boxes, labels, difficult = self._objects(i)
        used = difficult.logical_not() | self.use_difficult
        if self._cache is None:
            image, boxes_in = self._read_image(i), boxes[used]
        else:  # the cached square: boxes scaled from the image's W x H to it
            width, height = (float(v) for v in self._sizes[i])
            image = self._cache[i].clone()  # augment must never write into the shared cache
            boxes_in = boxes[used] * boxes.new_tensor([self.input_size / width, self.input_size / height] * 2)
        image, boxes_out, keep = augment(image, boxes_in, self.augment_cfg, self.input_size)
        boxes_n = (boxes_out / self.input_size).clamp_(0.0, 1.0)  # (K', 4)
        return AugmentedSample(image, boxes_n, labels[used][keep], difficult[used][keep])

    def _objects(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """All objects of image i (copies): pixel xyxy (G, 4) float32, labels (G,) int64, difficult (G,) bool."""
        lo, hi = self._offsets[i], self._offsets[i + 1]
        return (torch.tensor(self._boxes[lo:hi]).reshape(-1, 4), torch.tensor(self._labels[lo:hi]),
                torch.tensor(self._difficult[lo:hi]))

    def _encode(self, boxes_xyxy: Tensor, labels: Tensor) -> Tensor:
        encoded = encode(xyxy_to_cxcywh(boxes_xyxy), labels, self.grid_size, self.num_classes)
        if encoded.displaced:
            logger.debug("%d objects displaced by cell collisions", encoded.displaced)
        return encoded.target

    def _read_image(self, i: int) -> Tensor:
        """Decode image i to uint8 RGB (3, H, W); check its size against the table."""
        path = self.root / str(self._paths[i])
        image = read_rgb(path)
        width, height = (int(v) for v in self._sizes[i])
        if image.shape[-2:] != (height, width):
            raise ValueError(f"{path}: decoded size {image.shape[-1]}x{image.shape[-2]} differs from the "
                             f"table's {width}x{height} (image {self._image_ids[i]})")
        return image


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file says kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_rgb(path: Path) -> Tensor:
    """Read an image file as uint8 RGB (3, H, W): libjpeg-turbo via decode_jpeg, pillow for anything else.

    Grayscale and CMYK JPEGs come out as RGB; a JPEG that decode_jpeg refuses is retried with pillow.
    """
    data = Path(path).read_bytes()
    if data[:2] == _JPEG_MAGIC and decode_jpeg is not None:
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            logger.debug("%s: decode_jpeg failed (%s), trying pillow", path, err)
    try:
        with PILImage.open(io.BytesIO(data)) as pil:
            array = np.asarray(pil.convert("RGB"))  # (H, W, 3)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot decode image: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def augment(
    image: Tensor, boxes_xyxy: Tensor, cfg: AugmentConfig, output_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's training augmentation, resizing to ``output_size`` square; draws from torch's global RNG.

    Args:
        image: uint8 (3, H, W).
        boxes_xyxy: (K, 4) pixel xyxy in the image.
    Returns:
        image float32 (3, output_size, output_size) in [0, 1]; the kept boxes (K', 4) pixel xyxy of the output
        image; keep (K,) bool, which input boxes were kept (select labels etc. with it).

    Geometry: the image is scaled about its centre by s ~ U[1 - scale, 1 + scale] and shifted by (tx W, ty H),
    tx, ty ~ U[-translate, translate], on its own W x H canvas (what RandomAffine(scale, translate) does), then
    resized to the output square. It is done in one resample: the part of the image that stays in frame is
    cropped and resized straight to its place in the output (window rounded to whole pixels), the rest padded
    with 0; then a horizontal flip with probability ``hflip``. Boxes go through the same torchvision functional
    ops as tv_tensors.BoundingBoxes, so they follow the rounded transform exactly.

    Box rule: a box is clipped to the part of the image that stays in frame; it is kept if its clipped area is at
    least ``min_visible`` of its area before clipping (an affine scaling keeps area ratios, so this is the visible
    fraction of the transformed, unclipped box) and it is at least 1 output pixel wide and high
    (SanitizeBoundingBoxes(min_size=1)). Dropped boxes are counted in the debug log.

    Colour: `adjust_hsv` at the output resolution, with exposure and saturation factors drawn as Darknet's
    ``rand_scale`` does: f ~ U[1, factor], inverted with probability 1/2, so in [1/factor, factor].
    """
    u = _uniforms(8)
    height, width = image.shape[-2:]
    s = 1.0 + cfg.scale * (2.0 * u[0] - 1.0)
    (sx0, sx1), (dx0, dx1) = _axis_window(width, output_size, s, cfg.translate * (2.0 * u[1] - 1.0))
    (sy0, sy1), (dy0, dy1) = _axis_window(height, output_size, s, cfg.translate * (2.0 * u[2] - 1.0))
    flip = u[3] < cfg.hflip
    exposure = _rand_scale(cfg.exposure, u[4], u[5])
    saturation = _rand_scale(cfg.saturation, u[6], u[7])

    if dx1 <= dx0 or dy1 <= dy0:  # the image left the frame (needs translate > about 1 - scale / 2)
        return (torch.zeros(3, output_size, output_size), boxes_xyxy.new_zeros(0, 4),
                torch.zeros(len(boxes_xyxy), dtype=torch.bool))
    clipped = torch.stack([boxes_xyxy[:, 0].clamp(sx0, sx1), boxes_xyxy[:, 1].clamp(sy0, sy1),
                           boxes_xyxy[:, 2].clamp(sx0, sx1), boxes_xyxy[:, 3].clamp(sy0, sy1)], dim=1)  # (K, 4)
    visible = _area(clipped) / _area(boxes_xyxy).clamp_min(1e-12)  # (K,)

    padding = [dx0, dy0, output_size - dx1, output_size - dy1]  # left, top, right, bottom

    def geometry(inpt: Tensor) -> Tensor:  # the same ops on the image and on the boxes
        out = F.resized_crop(inpt, sy0, sx0, sy1 - sy0, sx1 - sx0, [dy1 - dy0, dx1 - dx0], antialias=True)
        out = F.pad(out, padding, fill=0) if any(padding) else out
        return F.horizontal_flip(out) if flip else out

    out_image = geometry(tv_tensors.Image(image)).as_subclass(Tensor)  # (3, S_in, S_in) uint8
    out_boxes = geometry(tv_tensors.BoundingBoxes(clipped, format="XYXY", canvas_size=(height, width)))
    out_boxes = out_boxes.as_subclass(Tensor).clamp_(0.0, output_size)  # (K, 4); only rounding can stray out
    wh = out_boxes[:, 2:] - out_boxes[:, :2]  # (K, 2)
    keep = (visible >= cfg.min_visible) & (wh >= 1.0).all(dim=1)
    if not keep.all():
        logger.debug("augmentation dropped %d of %d boxes", int((~keep).sum()), len(keep))
    return adjust_hsv(out_image, exposure=exposure, saturation=saturation), out_boxes[keep], keep


def adjust_hsv(image: Tensor, *, exposure: float, saturation: float) -> Tensor:
    """Scale HSV value by ``exposure`` and HSV saturation by ``saturation``, clipping both to [0, 1].

    image: uint8 (3, H, W) RGB, or float in [0, 1] -> float32 (3, H, W) in [0, 1] (so it doubles as ToDtype).
    Exactly RGB -> HSV, S *= saturation, V *= exposure, clip S and V to [0, 1], HSV -> RGB (hue untouched), in
    closed form: every RGB channel is c = V - V S k with k fixed by the hue, so the new channel is
    c' = (V - (V - c) r_s) r_v with r_s = min(saturation, 1 / S) and r_v = min(exposure, 1 / V).
    Not torchvision's adjust_saturation/adjust_brightness, which blend with the luma grayscale in RGB.
    """
    unit = 1.0 / 255.0 if image.dtype == torch.uint8 else 1.0
    out = image.to(torch.float32, copy=True)  # (3, H, W): the only full-size buffer, then updated in place
    if exposure == 1.0 and saturation == 1.0:
        return out.mul_(unit) if unit != 1.0 else out
    r, g, b = image.unbind(0)  # max/min in the input dtype: uint8 planes are 4x less memory traffic
    v = torch.maximum(torch.maximum(r, g), b).to(torch.float32)  # (H, W) V in input units
    r_s: Tensor | float = saturation
    if saturation > 1.0:
        m = torch.minimum(torch.minimum(r, g), b).to(torch.float32)
        r_s = (v / (v - m).clamp_min_(1e-6)).clamp_max_(saturation)  # (H, W) 1 / S capped at the factor
    v.mul_(unit)  # (H, W) V in [0, 1]
    r_v: Tensor | float = exposure
    if exposure > 1.0:
        r_v = v.clamp_min(1e-6).reciprocal_().clamp_max_(exposure)  # (H, W) 1 / V capped at the factor
    # c' = c r_s r_v + V r_v (1 - r_s): a per-pixel gain and offset shared by the three channels.
    offset = v.mul_(r_v).mul_(1.0 - r_s)  # (H, W)
    gain = r_s.mul_(r_v).mul_(unit) if isinstance(r_s, Tensor) else r_s * r_v * unit  # (H, W) or a number
    return out.mul_(gain).add_(offset).clamp_(0.0, 1.0)


def images_to_float(images: Tensor) -> Tensor:
    """A batch (N, 3, H, W) as the network's input: uint8 [0, 255] -> float32 [0, 1] (on the tensor's own
    device: call it after the copy to the GPU, so only bytes cross the bus); float input is returned as is."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images: expected uint8 or a float dtype, got {images.dtype}")
    return images


def collate_train(batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """DataLoader collate for training samples: images (N, 3, S_in, S_in) uint8, targets (N, S, S, 5 + C).

    default_collate stacks straight into shared memory inside a worker, saving a copy on the way to the trainer.
    """
    return default_collate([b[0] for b in batch]), default_collate([b[1] for b in batch])


def collate_eval(batch: list[tuple[Tensor, Tensor, dict[str, Any]]]) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """DataLoader collate for evaluation samples: stacked images and targets, and the infos as a list of N dicts."""
    return default_collate([b[0] for b in batch]), default_collate([b[1] for b in batch]), [b[2] for b in batch]


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker setup: seed `random` and numpy from the worker's torch seed, and `tune_malloc`.

    The augmentation uses torch's RNG only, which DataLoader already seeds per worker from its generator; seeding
    the others keeps any other library randomness reproducible too.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global state is what other libraries draw from)
    tune_malloc()


def tune_malloc() -> bool:
    """Stop glibc from handing freed image-sized buffers back to the OS after every sample (process-wide).

    By default glibc returns large freed blocks to the OS at once, so each sample's fresh buffers (a 448 px float
    image is 2.4 MB) are page-faulted in again: measured here, that made an augmented sample ~1.6x slower. Raises
    the mmap threshold to 32 MiB and the trim threshold to 128 MiB (at most that much freed memory stays
    reserved). Returns False, changing nothing, where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20))
    except (OSError, AttributeError):
        return False


def load_split(prepared_dir: Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images of ``split`` ("train"/"test") from ``prepared_dir/images.parquet`` and their objects rows."""
    prepared_dir = Path(prepared_dir)
    images = pd.read_parquet(prepared_dir / "images.parquet")
    _check_columns(images, ("split",), str(prepared_dir / "images.parquet"))
    selected = images[images["split"] == split].reset_index(drop=True)
    if selected.empty:
        raise ValueError(f"{prepared_dir / 'images.parquet'}: no images with split {split!r} "
                         f"(splits present: {sorted(images['split'].unique().tolist())})")
    objects = pd.read_parquet(prepared_dir / "objects.parquet")
    _check_columns(objects, ("image_id",), str(prepared_dir / "objects.parquet"))
    return selected, objects[objects["image_id"].isin(selected["image_id"])].reset_index(drop=True)


def _axis_window(size: int, out: int, scale: float, shift: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """One axis of the scale-and-shift: the source pixels [s0, s1) that stay in frame and where they land [d0, d1).

    The image axis [0, size] lands on [lo, hi] = out * (0.5 -+ scale / 2 + shift) of the output axis [0, out].
    """
    lo, hi = out * (0.5 - scale / 2 + shift), out * (0.5 + scale / 2 + shift)
    d0, d1 = min(max(round(lo), 0), out), min(max(round(hi), 0), out)
    per_out = size / (hi - lo)  # source pixels per output pixel
    s0 = min(max(round((d0 - lo) * per_out), 0), size)
    s1 = min(max(round((d1 - lo) * per_out), 0), size)
    if s1 <= s0:
        return (0, 0), (0, 0)
    return (s0, s1), (d0, d1)


def _uniforms(n: int) -> list[float]:
    """n draws from U[0, 1) off torch's global RNG (seeded per DataLoader worker); one call per sample."""
    return torch.rand(n).tolist()


def _rand_scale(factor: float, u_size: float, u_invert: float) -> float:
    """Darknet's rand_scale: U[1, factor], inverted half of the time."""
    f = 1.0 + (factor - 1.0) * u_size
    return f if u_invert < 0.5 else 1.0 / f


def _area(boxes_xyxy: Tensor) -> Tensor:
    return (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]).clamp_min(0) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1]).clamp_min(0)


def _check_augment(cfg: AugmentConfig) -> None:
    checks = {"scale": 0.0 <= cfg.scale < 1.0, "translate": 0.0 <= cfg.translate, "exposure": cfg.exposure >= 1.0,
              "saturation": cfg.saturation >= 1.0, "hflip": 0.0 <= cfg.hflip <= 1.0,
              "min_visible": 0.0 <= cfg.min_visible <= 1.0}  # fmt: skip
    rule = {"scale": "in [0, 1)", "translate": ">= 0", "exposure": ">= 1", "saturation": ">= 1",
            "hflip": "in [0, 1]", "min_visible": "in [0, 1]"}  # fmt: skip
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"data.augment.{key}: must be {rule[key]}, got {getattr(cfg, key)!r}")


def _check_columns(table: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing} (has {list(table.columns)})")
