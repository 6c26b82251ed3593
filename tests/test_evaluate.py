"""yolov1.evaluate.evaluate end to end on a small synthetic VOC test split, with oracle and empty models."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import yolov1.encode as encode_module
from pipelines.prepare import read_tables
from tests.sync_count import count_host_syncs
from yolov1.config import AugmentConfig, DataConfig, EvalConfig, ModelConfig
from yolov1.data import VOCDetection
from yolov1.encode import decode, targets_to_predictions
from yolov1.evaluate import Evaluation, _bf16_autocast, evaluate
from yolov1.synth import generate_voc

# "car" is in the class list but never drawn: its AP is NaN (no ground truth) and must stay out of the mean.
DRAWN = ("aeroplane", "bicycle", "bird")
CLASSES = (*DRAWN, "car")
S, B, C = 7, 2, len(CLASSES)
MODEL = ModelConfig(variant="fast", input_size=112, grid_size=S, boxes_per_cell=B, num_classes=C, batch_norm=True,
                    width_multiplier=0.125, head="conv", head_hidden=64, dropout=0.0)
EVAL = EvalConfig(batch_size=4, score_threshold=0.005, nms_iou_threshold=0.5, max_detections=100,
                  match_iou_threshold=0.5, draw_score_threshold=0.3, num_pictures=4)
SUMMARY_KEYS = {"map_voc07", "map_area", "ap_voc07", "ap_area", "images_per_second", "num_images"}


def _data_cfg(root: Path) -> DataConfig:
    augment = AugmentConfig(scale=0.0, translate=0.0, exposure=1.0, saturation=1.0, hflip=0.0, min_visible=0.25)
    return DataConfig(root=str(root), archives=(), train_sets=(), test_sets=("2007/test",), classes=CLASSES,
                      use_difficult=False, on_bad_object="error", augment=augment)


class _Indexed(Dataset):
    """The eval dataset with each sample's index (< 256) written into its top-left red pixel, for the oracle."""

    def __init__(self, base: VOCDetection) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, target, info = self.base[i]
        image = image.clone()
        image[0, 0, 0] = float(i)
        return image, target, info


class _Oracle(nn.Module):
    """Ignores the pixels: returns the perfect prediction of each image's target, looked up by the marked index."""

    def __init__(self, targets: Tensor, drop_class: int | None = None) -> None:
        super().__init__()
        preds = targets_to_predictions(targets, B)  # (N, S, S, 5B + C), conf 1 in every predictor of object cells
        if drop_class is not None:
            preds[..., 5 * B + drop_class] = 0.0  # that class now scores 0 everywhere: never detected
        self.register_buffer("preds", preds)

    def forward(self, images: Tensor) -> Tensor:
        return self.preds[(images[:, 0, 0, 0] * 255).round().long()]  # uint8 samples arrive divided by 255


class _Empty(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images.new_zeros(images.shape[0], S, S, 5 * B + C)  # every score 0: below any threshold


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> _Indexed:
    """24 generated test images, minus those where two non-difficult centres share a cell (the encoder keeps one
    per cell, so even a perfect net could not find the other)."""
    root = tmp_path_factory.mktemp("voc") / "data"
    generate_voc(root / "extracted", num_trainval=0, num_test=24, image_size=((80, 160), (64, 128)), seed=11,
                 classes=DRAWN, max_objects=3, object_size=(0.2, 0.5), difficult_size=(0.06, 0.1),
                 difficult_fraction=0.2, truncated_fraction=0.2, max_overhang=0.2, max_iou=0.3, colour_jitter=10)
    data_cfg = _data_cfg(root)
    tables = read_tables(data_cfg, workers=1)

    def build(images):
        return VOCDetection(images.reset_index(drop=True), tables.objects, root=root, data_cfg=data_cfg,
                            input_size=MODEL.input_size, grid_size=S, train=False)

    full = build(tables.images)
    keep = []
    for i in range(len(full)):
        _, target, info = full[i]
        keep.append(int(target[..., 4].sum()) == int((~info["difficult"]).sum()))
    ds = _Indexed(build(tables.images[np.array(keep)]))
    assert len(ds) >= 16 and sum(int(ds.base[i][2]["difficult"].sum()) for i in range(len(ds))) > 0
    return ds


@pytest.fixture(scope="module")
def targets(dataset: _Indexed) -> Tensor:
    return torch.stack([dataset[i][1] for i in range(len(dataset))])  # (N, S, S, 5 + C)


def _positives(dataset: _Indexed, n: int) -> np.ndarray:
    """Non-difficult objects per class over the first n images, counted from the infos."""
    counts = np.zeros(C, dtype=np.int64)
    for i in range(n):
        info = dataset[i][2]
        np.add.at(counts, info["labels"][~info["difficult"]].numpy(), 1)
    return counts


def test_oracle_scores_map_one(dataset: _Indexed, targets: Tensor):
    result = evaluate(_Oracle(targets), dataset, model_cfg=MODEL, eval_cfg=EVAL)
    assert result.num_images == len(dataset) == len(result.detections) == len(result.ground_truths)
    assert result.voc07.map == pytest.approx(1.0) and result.area.map == pytest.approx(1.0)
    np.testing.assert_array_equal(result.voc07.num_positives, _positives(dataset, len(dataset)))
    for r in (result.voc07, result.area):
        np.testing.assert_allclose(r.ap[:3], 1.0)
        assert math.isnan(r.ap[3])  # car: no ground truth
    # The detections are the ground truth itself (one per non-difficult object, duplicates removed by NMS),
    # back in each image's own pixels up to float32 rounding.
    for (boxes, scores, labels), (gt_boxes, gt_labels, difficult) in zip(result.detections, result.ground_truths,
                                                                         strict=True):
        easy = ~difficult
        assert len(boxes) == int(easy.sum())
        np.testing.assert_allclose(scores, 1.0)
        for gt_box, gt_label in zip(gt_boxes[easy], gt_labels[easy], strict=True):
            same = labels == gt_label
            assert np.abs(boxes[same] - gt_box).max(axis=1).min() < 1e-3


def test_oracle_missing_one_class(dataset: _Indexed, targets: Tensor):
    # Class 1 (bicycle) is never detected: its AP is 0, the others stay 1, so mAP = (1 + 0 + 1) / 3 over the
    # three classes with ground truth (car's NaN is left out).
    result = evaluate(_Oracle(targets, drop_class=1), dataset, model_cfg=MODEL, eval_cfg=EVAL)
    for r in (result.voc07, result.area):
        np.testing.assert_allclose(r.ap[:3], [1.0, 0.0, 1.0])
        assert r.map == pytest.approx(2.0 / 3.0)
    assert all((labels != 1).all() for _, _, labels in result.detections)


def test_empty_model_scores_zero(dataset: _Indexed):
    result = evaluate(_Empty(), dataset, model_cfg=MODEL, eval_cfg=EVAL)
    assert all(boxes.shape == (0, 4) and len(scores) == len(labels) == 0 for boxes, scores, labels in result.detections)
    for r in (result.voc07, result.area):
        np.testing.assert_array_equal(r.ap[:3], 0.0)
        assert math.isnan(r.ap[3]) and r.map == 0.0
    summary = result.summary(CLASSES)
    assert summary["map_voc07"] == 0.0 and summary["ap_voc07"] == {"aeroplane": 0.0, "bicycle": 0.0, "bird": 0.0,
                                                                    "car": None}


def test_limit_evaluates_first_images(dataset: _Indexed, targets: Tensor):
    result = evaluate(_Oracle(targets), dataset, model_cfg=MODEL, eval_cfg=EVAL, limit=3)
    assert result.num_images == 3 and len(result.detections) == 3
    assert result.image_ids == [dataset[i][2]["image_id"] for i in range(3)]
    np.testing.assert_array_equal(result.voc07.num_positives, _positives(dataset, 3))
    assert result.voc07.map == pytest.approx(1.0)
    everything = evaluate(_Oracle(targets), dataset, model_cfg=MODEL, eval_cfg=EVAL, limit=10 * len(dataset))
    assert everything.num_images == len(dataset)


def test_no_images(dataset: _Indexed, targets: Tensor):
    result = evaluate(_Oracle(targets), dataset, model_cfg=MODEL, eval_cfg=EVAL, limit=0)
    assert result.num_images == 0 and result.detections == [] and result.image_ids == []
    assert math.isnan(result.voc07.map) and np.isnan(result.area.ap).all()  # no ground truth at all
    summary = result.summary(CLASSES)
    assert summary["map_voc07"] is None and summary["images_per_second"] is None  # never timed: no NaN in JSON
    json.dumps(summary, allow_nan=False)


def test_model_mode_is_restored(dataset: _Indexed, targets: Tensor):
    oracle = _Oracle(targets).train()
    evaluate(oracle, dataset, model_cfg=MODEL, eval_cfg=EVAL, limit=2)
    assert oracle.training


def test_summary_is_json(dataset: _Indexed, targets: Tensor):
    result = evaluate(_Oracle(targets), dataset, model_cfg=MODEL, eval_cfg=EVAL)
    assert isinstance(result, Evaluation)
    assert result.images_per_second > 0 and math.isfinite(result.images_per_second)
    summary = result.summary(CLASSES)
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["ap_voc07"]) == set(summary["ap_area"]) == set(CLASSES)
    assert summary["ap_voc07"]["car"] is None and summary["ap_area"]["car"] is None  # NaN -> None
    assert summary["map_voc07"] == pytest.approx(1.0) and summary["num_images"] == len(dataset)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary


class _Cached(Dataset):
    """Precomputed samples, so that reading one runs no torch op, with the infos' host data as numpy arrays (on
    CPU the sync counter cannot tell host tensors from device ones, so it sees only evaluate's own work)."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.items = []
        for i in range(n):
            image, target, info = base[i]
            host = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in info.items()}
            self.items.append((image, target, host))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _rows(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One image's detections as sorted unique rows (x1, y1, x2, y2, score, label), to compare them as sets."""
    return np.unique(np.column_stack((boxes, scores, labels)), axis=0)


def _syncs(dataset: Dataset, targets: Tensor, batch_size: int) -> tuple[Counter, Evaluation]:
    cfg = dataclasses.replace(EVAL, batch_size=batch_size)
    with count_host_syncs() as counts:
        result = evaluate(_Oracle(targets), dataset, model_cfg=MODEL, eval_cfg=cfg)
    return counts, result


def test_one_host_transfer_per_batch_and_no_per_image_syncs(dataset: _Indexed, targets: Tensor, monkeypatch):
    # The device path of decode (one NMS call per round; on CPU it packs groups into several calls).
    monkeypatch.setattr(encode_module, "_CPU_NMS_CHUNK", None)
    cached = _Cached(dataset, 16)
    one_batch, whole = _syncs(cached, targets, batch_size=16)
    four_batches, split = _syncs(cached, targets, batch_size=4)
    loader = Counter({"aten::item": 1})  # the DataLoader draws its base seed once per pass (host RNG, no device)
    per_batch = one_batch - loader
    # The batch's detections, packed into one array and copied once; decode's fixed 5 syncs (see test_encode).
    assert per_batch["Tensor.cpu"] == per_batch["Tensor.numpy"] == 1, per_batch
    assert sum(per_batch.values()) == 5 + 2, per_batch
    # 4 batches of 4 images make 4x the syncs of 1 batch of 16: per batch, never per image. The previous code
    # copied boxes, scores and labels to the host separately for each image (3 x 16 copies here).
    assert four_batches == loader + Counter({kind: 4 * n for kind, n in per_batch.items()})
    assert whole.voc07.map == split.voc07.map == pytest.approx(1.0)
    for a, b in zip(whole.detections, split.detections, strict=True):  # the oracle's scores tie at 1.0: as sets
        assert np.array_equal(_rows(*a), _rows(*b)) and [x.dtype for x in a] == [y.dtype for y in b]
    boxes, scores, labels = whole.detections[0]
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64


def test_detections_are_those_of_decode_in_pixels(dataset: _Indexed, targets: Tensor):
    # Per image, evaluate's arrays equal decode's float32 tensors scaled by the original width / height.
    cached = _Cached(dataset, 6)
    result = evaluate(_Oracle(targets), cached, model_cfg=MODEL, eval_cfg=EVAL)
    preds = _Oracle(targets)(torch.stack([torch.full((3, 1, 1), i / 255) for i in range(6)]))
    decoded = decode(preds, boxes_per_cell=B, num_classes=C, score_threshold=EVAL.score_threshold,
                     nms_iou_threshold=EVAL.nms_iou_threshold, max_detections=EVAL.max_detections)
    for i, (det, (boxes, scores, labels)) in enumerate(zip(decoded, result.detections, strict=True)):
        info = cached[i][2]
        scale = torch.tensor([info["width"], info["height"]] * 2, dtype=torch.float32)
        want = ((det.boxes_xyxy * scale).numpy(), det.scores.numpy(), det.labels.numpy())
        assert np.array_equal(_rows(boxes, scores, labels), _rows(*want))  # as sets: the oracle's scores tie


@pytest.mark.parametrize(("device", "precision", "bf16"), [
    ("cpu", "fp32", False), ("cpu", "bf16", False), ("cuda", "fp32", False), ("cuda", "bf16", True)])
def test_bf16_only_when_asked_for_and_on_cuda(device, precision, bf16):
    cfg = dataclasses.replace(EVAL, precision=precision)
    assert _bf16_autocast(torch.device(device), cfg) is bf16
