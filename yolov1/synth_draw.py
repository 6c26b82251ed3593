"""How a synthetic VOC image is drawn: one shape and colour per class on a textured background, with tight boxes.

`render_sample` turns (seed key, size, `DrawSpec`) into JPEG bytes and VOC XML; `yolov1.synth` lays the samples
out as a VOC devkit or official-looking archives. Same arguments, same bytes.

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

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

__all__ = ["CLASS_STYLES", "DEMO_CLASSES", "ClassStyle", "DrawSpec", "DrawnObject", "render_sample"]


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
class DrawnObject:
    """One drawn object as its annotation states it."""

    class_name: str
    box: tuple[int, int, int, int]  # tight box of the visible pixels, 0-based continuous xyxy
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class DrawSpec:
    """The per-image drawing arguments (see `yolov1.synth.generate_voc` for each), validated once."""

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



def render_sample(key: tuple[int, ...], year: int, image_id: str, spec: DrawSpec,
                  jpeg_quality: int) -> tuple[bytes, str, tuple[DrawnObject, ...]]:
    """One image: (JPEG bytes, VOC XML text, its objects); a pure function of its arguments.

    Everything random (size, background, objects) comes from ``numpy.random.default_rng(key)``, so images can be
    drawn in any order or process. The XML holds 1-based inclusive integer boxes, exactly as VOC writes them;
    `DrawnObject.box` is the same box as 0-based continuous xyxy pixels.
    """
    rng = np.random.default_rng(list(key))
    (w_lo, w_hi), (h_lo, h_hi) = spec.sizes
    width, height = int(rng.integers(w_lo, w_hi + 1)), int(rng.integers(h_lo, h_hi + 1))
    image, objects = _render_image(rng, width, height, spec)
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=jpeg_quality)
    return jpeg.getvalue(), _annotation_xml(year, image_id, width, height, objects), tuple(objects)


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
        fill = tuple(int(min(max(v, 0), 255)) for v in _muted_colour(rng))  # scalar clamps: np.clip is slow here
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


def _render_image(rng: np.random.Generator, width: int, height: int, spec: DrawSpec) -> tuple[Image.Image, list[DrawnObject]]:
    """Draw one image and its objects: (RGB image, list of `DrawnObject` with tight visible boxes)."""
    image = _background(rng, width, height)
    short = min(width, height)
    placed: list[tuple[DrawnObject, tuple[int, int], Image.Image, tuple[int, int, int]]] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        name = spec.classes[int(rng.integers(len(spec.classes)))]
        style = CLASS_STYLES[name]
        difficult = bool(rng.random() < spec.difficult_fraction)
        truncated_wanted = not difficult and bool(rng.random() < spec.truncated_fraction)
        jitter = rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, size=3)
        colour = tuple(int(min(max(c + j, 0), 255)) for c, j in zip(style.colour, jitter.tolist(), strict=True))
        root_aspect = np.sqrt(style.aspect)
        for _try in range(_PLACEMENT_TRIES):
            side = rng.uniform(*(spec.difficult_size if difficult else spec.object_size)) * short
            w = min(max(int(round(side * root_aspect)), _MIN_SIDE), width)
            h = min(max(int(round(side / root_aspect)), _MIN_SIDE), height)
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


def _visible_object(name, mask, x0, y0, width, height, difficult) -> DrawnObject | None:
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
    return DrawnObject(name, box, difficult, truncated)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _annotation_xml(year: int, image_id: str, width: int, height: int, objects: list[DrawnObject]) -> str:
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

