"""yolov1.plots: boxes drawn where they belong, grid arithmetic, and PNG writers that are atomic."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov1 import plots
from yolov1.plots import class_colour, draw_boxes, image_grid, plot_loss_curves, plot_pr_curves, save_image

GREY = (40, 40, 40)
NAMES = ("aeroplane", "bicycle", "bird")


def _grey(width: int = 200, height: int = 150) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def _colours(image: Image.Image) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.asarray(image.convert("RGB")).reshape(-1, 3).tolist()))


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        img.load()  # decodes every byte: a truncated file fails here
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left beside it


def test_draw_boxes_outline_and_nothing_else():
    image = _grey()
    # One prediction (class 2) at (50, 40)-(150, 110) with its label above it; one ground truth far from it.
    out = draw_boxes(image, np.array([[50.0, 40.0, 150.0, 110.0]]), np.array([2]), NAMES, scores=np.array([0.87]),
                     gt_boxes_xyxy=np.array([[10.0, 120.0, 40.0, 145.0]]))
    assert out is not image and out.size == image.size and out.mode == "RGB"
    assert _colours(image) == {GREY}  # the input is untouched
    colour = class_colour(2)
    # Outline width max(2, round(200 / 200)) = 2 pixels, drawn inward from the box edges.
    for xy in [(50, 75), (51, 75), (149, 75), (100, 40), (100, 109)]:
        assert out.getpixel(xy) == colour, xy
    assert out.getpixel((10, 130)) == (255, 255, 255)  # ground truth: thin white outline
    assert out.getpixel((100, 75)) == GREY  # inside the box: outline only
    for xy in [(195, 5), (190, 140), (5, 5), (100, 130)]:  # far from both boxes and from the label
        assert out.getpixel(xy) == GREY, xy
    # The label "bird 0.87" sits on a filled patch of the class colour just above the box (y 28..40).
    label = np.asarray(out)[28:40, 50:100]
    assert (label == colour).all(axis=-1).sum() > 50


def test_draw_boxes_empty_and_grey_input():
    gray = Image.new("L", (30, 20), 7)
    out = draw_boxes(gray, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), NAMES)
    assert out.mode == "RGB" and out.size == (30, 20) and _colours(out) == {(7, 7, 7)}


def test_labels_are_drawn_after_every_box():
    # Box A's label sits just above it (y < 60); box B's top edge runs along y = 50 right through that label.
    # Labels are drawn after all boxes, so B's line is hidden behind A's label patch, not drawn over it.
    image = _grey(300, 200)
    boxes = np.array([[40.0, 60.0, 200.0, 180.0], [20.0, 50.0, 280.0, 190.0]])
    out = draw_boxes(image, boxes, np.array([0, 1]), NAMES, scores=np.array([0.9, 0.4]))
    a, b = class_colour(0), class_colour(1)
    patch = np.asarray(out)[48:59, 45:80]  # inside A's label patch (y 47..59), across B's top edge at y 50..51
    assert (patch == b).all(axis=-1).sum() == 0  # no pixel of B's line crosses the label
    assert (patch == a).all(axis=-1).sum() > 150  # the patch is A's colour (the rest is the text)
    assert (np.asarray(out)[50:52, 21:39] == b).all()  # B's top edge, left of the label, is drawn
    assert out.getpixel((279, 120)) == b  # B's right edge (x 279..280) is drawn where no label is


def test_label_font_grows_with_the_image():
    assert plots.label_font_size(100, 80) == 10  # the floor
    assert plots.label_font_size(448, 448) == 13  # 0.03 x 448 = 13.4
    assert plots.label_font_size(2000, 1500) == 60
    # The label patch of a 2000 px image is ~6x taller than that of a 300 px one (font 60 vs 10).
    heights = []
    for side in (300, 2000):
        out = draw_boxes(_grey(side, side), np.array([[side / 4, side / 2, side / 2, side * 0.9]]), np.array([0]),
                         NAMES, scores=np.array([0.5]))
        column = np.asarray(out)[: side // 2, int(side / 4) + 2]  # a column through the label, above the box
        heights.append(int((column == class_colour(0)).all(axis=-1).sum()))
    assert heights[1] > 4 * heights[0] > 0, heights


def test_missing_font_falls_back_to_the_bitmap_font(monkeypatch, caplog):
    monkeypatch.setattr(plots, "_FONT_FILE", "no-such-font-xyz.ttf")
    out = draw_boxes(_grey(), np.array([[50.0, 40.0, 150.0, 110.0]]), np.array([1]), NAMES, scores=np.array([0.5]))
    assert (np.asarray(out)[25:40, 50:100] == class_colour(1)).all(axis=-1).sum() > 20  # a label is still drawn
    assert "no-such-font-xyz.ttf not found" in caplog.text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int):
    old = os.umask(umask)
    try:
        save_image(_grey(8, 8), tmp_path / "a.png")
        plot_loss_curves([{"step": 1, "total": 1.0}], tmp_path / "loss.png", keys=("total",))
    finally:
        os.umask(old)
    for name in ("a.png", "loss.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_image_grid_arithmetic():
    # 5 images, 2 columns -> ceil(5 / 2) = 3 rows of 64 px cells: 128 x 192.
    red = Image.new("RGB", (200, 100), (255, 0, 0))
    grid = image_grid([red] * 5, cols=2, cell=64)
    assert grid.size == (2 * 64, 3 * 64)
    # A 200 x 100 image fits a 60 x 60 box as 60 x 30, centred: cell 0 spans x 2..61, y 17..46.
    assert grid.getpixel((32, 32)) == (255, 0, 0)
    assert grid.getpixel((32, 5)) == (24, 24, 24)  # above the thumbnail: aspect kept, not stretched
    assert grid.getpixel((64 + 32, 2 * 64 + 32)) == (24, 24, 24)  # the sixth cell is empty
    assert image_grid([], cols=4, cell=32).size == (4 * 32, 32)  # no images: one empty row


def _pr_inputs():
    precision = [np.array([1.0, 0.5]), np.array([]), np.array([1.0, 1.0, 0.6667])]
    recall = [np.array([0.5, 0.5]), np.array([]), np.array([1 / 3, 2 / 3, 2 / 3])]
    ap = np.array([0.5, np.nan, 0.667])  # bicycle has no ground truth: NaN AP, empty curve
    return precision, recall, ap


def test_plot_pr_curves_writes_png_without_nan_classes(tmp_path: Path, monkeypatch):
    legends = []
    save = plots._save

    def spy(fig, path):
        legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    path = tmp_path / "new" / "pr.png"  # the folder is created
    plot_pr_curves(*_pr_inputs(), NAMES, path, title="PR")
    _assert_png(path)
    assert legends == [["aeroplane 0.500", "bird 0.667"]]


def test_plot_pr_curves_without_any_curve(tmp_path: Path, recwarn):
    # No class has ground truth (or no detections yet): an empty, legend-free figure, no matplotlib warning.
    nan = np.array([np.nan])
    path = tmp_path / "pr.png"
    plot_pr_curves([nan[:0]] * 3, [nan[:0]] * 3, np.full(3, np.nan), NAMES, path, title="PR")
    _assert_png(path)
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_plot_loss_curves_writes_png(tmp_path: Path):
    keys = ("total", "coord")
    history = [{"step": s, "total": 10.0 / s, "coord": 1.0 / s} for s in range(1, 6)]
    path = tmp_path / "loss.png"
    plot_loss_curves(history, path, keys=keys)
    _assert_png(path)
    empty = tmp_path / "empty" / "loss.png"
    plot_loss_curves([], empty, keys=keys)  # before the first logged step: an empty plot, not an error
    _assert_png(empty)


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch):
    import matplotlib.figure

    path = tmp_path / "pr.png"
    save_image(_grey(8, 8), path)
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_pr_curves(*_pr_inputs(), NAMES, path, title="PR")
    assert path.read_bytes() == before  # the finished file is never replaced by a broken one
    assert [p.name for p in tmp_path.iterdir()] == ["pr.png"]  # and the temp file is gone


def test_save_image_round_trip(tmp_path: Path):
    image = _grey(12, 9)
    path = tmp_path / "a" / "b.png"
    save_image(image, path)
    _assert_png(path)
    with Image.open(path) as img:
        assert img.size == (12, 9) and _colours(img) == {GREY}
