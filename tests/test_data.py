"""Tests for yolov1.data: shapes, augmentation geometry and colour, box rules, seeding, eval ground truth."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from yolov1 import data
from yolov1.boxes import xyxy_to_cxcywh
from yolov1.config import AugmentConfig, DataConfig
from yolov1.data import (
    VOCDetection,
    adjust_hsv,
    augment,
    collate_eval,
    collate_train,
    images_to_float,
    load_split,
    read_rgb,
    worker_init_fn,
)
from yolov1.encode import encode

# torchvision 0.29 deprecates its image decoders in favour of torchcodec; decode_jpeg still works and is used on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CLASSES = ("red", "green", "blue")
GRAY, RED, GREEN = (128, 128, 128), (200, 30, 30), (30, 170, 60)
W, H, SIZE, GRID = 160, 120, 96, 4  # a small image, resized to 96 px, 4 x 4 grid


def _augment_cfg(**overrides) -> AugmentConfig:
    values = dict(scale=0.2, translate=0.2, exposure=1.5, saturation=1.5, hflip=0.5, min_visible=0.25)
    return AugmentConfig(**{**values, **overrides})


def _data_cfg(use_difficult: bool = False, cache: str = "none", **augment_overrides) -> DataConfig:
    return DataConfig(root="unused", archives=(), train_sets=("2007/trainval",), test_sets=("2007/test",),
                      classes=CLASSES, use_difficult=use_difficult, on_bad_object="error",
                      augment=_augment_cfg(**augment_overrides), cache=cache)  # fmt: skip


def _write_image(path: Path, rects: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]],
                 size: tuple[int, int] = (W, H), mode: str = "RGB", fmt: str = "JPEG") -> None:
    """A neutral gray image with solid rectangles; rect (x1, y1, x2, y2) covers pixel columns x1..x2-1."""
    array = np.full((size[1], size[0], 3), GRAY, dtype=np.uint8)
    for (x1, y1, x2, y2), colour in rects:
        array[y1:y2, x1:x2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    image = image.convert(mode) if mode != "RGB" else image
    image.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _tables(tmp_path: Path, images: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """images: [{"id", "rects": [(box, colour, label, difficult)]}] -> files under tmp_path; the two tables."""
    image_rows, object_rows = [], []
    for spec in images:
        rel = f"JPEGImages/{spec['id']}.jpg"
        _write_image(tmp_path / rel, [(box, colour) for box, colour, _, _ in spec["rects"]])
        image_rows.append({"image_id": spec["id"], "split": "train", "year": 2007, "path": rel,
                           "width": W, "height": H})  # fmt: skip
        for box, _, label, difficult in spec["rects"]:
            object_rows.append({"image_id": spec["id"], "class_name": CLASSES[label], "class_index": label,
                                "xmin": float(box[0]), "ymin": float(box[1]), "xmax": float(box[2]),
                                "ymax": float(box[3]), "difficult": int(difficult), "truncated": 0})  # fmt: skip
    objects = pd.DataFrame(object_rows, columns=["image_id", "class_name", "class_index", "xmin", "ymin", "xmax",
                                                 "ymax", "difficult", "truncated"])  # fmt: skip
    return pd.DataFrame(image_rows), objects


def _dataset(tmp_path: Path, images: list[dict], *, train: bool, use_difficult: bool = False, cache: str = "none",
             **augment_overrides) -> VOCDetection:
    """The files and tables of `_tables`, as a dataset."""
    image_table, objects = _tables(tmp_path, images)
    return VOCDetection(image_table, objects, root=tmp_path, data_cfg=_data_cfg(use_difficult, cache,
                        **augment_overrides), input_size=SIZE, grid_size=GRID, train=train)  # fmt: skip


ONE_RED = [{"id": "000001", "rects": [((40, 30, 100, 90), RED, 0, False)]}]
TWO = [{"id": "000001", "rects": [((40, 30, 100, 90), RED, 0, False), ((110, 10, 150, 40), GREEN, 1, False)]},
       {"id": "000002", "rects": [((10, 60, 60, 110), GREEN, 1, False)]}]  # fmt: skip


def _colour_mask(image: torch.Tensor) -> torch.Tensor:
    """(3, h, w) uint8 or float in [0, 1] -> (h, w) bool: saturated pixels. Gray background and black padding
    have HSV S = 0, which no exposure/saturation factor changes, so this finds the rectangle under any augmentation."""
    image = images_to_float(image[None])[0]
    return (image.amax(0) - image.amin(0)) > 0.15


def test_train_and_eval_shapes_dtypes_and_range(tmp_path):
    train = _dataset(tmp_path, TWO, train=True)
    image, target = train[0]
    # uint8 through the loader's shared memory (4x less than float32); the trainer makes it float on its device
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert target.shape == (GRID, GRID, 5 + len(CLASSES)) and target.dtype == torch.float32
    evaluation = _dataset(tmp_path, TWO, train=False)
    image, target, info = evaluation[1]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert target.shape == (GRID, GRID, 5 + len(CLASSES))
    assert info["image_id"] == "000002" and (info["width"], info["height"]) == (W, H)
    assert info["boxes"].dtype == torch.float32 and info["labels"].dtype == torch.int64
    assert info["difficult"].dtype == torch.bool and len(train) == len(evaluation) == 2


def test_eval_returns_original_boxes_no_augmentation_and_is_deterministic(tmp_path):
    ds = _dataset(tmp_path, TWO, train=False)
    torch.manual_seed(1)
    image1, target1, info1 = ds[0]
    torch.manual_seed(2)
    image2, target2, info2 = ds[0]
    assert torch.equal(image1, image2) and torch.equal(target1, target2)
    assert torch.equal(info1["boxes"], torch.tensor([[40.0, 30, 100, 90], [110, 10, 150, 40]]))
    assert info1["labels"].tolist() == [0, 1] and info1["difficult"].tolist() == [False, False]
    # No augmentation: the red rectangle (40..100) x (30..90) lands at x 40*0.6..100*0.6 = 24..60 and
    # y 30*0.8..90*0.8 = 24..72 of the 96 px image (W 160 -> 96 is x0.6, H 120 -> 96 is x0.8).
    red = _colour_mask(image1) & (image1[0] > image1[1])
    ys, xs = red.nonzero(as_tuple=True)
    assert abs(xs.min().item() - 24) <= 1 and abs(xs.max().item() - 59) <= 1
    assert abs(ys.min().item() - 24) <= 1 and abs(ys.max().item() - 71) <= 1
    boxes_n = info1["boxes"] / torch.tensor([W, H, W, H])
    assert torch.equal(target1, encode(xyxy_to_cxcywh(boxes_n), info1["labels"], GRID, len(CLASSES)).target)


@pytest.mark.parametrize("seed", range(6))
def test_target_is_encode_of_the_augmented_boxes(tmp_path, seed):
    ds = _dataset(tmp_path, TWO, train=True)
    torch.manual_seed(seed)
    sample = ds._load_augmented(0)
    torch.manual_seed(seed)
    image, target = ds[0]
    assert torch.equal(image, sample.image.mul(255).round().to(torch.uint8))  # the sample, rounded to uint8
    expected = encode(xyxy_to_cxcywh(sample.boxes_xyxy), sample.labels, GRID, len(CLASSES)).target
    assert torch.equal(target, expected)
    assert ((sample.boxes_xyxy >= 0) & (sample.boxes_xyxy <= 1)).all()


def test_flip_mirrors_the_box_and_the_pixels(tmp_path):
    ds = _dataset(tmp_path, ONE_RED, train=True, scale=0.0, translate=0.0, exposure=1.0, saturation=1.0, hflip=1.0)
    sample = ds._load_augmented(0)
    # Resize: (40, 30, 100, 90) -> (24, 24, 60, 72) px; mirror x in 96 px: (96 - 60, 24, 96 - 24, 72).
    assert torch.allclose(sample.boxes_xyxy * SIZE, torch.tensor([[36.0, 24, 72, 72]]), atol=1e-4)
    xs = _colour_mask(sample.image).nonzero(as_tuple=True)[1]
    assert abs(xs.min().item() - 36) <= 1 and abs(xs.max().item() - 71) <= 1


def test_augmented_box_covers_the_coloured_rectangle(tmp_path):
    """Full augmentation (scale, translate, flip, exposure, saturation): the box must sit on the red pixels."""
    ds = _dataset(tmp_path, ONE_RED, train=True)
    kept = 0
    for seed in range(40):
        torch.manual_seed(seed)
        sample = ds._load_augmented(0)
        mask = _colour_mask(sample.image)  # (96, 96)
        if len(sample.boxes_xyxy) == 0:
            # Dropped: under a quarter of the rectangle (60 x 60 px -> 36 x 48 at scale 1) can be in frame.
            assert mask.sum() < 0.3 * 36 * 48 * 1.2**2
            continue
        kept += 1
        x1, y1, x2, y2 = (sample.boxes_xyxy[0] * SIZE).tolist()
        inner = mask[int(y1) + 2:int(y2) - 1, int(x1) + 2:int(x2) - 1]
        assert inner.float().mean() > 0.97, f"seed {seed}: box not filled by the rectangle"
        outer = mask.clone()
        outer[max(int(y1) - 1, 0):int(y2) + 2, max(int(x1) - 1, 0):int(x2) + 2] = False
        assert outer.sum() <= 0.01 * mask.sum(), f"seed {seed}: rectangle pixels outside the box"
    assert kept >= 30


def test_boxes_pushed_out_are_clipped_or_dropped(tmp_path, monkeypatch):
    # Draws: s = 1 (u0 0.5), tx = +0.2 (u1 1.0), ty = 0, no flip, exposure = saturation = 1.
    monkeypatch.setattr(data, "_uniforms", lambda n: [0.5, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0])
    boxes = torch.tensor([[100.0, 30, 150, 90], [120, 30, 160, 90], [140, 30, 160, 90], [10, 30, 50, 90]])
    image = torch.full((3, H, W), 128, dtype=torch.uint8)
    out, kept, keep = augment(image, boxes, _augment_cfg(hflip=0.0), SIZE)
    # The image's x range [0, 160] lands on [96 * 0.2, 96 * 1.2] = [19.2, 115.2]: output columns 19..96 show
    # source columns round((96 - 19.2) * 160 / 96) = 128 and below. Visible fractions: (128 - 100) / 50 = 0.56
    # kept; (128 - 120) / 40 = 0.2 < 0.25 dropped; 0 dropped; 1 kept.
    assert keep.tolist() == [True, False, False, True]
    # Kept boxes: x -> 19 + x * 77 / 128, clipped at x = 128 -> 96; y -> y * 0.8.
    expected = torch.tensor([[19 + 100 * 77 / 128, 24, 96, 72], [19 + 10 * 77 / 128, 24, 19 + 50 * 77 / 128, 72]])
    assert torch.allclose(kept, expected, atol=1e-4)
    assert out[:, :, :19].max() == 0 and out[:, :, 20:].min() > 0.4  # padding is black, the image gray


def test_tiny_remnant_is_dropped_by_min_size_even_with_min_visible_zero(monkeypatch):
    monkeypatch.setattr(data, "_uniforms", lambda n: [0.5, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0])
    # Same window as above; a box at x 127.5..140 keeps 0.5 source px -> 0.3 output px < 1 px.
    boxes = torch.tensor([[127.5, 30, 140, 90]])
    _, kept, keep = augment(torch.zeros(3, H, W, dtype=torch.uint8), boxes, _augment_cfg(min_visible=0.0), SIZE)
    assert keep.tolist() == [False] and kept.shape == (0, 4)


def test_same_seed_same_sample_and_dataloader_is_reproducible(tmp_path):
    ds = _dataset(tmp_path, TWO, train=True)
    torch.manual_seed(7)
    a = ds[0]
    torch.manual_seed(7)
    b = ds[0]
    c = ds[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(b[0], c[0])

    def batches():
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_train,
                                             generator=torch.Generator().manual_seed(3),
                                             worker_init_fn=worker_init_fn)  # fmt: skip
        return [images for images, _ in loader]

    first, second = batches(), batches()
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_image_without_objects_gives_zero_target(tmp_path):
    empty = [{"id": "000009", "rects": []}]
    image, target = _dataset(tmp_path, empty, train=True)[0]
    assert target.abs().sum() == 0 and image.shape == (3, SIZE, SIZE)
    _, target, info = _dataset(tmp_path, empty, train=False)[0]
    assert target.abs().sum() == 0 and info["boxes"].shape == (0, 4) and info["labels"].shape == (0,)


@pytest.mark.parametrize("train", [True, False])
def test_difficult_objects_enter_the_target_only_with_use_difficult(tmp_path, train):
    # The green box is difficult; its centre (130, 25) -> normalised (0.8125, 0.2083) -> cell row 0, col 3.
    spec = [{"id": "000001", "rects": [((40, 30, 100, 90), RED, 0, False), ((110, 10, 150, 40), GREEN, 1, True)]}]
    aug = dict(scale=0.0, translate=0.0, hflip=0.0)
    without = _dataset(tmp_path, spec, train=train, **aug)[0]
    with_ = _dataset(tmp_path, spec, train=train, use_difficult=True, **aug)[0]
    assert without[1][0, 3, 4] == 0 and with_[1][0, 3, 4] == 1 and with_[1][0, 3, 5 + 1] == 1
    assert without[1][:, :, 4].sum() == 1 and with_[1][:, :, 4].sum() == 2
    if not train:  # eval infos always list the difficult object, flagged
        assert without[2]["difficult"].tolist() == [False, True] and len(without[2]["boxes"]) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_adjust_hsv_matches_colorsys_loop(dtype):
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 5, 7, generator=gen) * 255).round() / 255
    image[:, 0, 0] = 100 / 255  # a gray pixel (S = 0)
    image[:, 0, 1] = 0.0  # black (V = 0)
    image[:, 0, 2] = torch.tensor([1.0, 0.0, 0.0])  # pure red (S = V = 1)
    source = (image * 255).round().to(torch.uint8) if dtype == torch.uint8 else image
    for exposure, saturation in [(1.5, 1.5), (1 / 1.5, 1.3), (1.2, 1 / 1.5), (1 / 1.5, 1 / 1.2), (1.0, 1.0)]:
        got = adjust_hsv(source, exposure=exposure, saturation=saturation)
        assert got.dtype == torch.float32
        expected = torch.empty_like(image)
        for y in range(5):
            for x in range(7):
                h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
                rgb = colorsys.hsv_to_rgb(h, min(s * saturation, 1.0), min(v * exposure, 1.0))
                expected[:, y, x] = torch.tensor(rgb)
        assert torch.allclose(got, expected, atol=1e-5), (exposure, saturation)


def test_rand_scale_factor_range():
    # Darknet's rand_scale: U[1, f], inverted half the time: u = 1 -> 1.5, inverted -> 1 / 1.5.
    assert data._rand_scale(1.5, 1.0, 0.2) == 1.5 and data._rand_scale(1.5, 1.0, 0.7) == pytest.approx(1 / 1.5)
    assert data._rand_scale(1.5, 0.0, 0.7) == 1.0


def test_read_rgb_grayscale_cmyk_and_png(tmp_path):
    rects = [((10, 10, 50, 40), RED)]
    for name, mode, fmt in [("g.jpg", "L", "JPEG"), ("c.jpg", "CMYK", "JPEG"), ("p.png", "RGB", "PNG")]:
        _write_image(tmp_path / name, rects, mode=mode, fmt=fmt)
        image = read_rgb(tmp_path / name)
        assert image.shape == (3, H, W) and image.dtype == torch.uint8, name
        if mode == "L":
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        else:  # the red rectangle is red
            assert image[0, 25, 30] > 150 and image[1, 25, 30] < 90, name
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_rgb(tmp_path / "bad.jpg")


def test_bad_tables_and_files_raise_clear_errors(tmp_path):
    ds = _dataset(tmp_path, ONE_RED, train=False)
    images = pd.DataFrame([{"image_id": "000001", "path": "JPEGImages/000001.jpg", "width": W, "height": H}])
    objects = pd.DataFrame([{"image_id": "000001", "class_index": 5, "xmin": 1.0, "ymin": 1.0, "xmax": 5.0,
                             "ymax": 5.0, "difficult": 0}])  # fmt: skip
    kwargs = dict(root=tmp_path, data_cfg=_data_cfg(), input_size=SIZE, grid_size=GRID, train=False)
    with pytest.raises(ValueError, match="class_index 5"):
        VOCDetection(images, objects, **kwargs)
    with pytest.raises(ValueError, match="000001: box"):
        VOCDetection(images, objects.assign(class_index=0, xmax=W + 1.0), **kwargs)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['height'\]"):
        VOCDetection(images.drop(columns="height"), objects, **kwargs)
    with pytest.raises(ValueError, match="data.augment.exposure"):
        VOCDetection(images, objects.assign(class_index=0), **{**kwargs, "data_cfg": _data_cfg(exposure=0.5)})
    wrong_size = VOCDetection(images.assign(width=W + 2), objects.assign(class_index=0), **kwargs)
    with pytest.raises(ValueError, match=r"000001.jpg: decoded size 160x120 differs from the table's 162x120"):
        wrong_size[0]
    assert len(ds) == 1


def test_collate_functions(tmp_path):
    train = _dataset(tmp_path, TWO, train=True)
    images, targets = collate_train([train[0], train[1]])
    assert images.shape == (2, 3, SIZE, SIZE) and targets.shape == (2, GRID, GRID, 5 + len(CLASSES))
    evaluation = _dataset(tmp_path, TWO, train=False)
    images, targets, infos = collate_eval([evaluation[0], evaluation[1]])
    assert images.shape == (2, 3, SIZE, SIZE) and [i["image_id"] for i in infos] == ["000001", "000002"]
    assert [len(i["boxes"]) for i in infos] == [2, 1]


def test_load_split_filters_images_and_objects(tmp_path):
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "test", "train"], "year": 2007,
                           "path": ["a.jpg", "b.jpg", "c.jpg"], "width": W, "height": H})  # fmt: skip
    objects = pd.DataFrame({"image_id": ["a", "b", "b", "c"], "class_index": [0, 1, 2, 0]})
    images.to_parquet(tmp_path / "images.parquet")
    objects.to_parquet(tmp_path / "objects.parquet")
    train_images, train_objects = load_split(tmp_path, "train")
    assert train_images["image_id"].tolist() == ["a", "c"] and train_objects["class_index"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="no images with split 'val'"):
        load_split(tmp_path, "val")


def test_training_samples_are_the_augmentation_rounded_to_uint8(tmp_path):
    ds = _dataset(tmp_path, TWO, train=True)
    torch.manual_seed(7)
    image, _ = ds[0]
    torch.manual_seed(7)
    reference = ds._load_augmented(0).image  # float32 [0, 1] from the same random draws
    assert image.dtype == torch.uint8
    # the only change is rounding to the nearest of 256 levels: at most half a level off
    assert (images_to_float(image[None])[0] - reference).abs().max() <= 0.5 / 255 + 1e-6


def test_images_to_float():
    batch = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    out = images_to_float(batch)
    assert out.dtype == torch.float32 and out.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])
    floats = torch.rand(2, 3, 4, 4)
    assert images_to_float(floats) is floats  # float input passes through untouched
    channels_last = torch.zeros(2, 3, 4, 4, dtype=torch.uint8).to(memory_format=torch.channels_last)
    assert images_to_float(channels_last).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(TypeError, match="uint8 or a float"):
        images_to_float(torch.zeros(1, 3, 2, 2, dtype=torch.int64))


TWO_IMAGES = [{"id": "000001", "rects": [((40, 30, 100, 90), RED, 0, False)]},
              {"id": "000002", "rects": [((10, 10, 60, 50), GREEN, 1, False), ((90, 40, 150, 110), RED, 0, True)]}]


def test_ram_cache_gives_the_same_evaluation_samples(tmp_path):
    plain = _dataset(tmp_path, TWO_IMAGES, train=False)
    cached = _dataset(tmp_path, TWO_IMAGES, train=False, cache="ram")  # the same files, written again
    assert cached._cache.shape == (2, 3, SIZE, SIZE) and cached._cache.dtype == torch.uint8
    for i in range(len(plain)):
        (a, ta, ia), (b, tb, ib) = plain[i], cached[i]
        assert torch.equal(a, b) and torch.equal(ta, tb)
        assert ia.keys() == ib.keys() and all(torch.equal(torch.as_tensor(ia[k]), torch.as_tensor(ib[k]))
                                              for k in ("boxes", "labels", "difficult"))


def test_ram_cache_gives_the_same_flip_only_training_samples_and_stays_untouched(tmp_path):
    """Flip + colour augmentation (no scale/shift): the cached square gives the very samples the files give, draw
    for draw; reading never writes into the cache."""
    plain = _dataset(tmp_path, TWO_IMAGES, train=True, scale=0.0, translate=0.0)
    cached = _dataset(tmp_path, TWO_IMAGES, train=True, cache="ram", scale=0.0, translate=0.0)
    before = cached._cache.clone()
    for seed in range(6):
        torch.manual_seed(seed)
        a = [plain[i] for i in range(len(plain))]
        torch.manual_seed(seed)
        b = [cached[i] for i in range(len(cached))]
        for (ia, ta), (ib, tb) in zip(a, b, strict=True):
            assert torch.equal(ia, ib)
            assert torch.allclose(ta, tb, atol=1e-5)  # boxes scaled in another order: float rounding only
    assert torch.equal(cached._cache, before)


def test_ram_cache_with_scale_and_shift_keeps_boxes_on_the_object(tmp_path):
    """With scale/translate the crop comes from the cached square: the box still covers the red rectangle."""
    cached = _dataset(tmp_path, ONE_RED, train=True, cache="ram", exposure=1.0, saturation=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        sample = cached._load_augmented(0)
        if len(sample.boxes_xyxy) == 0:
            continue
        x1, y1, x2, y2 = (sample.boxes_xyxy[0] * SIZE).round().long().tolist()
        inside = sample.image[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2]
        assert inside.numel() > 0 and (inside[0] > inside[1] + 0.3).float().mean() > 0.9  # red inside the box


def test_ram_cache_names_an_undecodable_file(tmp_path):
    images, objects = _tables(tmp_path, TWO_IMAGES)
    (tmp_path / "JPEGImages" / "000002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="000002.jpg"):
        VOCDetection(images, objects, root=tmp_path, data_cfg=_data_cfg(cache="ram"), input_size=SIZE,
                     grid_size=GRID, train=False)


def test_ram_cache_larger_than_free_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    """A cache that cannot fit fails at once with the key, the sizes and the way out, instead of swapping or
    being killed by the OOM killer mid-decode; nothing is decoded."""
    images, objects = _tables(tmp_path, TWO_IMAGES)
    need = 2 * 3 * SIZE * SIZE
    real_read = data.read_rgb
    decoded = []
    monkeypatch.setattr(data, "read_rgb", lambda path: decoded.append(path) or real_read(path))
    monkeypatch.setattr(data, "available_memory", lambda: need - 1)
    with pytest.raises(ValueError, match=r"data.cache: ram needs 0.00 GB for 2 images at 96 px, but only .* set "
                                         r"data.cache: none"):
        VOCDetection(images, objects, root=tmp_path, data_cfg=_data_cfg(cache="ram"), input_size=SIZE,
                     grid_size=GRID, train=False)
    assert decoded == []
    monkeypatch.setattr(data, "available_memory", lambda: need)  # exactly enough: accepted
    assert VOCDetection(images, objects, root=tmp_path, data_cfg=_data_cfg(cache="ram"), input_size=SIZE,
                        grid_size=GRID, train=False)._cache.nbytes == need


def test_available_memory_reads_linux_meminfo():
    value = data.available_memory()
    assert value is None or value > 0
