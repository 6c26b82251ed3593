"""A deterministic generator of small, learnable datasets in exactly PASCAL VOC's on-disk format.

Images are coloured shapes (one shape and colour per class) on textured backgrounds, with VOC XML annotations,
ImageSets lists and a tarball laid out like the official archive, so the demo and the tests run the real pipeline.
The same arguments give byte-identical files.

Class styles (every VOC class has one; the demo uses `DEMO_CLASSES`, whose shapes and colours are all distinct).
``aspect`` is the box width / height the class is drawn at:

class       shape     colour (RGB)       aspect   class       shape     colour (RGB)       aspect
----------- --------- ------------------ ------   ----------- --------- ------------------ ------
aeroplane   cross     white 240,240,240  1        diningtable rectangle orange 245,130,20  2
bicycle     ring      orange 245,130,20  1        dog         circle    red 220,30,30      1
bird        triangle  yellow 240,220,30  1        horse       hexagon   brown 140,80,30    1
boat        diamond   cyan 30,200,220    1.5      motorbike   ring      cyan 30,200,220    1
bottle      rectangle green 30,170,60    0.45     person      rectangle pink 250,150,180   0.4
bus         rectangle purple 130,50,180  2        pottedplant triangle  green 30,170,60    1
car         square    blue 30,70,220     1        sheep       circle    white 240,240,240  1
cat         star      magenta 220,40,200 1        sofa        diamond   pink 250,150,180   1.6
chair       hexagon   red 220,30,30      1        train       cross     blue 30,70,220     1
cow         circle    black 25,25,25     1        tvmonitor   square    black 25,25,25     1

Backgrounds (fixed, part of the dataset's definition): a linear gradient between two muted colours in a random
direction, low-frequency colour noise, 2-5 muted elliptical blobs, and +-16 per-pixel noise over the whole image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

__all__ = ["CLASS_STYLES", "DEMO_CLASSES", "ClassStyle", "generate_voc", "make_tarball", "generate_voc_tarball"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassStyle:
    """How a class is drawn: a shape filling its box, a base colour, and the box's width / height."""

    shape: str
    colour: tuple[int, int, int]
    aspect: float  # box width / height


_WHITE, _ORANGE, _YELLOW, _CYAN = (240, 240, 240), (245, 130, 20), (240, 220, 30), (30, 200, 220)
_GREEN, _PURPLE, _BLUE, _MAGENTA = (30, 170, 60), (130, 50, 180), (30, 70, 220), (220, 40, 200)
_RED, _BLACK, _BROWN, _PINK = (220, 30, 30), (25, 25, 25), (140, 80, 30), (250, 150, 180)

CLASS_STYLES: dict[str, ClassStyle] = {
    "aeroplane": ClassStyle("cross", _WHITE, 1.0),
    "bicycle": ClassStyle("ring", _ORANGE, 1.0),
    "bird": ClassStyle("triangle", _YELLOW, 1.0),
    "boat": ClassStyle("diamond", _CYAN, 1.5),
    "bottle": ClassStyle("rectangle", _GREEN, 0.45),
    "bus": ClassStyle("rectangle", _PURPLE, 2.0),
    "car": ClassStyle("square", _BLUE, 1.0),
    "cat": ClassStyle("star", _MAGENTA, 1.0),
    "chair": ClassStyle("hexagon", _RED, 1.0),
    "cow": ClassStyle("circle", _BLACK, 1.0),
    "diningtable": ClassStyle("rectangle", _ORANGE, 2.0),
    "dog": ClassStyle("circle", _RED, 1.0),
    "horse": ClassStyle("hexagon", _BROWN, 1.0),
    "motorbike": ClassStyle("ring", _CYAN, 1.0),
    "person": ClassStyle("rectangle", _PINK, 0.4),
    "pottedplant": ClassStyle("triangle", _GREEN, 1.0),
    "sheep": ClassStyle("circle", _WHITE, 1.0),
    "sofa": ClassStyle("diamond", _PINK, 1.6),
    "train": ClassStyle("cross", _BLUE, 1.0),
    "tvmonitor": ClassStyle("square", _BLACK, 1.0),
}

DEMO_CLASSES: tuple[str, ...] = ("aeroplane", "bicycle", "bird", "bottle", "car", "cat", "dog")

# Polygons in the unit square, touching all four sides so the drawn shape fills its box.
_STAR_RAW = np.array([
    ((1.0 if k % 2 == 0 else 0.42) * np.sin(k * np.pi / 5), -(1.0 if k % 2 == 0 else 0.42) * np.cos(k * np.pi / 5))
    for k in range(10)
])  # (10, 2) five-pointed star around the origin, first point up
_STAR = [tuple(p) for p in (_STAR_RAW - _STAR_RAW.min(0)) / np.ptp(_STAR_RAW, axis=0)]  # stretched to the unit square
_POLYGONS = {
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "hexagon": [(0.25, 0.0), (0.75, 0.0), (1.0, 0.5), (0.75, 1.0), (0.25, 1.0), (0.0, 0.5)],
    "cross": [(0.33, 0), (0.67, 0), (0.67, 0.33), (1, 0.33), (1, 0.67), (0.67, 0.67), (0.67, 1), (0.33, 1),
              (0.33, 0.67), (0, 0.67), (0, 0.33), (0.33, 0.33)],
    "star": _STAR,
}
_PLACEMENT_TRIES = 20  # an object that finds no place within the overlap bound after this many draws is left out
_MIN_SIDE = 3  # pixels: smaller shapes do not render recognisably


@dataclass(frozen=True)
class _Object:
    class_name: str
    box: tuple[int, int, int, int]  # tight box of the visible pixels, 0-based continuous xyxy
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class _Spec:
    """The per-image drawing arguments of `generate_voc`, validated once."""

    sizes: tuple[tuple[int, int], tuple[int, int]]  # (w_min, w_max), (h_min, h_max), inclusive
    classes: tuple[str, ...]
    max_objects: int
    object_size: tuple[float, float]
    difficult_size: tuple[float, float]
    difficult_fraction: float
    truncated_fraction: float
    max_overhang: float
    max_iou: float
    colour_jitter: int

    def __post_init__(self) -> None:
        (w_lo, w_hi), (h_lo, h_hi) = self.sizes
        if not 16 <= w_lo <= w_hi or not 16 <= h_lo <= h_hi:
            raise ValueError(f"image_size must give sides >= 16 pixels with min <= max, got {self.sizes}")
        unknown = [c for c in self.classes if c not in CLASS_STYLES]
        if not self.classes or unknown or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct VOC class names; got {list(self.classes)} (unknown: {unknown})")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        for label in ("object_size", "difficult_size"):
            lo, hi = getattr(self, label)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{label} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        for label in ("difficult_fraction", "truncated_fraction", "max_iou"):
            if not 0 <= getattr(self, label) <= 1:
                raise ValueError(f"{label} must lie in [0, 1], got {getattr(self, label)}")
        if not 0 <= self.max_overhang < 1:
            raise ValueError(f"max_overhang must lie in [0, 1), got {self.max_overhang}")
        if not 0 <= self.colour_jitter <= 64:
            raise ValueError(f"colour_jitter must lie in [0, 64], got {self.colour_jitter}")


def generate_voc(
    root: Path,
    *,
    num_trainval: int,
    num_test: int,
    image_size: tuple[int, int] | tuple[tuple[int, int], tuple[int, int]],
    seed: int,
    classes: Sequence[str],
    max_objects: int,
    object_size: tuple[float, float],
    difficult_size: tuple[float, float],
    difficult_fraction: float,
    truncated_fraction: float,
    max_overhang: float,
    max_iou: float,
    colour_jitter: int,
    year: int = 2007,
    jpeg_quality: int = 90,
) -> Path:
    """Write a VOC-format dataset under ``root/VOCdevkit/VOC{year}`` and return ``root/VOCdevkit``.

    Layout: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and ``ImageSets/Main/{train,val,trainval,test}.txt``
    (``test.txt`` only when ``num_test > 0``). Ids are VOC-style: ``000001``... for 2007, ``{year}_000001``...
    otherwise; the first ``num_trainval`` ids are trainval (train: even positions, val: odd), the rest test.
    XML boxes are 1-based inclusive integers, exactly as VOC writes them.

    Args:
        image_size: ``(W, H)`` pixels, or ``((w_min, w_max), (h_min, h_max))`` drawn uniformly (inclusive) per image.
        seed: image ``n`` draws from ``numpy.random.default_rng([seed, n])``; same arguments -> byte-identical files.
        classes: VOC class names, keys of `CLASS_STYLES`; each object's class is drawn uniformly among them.
        max_objects: each image gets 1..max_objects objects (uniform), fewer when one finds no place.
        object_size: (min, max) side of an ordinary object, as a fraction of the image's shorter side (the square
            root of its box area before the class aspect is applied).
        difficult_size: (min, max) side of a small object marked ``difficult``, same units.
        difficult_fraction: probability that an object is a small, difficult one.
        truncated_fraction: probability that an (ordinary) object hangs past one border; its box is clipped to
            the visible pixels and it is marked ``truncated``.
        max_overhang: largest fraction of a truncated object's width/height that lies outside the image.
        max_iou: bound on the IoU between any two boxes of an image (larger objects are drawn first, so smaller
            ones stay visible).
        colour_jitter: each object's colour is its class colour +- up to this much per channel.
        year: the VOC year in folder names and ids (presentation).
        jpeg_quality: pillow JPEG quality (presentation).
    """
    if num_trainval < 0 or num_test < 0 or num_trainval + num_test == 0:
        raise ValueError(f"need num_trainval, num_test >= 0 and some images, got {num_trainval}, {num_test}")
    w, h = image_size
    spec = _Spec(
        ((w, w), (h, h)) if isinstance(w, int) and isinstance(h, int) else (tuple(w), tuple(h)),
        tuple(classes), max_objects, tuple(object_size), tuple(difficult_size), difficult_fraction,
        truncated_fraction, max_overhang, max_iou, colour_jitter,
    )
    root = Path(root)
    target = root / "VOCdevkit" / f"VOC{year}"
    if target.exists():
        raise FileExistsError(f"{target}: already exists; generate into an empty root")
    ids = [f"{n:06d}" if year == 2007 else f"{year}_{n:06d}" for n in range(1, num_trainval + num_test + 1)]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=root))
    try:
        voc = staging / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (voc / sub).mkdir(parents=True)
        for number, image_id in enumerate(ids, start=1):
            rng = np.random.default_rng([seed, number])
            (w_lo, w_hi), (h_lo, h_hi) = spec.sizes
            width, height = int(rng.integers(w_lo, w_hi + 1)), int(rng.integers(h_lo, h_hi + 1))
            image, objects = _render_image(rng, width, height, spec)
            image.save(voc / "JPEGImages" / f"{image_id}.jpg", "JPEG", quality=jpeg_quality)
            xml = _annotation_xml(year, image_id, width, height, objects)
            (voc / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
        trainval, test = ids[:num_trainval], ids[num_trainval:]
        splits = {"train": trainval[0::2], "val": trainval[1::2], "trainval": trainval}
        if test:
            splits["test"] = test
        for split, split_ids in splits.items():
            (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in split_ids))
        target.parent.mkdir(exist_ok=True)
        os.replace(voc, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("generated %d trainval + %d test images in %s", num_trainval, num_test, target)
    return root / "VOCdevkit"


def make_tarball(devkit_parent: Path, tar_path: Path) -> str:
    """Pack ``devkit_parent/VOCdevkit`` into a plain .tar with top-level ``VOCdevkit/``, like the official archive.

    Deterministic: members sorted, mtime 0, uid/gid 0, empty user/group names, modes 0755/0644. Written to a temp
    file beside ``tar_path`` and moved into place. Returns the archive's md5 hex digest.
    """
    devkit = Path(devkit_parent) / "VOCdevkit"
    if not devkit.is_dir():
        raise FileNotFoundError(f"{devkit}: no VOCdevkit directory to pack")
    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{tar_path.name}.", dir=tar_path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(devkit):
                dirnames.sort()  # os.walk descends in this order
                directory = Path(dirpath)
                _add_member(tar, directory, directory.relative_to(devkit_parent).as_posix())
                for filename in sorted(filenames):
                    path = directory / filename
                    _add_member(tar, path, path.relative_to(devkit_parent).as_posix())
        digest = _md5(Path(tmp_name))
        os.replace(tmp_name, tar_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return digest


def generate_voc_tarball(tar_path: Path, **kwargs: Any) -> tuple[Path, str, int]:
    """`generate_voc` (same keyword arguments) into a temp dir, then `make_tarball`: returns (path, md5, bytes)."""
    tar_path = Path(tar_path)
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=tar_path.parent if tar_path.parent.exists() else None) as tmp:
        generate_voc(Path(tmp), **kwargs)
        digest = make_tarball(Path(tmp), tar_path)
    return tar_path, digest, tar_path.stat().st_size


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-tone, so backgrounds never look like the saturated class colours."""
    return rng.uniform(70, 180) + rng.uniform(-25, 25, size=3)  # (3,)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Gradient + low-frequency noise, built on a coarse grid and upsampled once (bilinear keeps a gradient exact)."""
    grid = 6
    angle = rng.uniform(0, 2 * np.pi)
    u = np.linspace(0, 1, grid)
    t = u[None, :] * np.cos(angle) + u[:, None] * np.sin(angle)  # (grid, grid)
    t = (t - t.min()) / (t.max() - t.min())
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    coarse = c0 + t[..., None] * (c1 - c0) + rng.uniform(-25, 25, size=(grid, grid, 3))  # (grid, grid, 3)
    image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB").resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.25) * width, rng.uniform(0.05, 0.25) * height
        fill = tuple(int(v) for v in np.clip(_muted_colour(rng), 0, 255))
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
    return image


def _shape_mask(shape: str, width: int, height: int) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    right, bottom = width - 1, height - 1
    if shape in ("square", "rectangle"):
        draw.rectangle((0, 0, right, bottom), fill=255)
    elif shape == "circle":
        draw.ellipse((0, 0, right, bottom), fill=255)
    elif shape == "ring":
        draw.ellipse((0, 0, right, bottom), outline=255, width=max(2, min(width, height) // 5))
    else:
        draw.polygon([(x * right, y * bottom) for x, y in _POLYGONS[shape]], fill=255)
    return mask


def _render_image(rng: np.random.Generator, width: int, height: int, spec: _Spec) -> tuple[Image.Image, list[_Object]]:
    """Draw one image and its objects: (RGB image, list of `_Object` with tight visible boxes)."""
    image = _background(rng, width, height)
    short = min(width, height)
    placed: list[tuple[_Object, tuple[int, int], Image.Image, tuple[int, int, int]]] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        name = spec.classes[int(rng.integers(len(spec.classes)))]
        style = CLASS_STYLES[name]
        difficult = bool(rng.random() < spec.difficult_fraction)
        truncated_wanted = not difficult and bool(rng.random() < spec.truncated_fraction)
        jitter = rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, size=3)
        colour = tuple(int(v) for v in np.clip(np.asarray(style.colour) + jitter, 0, 255))
        for _try in range(_PLACEMENT_TRIES):
            side = rng.uniform(*(spec.difficult_size if difficult else spec.object_size)) * short
            w = int(np.clip(round(side * np.sqrt(style.aspect)), _MIN_SIDE, width))
            h = int(np.clip(round(side / np.sqrt(style.aspect)), _MIN_SIDE, height))
            x0, y0 = _place(rng, w, h, width, height, truncated_wanted, spec.max_overhang)
            mask = _shape_mask(style.shape, w, h)
            obj = _visible_object(name, mask, x0, y0, width, height, difficult)
            if obj is not None and all(_iou(obj.box, other.box) <= spec.max_iou for other, *_ in placed):
                placed.append((obj, (x0, y0), mask, colour))
                break
    # Larger objects first, so a smaller one overlapping it stays visible.
    placed.sort(key=lambda p: -p[2].size[0] * p[2].size[1])
    for _obj, (x0, y0), mask, colour in placed:
        image.paste(colour, (x0, y0, x0 + mask.size[0], y0 + mask.size[1]), mask)
    grain = np.frombuffer(rng.bytes(width * height * 3), dtype=np.uint8) >> 3  # (H * W * 3,) in 0..31
    image = ImageChops.add(image, Image.frombytes("RGB", (width, height), grain.tobytes()), offset=-16)  # +-16, clipped
    return image, [p[0] for p in placed]


def _place(rng, w, h, width, height, truncated, max_overhang) -> tuple[int, int]:
    """Top-left corner (may be negative): inside the image, or past one random border by up to max_overhang."""
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    if truncated and max_overhang > 0:
        side = int(rng.integers(4))
        extent = w if side < 2 else h
        over = max(1, round(rng.uniform(0.05, max_overhang) * extent))
        if side == 0:
            x0 = -over
        elif side == 1:
            x0 = width - w + over
        elif side == 2:
            y0 = -over
        else:
            y0 = height - h + over
    return x0, y0


def _visible_object(name, mask, x0, y0, width, height, difficult) -> _Object | None:
    """The object with the tight box of its in-image pixels; None when none of it shows."""
    w, h = mask.size
    full = mask.getbbox()
    crop = (max(0, -x0), max(0, -y0), min(w, width - x0), min(h, height - y0))
    if full is None or crop[0] >= crop[2] or crop[1] >= crop[3]:
        return None
    visible = mask.crop(crop).getbbox()
    if visible is None:
        return None
    box = (x0 + crop[0] + visible[0], y0 + crop[1] + visible[1], x0 + crop[0] + visible[2], y0 + crop[1] + visible[3])
    # Truncated when some of the shape's own pixels fall outside the image, not merely its box.
    truncated = (box[2] - box[0], box[3] - box[1]) != (full[2] - full[0], full[3] - full[1])
    return _Object(name, box, difficult, truncated)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _annotation_xml(year: int, image_id: str, width: int, height: int, objects: list[_Object]) -> str:
    parts = [
        f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{image_id}.jpg</filename>\n"
        f"\t<source>\n\t\t<database>The VOC{year} Database (synthetic, yolov1.synth)</database>\n"
        f"\t\t<annotation>PASCAL VOC{year}</annotation>\n\t\t<image>synthetic</image>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>0</segmented>\n"
    ]
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        # VOC writes 1-based inclusive pixel corners: continuous [x0, x1) is pixels x0 + 1 .. x1.
        parts.append(
            f"\t<object>\n\t\t<name>{obj.class_name}</name>\n\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(obj.truncated)}</truncated>\n\t\t<difficult>{int(obj.difficult)}</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{x0 + 1}</xmin>\n\t\t\t<ymin>{y0 + 1}</ymin>\n"
            f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def _add_member(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(path), arcname)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if info.isdir() else 0o644
    if info.isfile():
        with path.open("rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
