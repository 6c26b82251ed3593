"""yolov1.predict: image loading from every supported source, preprocessing, and Detector's per-image pixel frames."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from yolov1.config import ModelConfig
from yolov1.model import build_model
from yolov1.predict import Detector, Prediction, load_image, preprocess

CLASSES = ("aeroplane", "bicycle", "bird")
TINY = ModelConfig(variant="fast", input_size=112, grid_size=7, boxes_per_cell=2, num_classes=3, batch_norm=True,
                   width_multiplier=0.125, head="conv", head_hidden=64, dropout=0.0)


def _array(height: int = 30, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_load_image_every_source(tmp_path: Path):
    array = _array()  # (H, W, 3) = (30, 40, 3)
    expected = torch.from_numpy(array).permute(2, 0, 1)  # (3, 30, 40)
    path = tmp_path / "a.png"
    path.write_bytes(_png_bytes(array))  # PNG is lossless: every source must give the same pixels
    bmp = io.BytesIO()
    Image.fromarray(array).save(bmp, format="BMP")  # not decodable by torchvision: the pillow fallback
    sources = {"str path": str(path), "Path": path, "bytes": _png_bytes(array), "bmp bytes": bmp.getvalue(),
               "PIL": Image.fromarray(array), "numpy": array, "tensor": expected.clone()}
    for name, source in sources.items():
        image = load_image(source)
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 30, 40), name
        assert torch.equal(image, expected), name


def test_load_image_never_aliases_read_only_memory():
    # torch cannot protect read-only numpy memory (writing to such a tensor is undefined): pillow's arrays and
    # read-only inputs must be copied.
    read_only = _array()
    read_only.flags.writeable = False
    image = load_image(read_only)
    assert not np.shares_memory(image.numpy(), read_only)
    assert torch.equal(image, torch.from_numpy(_array()).permute(2, 0, 1))
    image.add_(1)  # writable without touching the caller's array
    assert np.array_equal(read_only, _array())


def test_load_image_converts_other_modes():
    gray = Image.fromarray(_array()[..., 0])  # mode "L"
    image = load_image(gray)
    assert tuple(image.shape) == (3, 30, 40)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey -> R = G = B
    rgba = Image.fromarray(np.dstack([_array(), np.full((30, 40), 255, np.uint8)]))  # mode "RGBA"
    assert torch.equal(load_image(rgba), torch.from_numpy(_array()).permute(2, 0, 1))


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (np.zeros((30, 40, 3), dtype=np.float32), ["uint8", "float32"]),
        (np.zeros((30, 40), dtype=np.uint8), ["(H, W, 3)", "(30, 40)"]),
        (np.zeros((30, 40, 4), dtype=np.uint8), ["(H, W, 3)", "(30, 40, 4)"]),
        (torch.zeros(3, 30, 40), ["uint8", "torch.float32"]),
        (torch.zeros(30, 40, 3, dtype=torch.uint8), ["(3, H, W)", "(30, 40, 3)"]),
    ],
)
def test_load_image_rejects_bad_arrays(source, words):
    with pytest.raises(ValueError) as err:
        load_image(source)
    for word in words:
        assert word in str(err.value)


def test_load_image_missing_path(tmp_path: Path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(missing)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(str(missing))


def test_preprocess_shape_dtype_range():
    image = torch.from_numpy(_array(50, 80)).permute(2, 0, 1)  # (3, 50, 80) uint8
    out = preprocess(image, 112)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 112, 112)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # Constant images stay constant, scaled by 1 / 255: 255 -> 1.0, 51 -> 0.2.
    assert torch.allclose(preprocess(torch.full((3, 9, 13), 255, dtype=torch.uint8), 16), torch.ones(3, 16, 16))
    assert torch.allclose(preprocess(torch.full((3, 9, 13), 51, dtype=torch.uint8), 16), torch.full((3, 16, 16), 0.2))


class _OneBox(nn.Module):
    """A fixed output on a 4 x 4 grid: one box in cell (row 1, col 2), predictor 0, conf 0.9, class 1 score 1.

    centre = ((2 + 0.5) / 4, (1 + 0.5) / 4) = (0.625, 0.375); size = (0.5^2, 0.5^2) = (0.25, 0.25)
    -> image-normalised xyxy (0.5, 0.25, 0.75, 0.5); score = 0.9 * 1.
    """

    def __init__(self) -> None:
        super().__init__()
        out = torch.zeros(4, 4, 5 * 2 + 3)
        out[1, 2, 0:5] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9])
        out[1, 2, 10 + 1] = 1.0
        self.register_buffer("out", out)

    def forward(self, images: Tensor) -> Tensor:
        return self.out.expand(images.shape[0], -1, -1, -1)


def _one_box_detector() -> Detector:
    return Detector(_OneBox(), TINY, CLASSES, score_threshold=0.1, nms_iou_threshold=0.5, max_detections=10)


def test_detector_boxes_in_each_images_pixels():
    # The same normalised box lands in each image's own frame: (0.5, 0.25, 0.75, 0.5) * (W, H, W, H).
    wide = np.zeros((100, 200, 3), dtype=np.uint8)  # W 200, H 100 -> (100, 25, 150, 50)
    tall = np.zeros((80, 60, 3), dtype=np.uint8)  # W 60, H 80 -> (30, 20, 45, 40)
    preds = _one_box_detector()([wide, tall])
    assert [(p.width, p.height) for p in preds] == [(200, 100), (60, 80)]
    np.testing.assert_allclose(preds[0].boxes_xyxy, [[100, 25, 150, 50]], atol=1e-4)
    np.testing.assert_allclose(preds[1].boxes_xyxy, [[30, 20, 45, 40]], atol=1e-4)
    for p in preds:
        np.testing.assert_allclose(p.scores, [0.9], rtol=1e-6)
        assert p.labels.tolist() == [1] and p.names == ("bicycle",)


def test_detector_empty_inputs():
    assert _one_box_detector()([]) == []
    nothing = Detector(_OneBox(), TINY, CLASSES, score_threshold=0.95, nms_iou_threshold=0.5, max_detections=10)
    (pred,) = nothing([np.zeros((10, 20, 3), dtype=np.uint8)])  # 0.9 is not above 0.95: no detections
    assert pred.boxes_xyxy.shape == (0, 4) and pred.names == ()
    assert pred.to_dict() == {"width": 20, "height": 10, "detections": []}


@pytest.fixture(scope="module")
def tiny_detector() -> Detector:
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():  # the last layer starts near 0; scale it up so that scores spread over both signs
        model.head[-1].weight.mul_(50.0)
    return Detector(model, TINY, CLASSES, score_threshold=0.0, nms_iou_threshold=0.5, max_detections=20)


def _images(tmp_path: Path) -> list:
    """Five images of different sizes, each from a different kind of source."""
    sizes = [(48, 64), (120, 90), (33, 200), (112, 112), (70, 41)]  # (H, W)
    arrays = [_array(h, w, seed=k) for k, (h, w) in enumerate(sizes)]
    path = tmp_path / "img0.png"
    path.write_bytes(_png_bytes(arrays[0]))
    return [path, _png_bytes(arrays[1]), Image.fromarray(arrays[2]), arrays[3],
            torch.from_numpy(arrays[4]).permute(2, 0, 1).contiguous()]


def test_detector_on_a_network(tiny_detector: Detector, tmp_path: Path):
    sources = _images(tmp_path)
    preds = tiny_detector(sources, batch_size=8)
    assert len(preds) == 5 and all(isinstance(p, Prediction) for p in preds)
    assert sum(len(p.scores) for p in preds) > 0  # the checks below are not vacuous
    for p, source in zip(preds, sources, strict=True):
        image = load_image(source)
        assert (p.height, p.width) == tuple(image.shape[1:])
        d = len(p.scores)
        assert p.boxes_xyxy.shape == (d, 4) and p.labels.shape == (d,) and len(p.names) == d
        assert (p.boxes_xyxy >= 0).all() and (p.boxes_xyxy[:, [0, 2]] <= p.width).all()
        assert (p.boxes_xyxy[:, [1, 3]] <= p.height).all()
        assert (p.boxes_xyxy[:, 2:] >= p.boxes_xyxy[:, :2]).all()
        assert (p.scores > 0).all() and (np.diff(p.scores) <= 0).all() and d <= 20  # sorted, thresholded, capped
        assert p.names == tuple(CLASSES[i] for i in p.labels)
        assert json.loads(json.dumps(p.to_dict())) == p.to_dict()
        assert [det["label"] for det in p.to_dict()["detections"]] == list(p.names)


def test_detector_batch_split_is_invisible(tiny_detector: Detector, tmp_path: Path):
    whole = tiny_detector(_images(tmp_path), batch_size=8)
    split = tiny_detector(_images(tmp_path), batch_size=2)  # batches of 2, 2 and 1
    for a, b in zip(whole, split, strict=True):
        assert a.names == b.names and np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-4)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
