"""Pictures people would rather look at than read: boxes drawn on images, PR curves, loss curves.

Drawing uses pillow; curves use matplotlib's non-interactive Agg backend (imported lazily). Every writer saves
atomically (temp file + rename) so a half-written PNG never looks like a finished one.
"""

from __future__ import annotations

import colorsys
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colour(index: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per class index (golden-ratio hue walk)."""
    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: Image.Image, boxes_xyxy: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *,
               scores: np.ndarray | None = None, gt_boxes_xyxy: np.ndarray | None = None) -> Image.Image:
    """Draw predictions (solid, class colour, "name 0.87") and optional ground truth (thin white) on a copy.

    boxes_xyxy: (D, 4) pixel xyxy in this image's frame; labels: (D,) class indices; scores: (D,).
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = max(2, round(max(out.size) / 200))
    for box in np.asarray(gt_boxes_xyxy if gt_boxes_xyxy is not None else np.zeros((0, 4))).reshape(-1, 4):
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
    for i, (box, label) in enumerate(zip(np.asarray(boxes_xyxy).reshape(-1, 4), np.asarray(labels), strict=True)):
        colour = class_colour(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = class_names[int(label)] + (f" {float(scores[i]):.2f}" if scores is not None else "")
        tx, ty = x1, max(0.0, y1 - 12)
        bbox = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle(bbox, fill=colour)
        draw.text((tx, ty), text, fill=(0, 0, 0), font=font)
    return out


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
    """Write a PNG atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        _pyplot().close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
