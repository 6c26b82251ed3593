"""yolov1.predict: image loading from every supported source, preprocessing, and Detector's per-image pixel frames."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from yolov1.checkpoint import CheckpointError, read_weights, save_weights
from yolov1.config import ModelConfig
from yolov1.model import build_model
from yolov1.predict import (
    Detector,
    ImageError,
    InferenceSettings,
    Prediction,
    image_size,
    load_image,
    preprocess,
)

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


# -- hostile images in the library ------------------------------------------------------------------------------


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header says width x height (the pixel data is a stub: the header alone must refuse it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _hostile_files(folder: Path) -> dict[str, bytes]:
    """name -> bytes of every kind of bad input, plus one good PNG ("b_good.png")."""
    jpeg = _jpeg_bytes(_array(60, 80, seed=3))
    return {
        "a_empty.jpg": b"",
        "b_good.png": _png_bytes(_array(48, 64, seed=4)),
        "c_truncated.jpg": jpeg[: len(jpeg) // 2],
        "d_text.jpg": b"this is not an image, only named like one\n" * 4,
        "e_bomb.png": _bomb_png(),
    }


@pytest.mark.parametrize(("name", "words"), [
    ("a_empty.jpg", ["a_empty.jpg", "empty file"]),
    ("c_truncated.jpg", ["c_truncated.jpg", "cannot decode", "truncated"]),
    ("d_text.jpg", ["d_text.jpg", "not a recognised image format"]),
    ("e_bomb.png", ["e_bomb.png", "400,000,000 pixels", "refused before decoding"]),
])
def test_load_image_names_each_hostile_file(tmp_path: Path, name: str, words: list[str]):
    path = tmp_path / name
    path.write_bytes(_hostile_files(tmp_path)[name])
    with pytest.raises(ImageError) as err:
        load_image(path, max_pixels=40_000_000)
    message = str(err.value)
    for word in words:
        assert word in message
    assert "BytesIO" not in message and "Traceback" not in message


def test_pixel_limit_is_read_from_the_header(monkeypatch):
    # Under pillow's own bomb limit but over ours: 8000 x 6000 = 48 M > 40 M. The decoder is never reached.
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded an image that its header already refuses")

    monkeypatch.setattr("yolov1.predict.decode_image", no_decode)
    with pytest.raises(ImageError, match=r"8000x6000 = 48,000,000 pixels exceeds the limit of 40,000,000"):
        load_image(_bomb_png(8000, 6000), max_pixels=40_000_000)
    assert image_size(_bomb_png(8000, 6000)) == (8000, 6000)  # no limit: the size, still without decoding
    with pytest.raises(ImageError, match="<array>: 40x30 pixels exceeds the limit of 1,000"):
        load_image(_array(), max_pixels=1000)  # in-memory inputs are bounded too


def test_detector_refuses_out_of_range_settings():
    for kwargs, key in [({"score_threshold": float("nan")}, "score_threshold"),
                        ({"score_threshold": -0.1}, "score_threshold"), ({"nms_iou_threshold": 1.5}, "nms_iou"),
                        ({"max_detections": 0}, "max_detections"), ({"keep_labels": [3]}, "classes")]:
        options = {"score_threshold": 0.1, "nms_iou_threshold": 0.5, "max_detections": 10, **kwargs}
        with pytest.raises(ValueError, match=key):
            Detector(_OneBox(), TINY, CLASSES, **options)


def test_detector_class_filter_and_input_size():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    keep = Detector(_OneBox(), TINY, CLASSES, score_threshold=0.1, nms_iou_threshold=0.5, max_detections=10,
                    keep_labels=[1])
    drop = Detector(_OneBox(), TINY, CLASSES, score_threshold=0.1, nms_iou_threshold=0.5, max_detections=10,
                    keep_labels=[0, 2])
    assert keep([image])[0].names == ("bicycle",) and drop([image])[0].names == ()
    fc = replace(TINY, head="fc")
    with pytest.raises(ValueError, match="fc head"):
        Detector(_OneBox(), fc, CLASSES, score_threshold=0.1, nms_iou_threshold=0.5, max_detections=1, input_size=224)
    with pytest.raises(ValueError, match="multiple of the net's stride 16"):
        Detector(_OneBox(), TINY, CLASSES, score_threshold=0.1, nms_iou_threshold=0.5, max_detections=1, input_size=120)


# -- checkpoints: validated before anything is allocated --------------------------------------------------------


def _plain_weights(path: Path, **config) -> Path:
    """A small plain-data weights file whose model_config is TINY's with `config` changes and no real tensors."""
    raw = {**asdict(TINY), **config}
    torch.save({"state_dict": {}, "model_config": raw, "classes": list(CLASSES)}, path)
    return path


def test_hostile_checkpoint_config_is_refused_before_allocating(tmp_path: Path):
    import resource

    path = _plain_weights(tmp_path / "huge.pt", variant="yolov1", head="fc", input_size=448, grid_size=7,
                          width_multiplier=8.0, head_hidden=65536)
    assert path.stat().st_size < 2000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(CheckpointError) as err:
        read_weights(path)
    assert str(path) in str(err.value) and "model_config" in str(err.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # nowhere near GBs

    with pytest.raises(CheckpointError, match=r"model_config\.grid_size: expected int, got '7'"):
        read_weights(_plain_weights(tmp_path / "str.pt", grid_size="7"))
    # A plausible config with tensors that do not fit: refused from the shapes, on the meta device.
    with pytest.raises(CheckpointError, match="does not fit"):
        read_weights(_plain_weights(tmp_path / "empty.pt"))


def test_old_weights_without_new_fields_still_load(tmp_path: Path):
    model = build_model(TINY)
    raw = asdict(TINY)
    del raw["backbone"], raw["pretrained"]  # a file written before those fields existed
    path = tmp_path / "old.pt"
    torch.save({"state_dict": model.state_dict(), "model_config": raw, "classes": list(CLASSES)}, path)
    found = read_weights(path)
    assert found.model_cfg == TINY and found.inference is None and found.classes == list(CLASSES)


def test_weights_are_self_describing(tmp_path: Path):
    settings = InferenceSettings(score_threshold=0.25, nms_iou_threshold=0.45, max_detections=7,
                                 max_image_pixels=1_000_000)
    path = save_weights(tmp_path / "w.pt", build_model(TINY), TINY, CLASSES, inference=settings.to_dict())
    detector = Detector.from_weights(path)
    assert (detector.score_threshold, detector.nms_iou_threshold, detector.max_detections,
            detector.max_image_pixels) == (0.25, 0.45, 7, 1_000_000)
    assert detector.classes == CLASSES
    bad = save_weights(tmp_path / "bad.pt", build_model(TINY), TINY, CLASSES,
                       inference={**settings.to_dict(), "score_threshold": float("nan")})
    with pytest.raises(CheckpointError, match=r"bad.pt: inference.score_threshold"):
        Detector.from_weights(bad)
    with pytest.raises(CheckpointError, match="holds no inference settings"):
        Detector.from_weights(save_weights(tmp_path / "old.pt", build_model(TINY), TINY, CLASSES))


# -- the predict command -----------------------------------------------------------------------------------------


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A tiny conv-head net whose scores spread over both signs, saved self-describing (threshold 0)."""
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():
        model.head[-1].weight.mul_(50.0)
    settings = InferenceSettings(score_threshold=0.0, nms_iou_threshold=0.5, max_detections=20,
                                 max_image_pixels=40_000_000)
    return save_weights(tmp_path / "models" / "yolov1.pt", model, TINY, CLASSES, inference=settings.to_dict())


def _predict(argv: list, capsys) -> tuple[int, dict | None, str]:
    from pipelines.predict import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    summary = json.loads(captured.out) if captured.out.strip() else None
    return code, summary, captured.err


def test_predict_skips_names_and_counts_hostile_files(tmp_path: Path, weights: Path, capsys, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in _hostile_files(folder).items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image suffix")  # ignored, and counted
    decoded = []
    real = __import__("yolov1.predict", fromlist=["decode_image"]).decode_image
    monkeypatch.setattr("yolov1.predict.decode_image", lambda data, **kw: decoded.append(len(data)) or real(data, **kw))
    out = tmp_path / "out"
    code, summary, err = _predict([folder, "--model", weights, "--out", out, "--save-txt"], capsys)
    assert code == 0
    assert summary["images"] == 1 and summary["skipped"] == 4 and summary["ignored_non_images"] == 1
    bad = ["a_empty.jpg", "c_truncated.jpg", "d_text.jpg", "e_bomb.png"]
    assert summary["skipped_files"] == [str(folder / n) for n in bad]
    for name in bad:
        assert f"skipped {folder / name}:" in err
    assert "refused before decoding" in err and "Traceback" not in err and "BytesIO" not in err
    assert len(_bomb_png()) not in decoded  # the 20000 x 20000 header was refused before any decoder ran
    assert err.strip().splitlines()[-1] == (
        f"yolov1 predict: 1 images, {summary['detections']} detections, 4 skipped, 1 non-image files ignored -> {out}")
    assert list(json.loads((out / "detections.json").read_text())) == [str(folder / "b_good.png")]
    assert sorted(p.name for p in out.iterdir()) == ["b_good.png", "detections.json", "labels"]


def test_predict_strict_stops_at_the_first_bad_file_keeping_results(tmp_path: Path, weights: Path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png_bytes(_array(seed=1)))
    (folder / "b_text.jpg").write_bytes(b"nope")
    (folder / "c.png").write_bytes(_png_bytes(_array(seed=2)))
    out = tmp_path / "out"
    code, summary, err = _predict([folder, "--model", weights, "--out", out, "--strict", "--batch", "1"], capsys)
    assert code == 2 and summary is None
    assert f"{folder / 'b_text.jpg'}: not a recognised image format" in err and "--strict" in err
    assert list(json.loads((out / "detections.json").read_text())) == [str(folder / "a.png")]  # written already


def test_predict_outputs_agree_and_flags_apply(tmp_path: Path, weights: Path, capsys):
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array(90, 120, seed=5)))  # W 120, H 90
    out = tmp_path / "out"
    code, summary, _ = _predict([image, "--model", weights, "--out", out, "--save-txt", "--save-conf",
                                 "--save-json", "--conf", "0.01", "--max-det", "5", "--device", "cpu"], capsys)
    assert code == 0 and summary["score_threshold"] == 0.01 and summary["max_detections"] == 5
    detections = json.loads((out / "detections.json").read_text())[str(image)]["detections"]
    assert 0 < len(detections) <= 5
    lines = (out / "labels" / "img.txt").read_text().splitlines()
    records = json.loads((out / "predictions.json").read_text())
    assert len(lines) == len(records) == len(detections)
    for line, det, rec in zip(lines, detections, records, strict=True):
        label, cx, cy, w, h, conf = line.split()
        x1, y1, x2, y2 = det["box_xyxy"]
        # YOLO txt: centre and size normalised by W = 120, H = 90 (to the 2-decimal rounding of the JSON).
        assert CLASSES[int(label)] == det["label"] == rec["category"]
        np.testing.assert_allclose([float(cx) * 120, float(cy) * 90, float(w) * 120, float(h) * 90],
                                   [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=0.02)
        assert float(conf) == pytest.approx(det["score"], abs=1e-5) and det["score"] > 0.01
        np.testing.assert_allclose(rec["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.02)
    code, summary, _ = _predict([image, "--model", weights, "--out", tmp_path / "birds", "--classes", "bird"], capsys)
    labels = {d["label"] for d in json.loads((tmp_path / "birds" / "detections.json").read_text())[str(image)]["detections"]}
    assert code == 0 and labels <= {"bird"}


@pytest.mark.parametrize(("flags", "words"), [
    (["--conf", "nan"], ["--conf", "[0, 1]"]),
    (["--iou", "-1"], ["--iou", "[0, 1]"]),
    (["--max-det", "0"], ["--max-det", ">= 1"]),
    (["--classes", "zebra"], ["--classes", "'zebra'"]),
    (["--device", "cuda:7"], ["--device", "cuda:7"]),
    (["--imgsz", "100"], ["imgsz", "stride 16"]),
])
def test_predict_bad_flags_are_one_line_errors(tmp_path: Path, weights: Path, capsys, flags, words):
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array()))
    code, summary, err = _predict([image, "--model", weights, "--out", tmp_path / "o", *flags], capsys)
    assert code == 2 and summary is None and len(err.strip().splitlines()) == 1
    for word in words:
        assert word in err


def test_predict_new_run_folder_each_time_and_never_overwrites(tmp_path: Path, weights: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the weights file describes itself
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array()))
    folders = [_predict([image, "--model", weights], capsys)[1]["out_dir"] for _ in range(2)]
    assert folders == [str(Path("runs/predict/1")), str(Path("runs/predict/2"))]
    code, _, err = _predict([image, "--model", weights, "--out", "runs/predict/1"], capsys)
    assert code == 2 and "exists and is not empty" in err and "--exist-ok" in err
    assert _predict([image, "--model", weights, "--out", "runs/predict/1", "--exist-ok"], capsys)[0] == 0


def test_predict_glob_and_http_sources(tmp_path: Path, weights: Path, capsys):
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "a.png").write_bytes(_png_bytes(_array(seed=1)))
    (served / "big.png").write_bytes(_png_bytes(_array(200, 200, seed=2)))  # over the 20 kB cap below
    (served / "text.png").write_bytes(b"<html>not an image</html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        urls = [f"{base}/a.png", f"{base}/missing.png", f"{base}/big.png", f"{base}/text.png"]
        code, summary, err = _predict([*urls, str(served / "a*.png"), "--model", weights, "--out", tmp_path / "o",
                                       "--max-download-bytes", "20000"], capsys)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0 and summary["images"] == 2 and summary["skipped"] == 3
    assert f"{base}/missing.png: HTTP 404" in err
    assert f"{base}/big.png" in err and "download limit of 20,000" in err
    assert f"{base}/text.png: not a recognised image format" in err
    assert set(json.loads((tmp_path / "o" / "detections.json").read_text())) == {urls[0], str(served / "a.png")}
    assert {p.name for p in (tmp_path / "o").glob("*.png")} == {"a.png", "a_2.png"}  # same stem: not overwritten


def test_predict_hostile_checkpoint_and_old_weights_are_one_line_errors(tmp_path: Path, capsys):
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array()))
    huge = _plain_weights(tmp_path / "huge.pt", width_multiplier=8.0, head_hidden=65536)
    code, _, err = _predict([image, "--model", huge, "--out", tmp_path / "o1"], capsys)
    assert code == 2 and err.startswith(f"yolov1 predict: error: {huge}: model_config.") and len(err.splitlines()) == 1
    old = save_weights(tmp_path / "old.pt", build_model(TINY), TINY, CLASSES)  # no stored thresholds
    code, _, err = _predict([image, "--model", old, "--out", tmp_path / "o2"], capsys)
    assert code == 2 and "holds no thresholds" in err and "--params" in err


def test_predict_registry_uri_without_a_store_creates_nothing(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array()))
    code, _, err = _predict([image, "--model", "models:/yolov1-demo@champion"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no MLflow store at mlflow.db (tracking URI sqlite:///mlflow.db)" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:S3cr3t@127.0.0.1:9/")  # nothing listens on port 9
    # No retry override: the server is probed once before MLflow's client (which retries for minutes) is used.
    code, _, err = _predict([image, "--model", "models:/yolov1-demo@champion"], capsys)  # unreachable server
    assert code == 2 and len(err.strip().splitlines()) == 1 and "S3cr3t" not in err
    assert "MLflow tracking server http://127.0.0.1:9/ cannot be reached" in err


def test_predict_registry_uri_missing_in_an_existing_store(tmp_path: Path, capsys, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=store).search_experiments()  # creates an empty store
    capsys.readouterr()  # its creation log
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array()))
    code, _, err = _predict([image, "--model", "models:/yolov1-demo@champion"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err  # MLflow's INFO lines are not predict's output
    assert f"models:/yolov1-demo@champion: not found in the tracking store {store} (" in err


@pytest.mark.parametrize("content", ["empty", "other-db", "not-a-db"])
def test_predict_registry_uri_on_a_file_that_is_no_mlflow_store_leaves_it_untouched(tmp_path: Path, capsys,
                                                                                     monkeypatch, content):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mlflow.db"
    if content == "empty":
        path.touch()  # what `touch mlflow.db` or an interrupted first run leaves
    elif content == "other-db":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (text TEXT)")
    else:
        path.write_bytes(b"not a database\n" * 10)
    before = path.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array()))
    code, _, err = _predict([image, "--model", "models:/yolov1-demo@champion"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{path} is not an MLflow store" in err and f"sqlite:///{path}" in err
    assert path.read_bytes() == before  # reading never creates MLflow's tables in somebody's file


def test_predict_registry_lookup_keeps_mlflow_info_lines_off_stderr(tmp_path: Path, capsys, monkeypatch):
    # The symptom once seen in the full suite: MLflow's own INFO lines ("Creating initial MLflow database tables...",
    # "Updating database tables") around the one error line. MLflow logs them through its handler straight to
    # stderr; here the lookup emits them itself, then fails as a missing model does.
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=store).search_experiments()
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)

    def chatty_lookup(uri, *args, **kwargs):
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        logging.getLogger("mlflow.store.db.utils").info("Updating database tables")
        raise MlflowException("Registered Model with name=yolov1-demo not found", error_code="RESOURCE_DOES_NOT_EXIST")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", chatty_lookup)
    image = tmp_path / "img.png"
    image.write_bytes(_png_bytes(_array()))
    code, _, err = _predict([image, "--model", "models:/yolov1-demo@champion"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"yolov1 predict: error: models:/yolov1-demo@champion: not found in the tracking store {store} "
        "(Registered Model with name=yolov1-demo not found)"]
    assert logging.getLogger("mlflow").level == logging.INFO  # restored: MLflow's INFO logging is as it was


# -- a real 20000 x 20000 PNG: refused from its header, before any decoder allocates --------------------------------


def write_real_bomb_png(path: Path, width: int = 20000, height: int = 20000) -> int:
    """Write a complete, valid 8-bit greyscale PNG of zeros (width x height); returns its size in bytes.

    The rows (filter byte 0 + `width` zero pixels) are streamed through zlib 256 at a time, so neither this
    function nor the test ever holds the ``width * height`` bytes (400 MB for 20000 x 20000) it describes.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (width + 1)
    compressor = zlib.compressobj(9)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        for start in range(0, height, 256):
            data = compressor.compress(row * min(256, height - start))
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", compressor.flush()) + chunk(b"IEND", b""))
    return path.stat().st_size


def check_real_png(path: Path, width: int, height: int) -> None:
    """The file is a whole image, not a stub: every chunk's CRC holds and its IDAT data inflate (streamed, in
    4 MB pieces) to exactly ``height`` rows of ``width + 1`` zero bytes."""
    import struct
    import zlib

    data = path.read_bytes()
    pos, idat = 8, []
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    inflater, pending, total = zlib.decompressobj(), b"".join(idat), 0
    while pending or not inflater.eof:
        piece = inflater.decompress(pending, 4 << 20)
        pending = inflater.unconsumed_tail
        assert piece.count(0) == len(piece)
        total += len(piece)
        if not piece and not pending:
            break
    assert inflater.eof and total == height * (width + 1)
    assert struct.unpack(">II", data[16:24]) == (width, height)  # IHDR


RSS_SCRIPT = """
import contextlib, io, json, resource, sys
from pipelines.predict import main
weights, good, bomb, out = sys.argv[1:5]
def run(source, folder):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([source, "--model", weights, "--device", "cpu", "--out", folder])
    return code, err.getvalue()
assert run(good, out + "/warm")[0] == 0  # imports, model load, one forward pass: all before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code, err = run(bomb, out + "/bomb")
print("RESULT " + json.dumps({"code": code, "err": err,
                              "growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def test_predict_refuses_a_real_20000x20000_png_without_decoding_it(tmp_path: Path, weights: Path):
    """A real 400-megapixel PNG (~390 KB): `yolov1 predict` names it, names the limit and skips it, and the
    process's peak RSS barely moves (decoding it would take 400 MB as greyscale, 1.2 GB as RGB)."""
    import os
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    size = write_real_bomb_png(bomb)
    assert size < 1_000_000
    check_real_png(bomb, 20000, 20000)
    good = tmp_path / "good.png"
    good.write_bytes(_png_bytes(_array(48, 64, seed=4)))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(weights), str(good), str(bomb), str(tmp_path / "o")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["code"] == 2  # every image skipped
    assert (f"skipped {bomb}: 400,000,000 pixels exceeds the limit of 40,000,000 (serve.max_image_pixels); "
            "refused before decoding") in result["err"], result["err"]
    assert "Traceback" not in result["err"]
    assert result["growth_mb"] < 300, result  # measured growth, bounded generously; a decode would be >= 400 MB
