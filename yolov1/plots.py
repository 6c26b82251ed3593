"""Pictures people would rather look at than read: boxes drawn on images, PR curves, loss curves.

Boxes are drawn with torchvision's ``draw_bounding_boxes``; curves use matplotlib's non-interactive Agg backend (imported lazily). Every writer saves
atomically (temp file + rename) so a half-written PNG never looks like a finished one.
"""

from __future__ import annotations

import colorsys
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFont
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

logger = logging.getLogger(__name__)


def class_colour(index: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per class index (golden-ratio hue walk)."""
    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: Image.Image | Tensor, boxes_xyxy: np.ndarray, labels: np.ndarray,
               class_names: Sequence[str], *, scores: np.ndarray | None = None,
               gt_boxes_xyxy: np.ndarray | None = None) -> Image.Image:
    """Draw predictions (class colour, "name 0.87" label) and optional ground truth (thin white) on a copy.

    image: a PIL image or a uint8 (3, H, W) tensor; boxes_xyxy: (D, 4) pixel xyxy in this image's frame;
    labels: (D,) class indices; scores: (D,). Drawn with ``torchvision.utils.draw_bounding_boxes`` in three
    passes (ground truth, boxes, then every label last, highest score on top) so no box line crosses a label.
    Line width and font size grow with the image (`label_font_size`); the font is DejaVu Sans when installed,
    else pillow's built-in bitmap font.
    """
    from torchvision.utils import draw_bounding_boxes

    pixels = image if isinstance(image, Tensor) else pil_to_tensor(image.convert("RGB"))  # (3, H, W) uint8
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    line = max(2, round(max(width, height) / 200))
    boxes = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4))
    labels = np.asarray(labels).reshape(-1)
    gt = torch.as_tensor(np.asarray(gt_boxes_xyxy if gt_boxes_xyxy is not None else np.zeros((0, 4)),
                                    dtype=np.float32).reshape(-1, 4))
    if len(gt):
        pixels = draw_bounding_boxes(pixels, gt, colors=(255, 255, 255), width=1)
    if len(boxes):
        colours = [class_colour(int(c)) for c in labels]
        pixels = draw_bounding_boxes(pixels, boxes, colors=colours, width=line)
        pixels = _draw_labels(pixels, boxes, labels, class_names, scores, line)
    return to_pil_image(pixels)


def label_font_size(width: int, height: int) -> int:
    """Label font size in pixels for a width x height image: 3% of the longer side, at least 10."""
    return max(10, round(0.03 * max(width, height)))


def _draw_labels(pixels: Tensor, boxes: Tensor, labels: np.ndarray, class_names: Sequence[str],
                 scores: np.ndarray | None, line: int) -> Tensor:
    """Every label on a filled patch of its class colour, just above its box (inside it at the top edge)."""
    from torchvision.utils import draw_bounding_boxes

    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    size = label_font_size(width, height)
    font_path, font = _font(size)
    order = np.argsort(scores, kind="stable") if scores is not None else np.arange(len(labels))
    anchors, texts, colours, inks = [], [], [], []
    for i in order:  # lowest score first: the best label is drawn last, on top
        text = class_names[int(labels[i])] + (f" {float(scores[i]):.2f}" if scores is not None else "")
        left, top, right, bottom = font.getbbox(text)
        x1, y1 = float(boxes[i, 0]), float(boxes[i, 1])
        # draw_bounding_boxes puts text at (x + 1, y + 1) of the box it is given (its margin for width 0).
        y = y1 - bottom - 3 if y1 - bottom - 3 >= 0 else y1 + line
        x = max(0.0, min(x1, width - right - 3))
        anchors.append([x, y, x, y])
        texts.append(text)
        colour = class_colour(int(labels[i]))
        colours.append(colour)
        inks.append((0, 0, 0) if _luma(colour) > 140 else (255, 255, 255))
    return draw_bounding_boxes(pixels, torch.tensor(anchors), labels=texts, colors=colours, width=0,
                               font=font_path, font_size=size if font_path else None, label_colors=inks,
                               label_background_colors=colours, fill_labels=True)


_FONT_FILE = "DejaVuSans.ttf"  # Debian's fonts-dejavu-core; pillow finds it under /usr/share/fonts


def _font(size: int) -> tuple[str | None, ImageFont.ImageFont | ImageFont.FreeTypeFont]:
    """(file name for torchvision, the same font for measuring), or (None, pillow's bitmap font) without it."""
    try:
        return _FONT_FILE, ImageFont.truetype(_FONT_FILE, size)
    except OSError:
        logger.warning("%s not found: labels use pillow's small bitmap font", _FONT_FILE)
        return None, ImageFont.load_default()


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def image_grid(images: Sequence[Image.Image], *, cols: int, cell: int = 256) -> Image.Image:
    """Tile images (each fitted into a cell x cell square, aspect kept) into one picture."""
    rows = max(1, -(-len(images) // cols))
    grid = Image.new("RGB", (cols * cell, rows * cell), (24, 24, 24))
    for k, img in enumerate(images):
        thumb = img.copy()
        thumb.thumbnail((cell - 4, cell - 4))
        x = (k % cols) * cell + (cell - thumb.width) // 2
        y = (k // cols) * cell + (cell - thumb.height) // 2
        grid.paste(thumb, (x, y))
    return grid


def plot_pr_curves(precision: Sequence[np.ndarray], recall: Sequence[np.ndarray], ap: np.ndarray,
                   class_names: Sequence[str], path: Path, *, title: str) -> None:
    """One PR curve per class (classes with no ground truth are left out) on one figure, saved as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    for c, name in enumerate(class_names):
        if np.isnan(ap[c]) or len(recall[c]) == 0:
            continue
        ax.plot(recall[c], precision[c], color=np.array(class_colour(c)) / 255, label=f"{name} {ap[c]:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.0), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an untrained net may give no curve at all: then no (empty) legend
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    _save(fig, path)


def plot_loss_curves(history: Sequence[Mapping[str, float]], path: Path, *, keys: Sequence[str]) -> None:
    """Training loss components against the global step (``history`` rows hold "step" and each key)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps = [row["step"] for row in history]
    for key in keys:
        ax.plot(steps, [row[key] for row in history], label=key)
    ax.set(xlabel="step", ylabel="loss (per image)", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def save_image(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically, with the permissions of any new file (0666 less the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        _pyplot().close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _temp_beside(path: Path) -> str:
    """A new, empty, uniquely named file next to `path`, created 0666 less the umask (mkstemp's is 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
