"""Tests for yolov1.pretrain and the `yolov1 pretrain` stage: object crops from VOC-format data, top-k accuracy,
a short seeded classification pretraining whose backbone loads into the detector through ``model.pretrained``,
architecture checks on that checkpoint, and the stage with MLflow on a SQLite file (all on generated data)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pipelines.workspace import load_profile
from yolov1.backbones import PretrainedWeightsError
from yolov1.config import params_from_dict
from yolov1.model import build_model
from yolov1.pretrain import (
    build_classifier,
    image_folder_datasets,
    make_crops,
    pretrain,
    save_backbone,
    topk_correct,
)
from yolov1.synth import DEMO_CLASSES, generate_voc
from yolov1.voc import parse_annotation, read_image_set

SPEC = dict(num_trainval=16, num_test=6, image_size=((96, 128), (80, 112)), seed=5, classes=DEMO_CLASSES,
            max_objects=3, object_size=(0.25, 0.5), difficult_size=(0.08, 0.12), difficult_fraction=0.2,
            truncated_fraction=0.2, max_overhang=0.2, max_iou=0.2, colour_jitter=12)


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return generate_voc(tmp_path_factory.mktemp("synth") / "data" / "extracted", **SPEC)


def small_params(root: Path, **pretrain_changes):
    """The tiny test profile, with data under `root` and a short pretraining at 32 px."""
    raw = load_profile("tiny")
    raw["data"].update(root=str(root / "data"), classes=list(DEMO_CLASSES))
    raw["model"].update(num_classes=len(DEMO_CLASSES))
    raw["tracking"].update(uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "mlartifacts"))
    raw["pretrain"].update(image_folder=str(root / "crops"), val_folder=None, val_fraction=0.25, input_size=32,
                           epochs=2, batch_size=8, lr=0.01, num_workers=0, output=str(root / "backbone.pt"),
                           **pretrain_changes)
    return raw


def test_make_crops_writes_every_non_difficult_object(devkit, tmp_path):
    out = tmp_path / "crops"
    report = make_crops(devkit, ["2007/trainval"], DEMO_CLASSES, out, min_size=8)
    expected, difficult = {c: 0 for c in DEMO_CLASSES}, 0
    for image_id in read_image_set(devkit, 2007, "trainval"):
        ann = parse_annotation(devkit / "VOC2007" / "Annotations" / f"{image_id}.xml", classes=DEMO_CLASSES,
                               on_bad_object="error")
        for obj in ann.objects:
            if obj.difficult:
                difficult += 1
            elif min(obj.xmax - obj.xmin, obj.ymax - obj.ymin) >= 8:  # integer VOC boxes: rounding changes nothing
                expected[obj.class_name] += 1
    assert report.per_class == expected and report.skipped_difficult == difficult
    assert sum(expected.values()) > 10 and difficult > 0  # the fixture really has both kinds
    assert sorted(p.name for p in out.iterdir()) == sorted(DEMO_CLASSES)  # a folder per class, even if empty
    files = sorted(out.rglob("*.png"))
    assert len(files) == sum(expected.values())
    # First crop of the first image: its size is the box's (continuous 0-based xyxy of 1-based inclusive ints).
    first_id = read_image_set(devkit, 2007, "trainval")[0]
    ann = parse_annotation(devkit / "VOC2007" / "Annotations" / f"{first_id}.xml", classes=DEMO_CLASSES,
                           on_bad_object="error")
    k, obj = next((k, o) for k, o in enumerate(ann.objects) if not o.difficult)
    with Image.open(out / obj.class_name / f"2007_{first_id}_{k}.png") as crop:
        assert crop.size == (round(obj.xmax - obj.xmin), round(obj.ymax - obj.ymin))
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]  # staging folder renamed into place


def test_make_crops_bad_input_leaves_nothing(devkit, tmp_path):
    with pytest.raises(FileNotFoundError, match="2007/ImageSets|VOC2007"):
        make_crops(devkit, ["2007/nosuchsplit"], DEMO_CLASSES, tmp_path / "crops")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown class|not in"):  # an object whose class is not listed
        make_crops(devkit, ["2007/trainval"], DEMO_CLASSES[:2], tmp_path / "crops")
    assert list(tmp_path.iterdir()) == []


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    # top-1: rows pick 1, 0, 2 -> only row 0 right. top-2: {1,2}, {0,1}, {2,1} -> rows 0 and 1.
    assert topk_correct(logits, labels, 1) == 1
    assert topk_correct(logits, labels, 2) == 2
    assert topk_correct(logits, labels, 5) == 3  # k capped at K = 3: everything is in the top 3
    assert topk_correct(torch.empty(0, 3), torch.empty(0, dtype=torch.long), 1) == 0


@pytest.fixture(scope="module")
def pretrained(devkit, tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    make_crops(devkit, ["2007/trainval"], DEMO_CLASSES, root / "crops")
    params = params_from_dict(small_params(root))
    train_set, val_set, classes = image_folder_datasets(params.pretrain, seed=0)
    result = pretrain(params.model, params.pretrain, train_set, val_set, classes, seed=0)
    path = save_backbone(root / "backbone.pt", result.model, params.model, classes, extra={"metrics": result.metrics})
    return params, result, path, (train_set, val_set, classes)


def test_pretraining_runs_and_reports_topk(pretrained):
    params, result, _, (train_set, val_set, classes) = pretrained
    assert classes == sorted(DEMO_CLASSES) and len(val_set) + len(train_set) > 10
    assert len(result.history) == params.pretrain.epochs
    for metrics in result.history:
        assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0 and metrics["loss"] > 0
    assert set(val_set.indices).isdisjoint(train_set.indices)


def test_pretraining_is_seeded(pretrained):
    params, result, _, (train_set, val_set, classes) = pretrained
    again = pretrain(params.model, params.pretrain, train_set, val_set, classes, seed=0)
    for (name, a), b in zip(result.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_backbone_checkpoint_loads_into_the_detector(pretrained):
    params, result, path, _ = pretrained
    state = torch.load(path, weights_only=True)
    assert state["kind"] == "yolov1-backbone" and "classifier.weight" not in state["state_dict"]
    detector = build_model(dataclasses.replace(params.model, pretrained=str(path)))
    for key, value in result.model.backbone.state_dict().items():
        assert torch.equal(detector.backbone.state_dict()[key], value), key
    # The classifier's backbone is the detector's: same keys, and the detector's head is new.
    assert detector.backbone.state_dict().keys() == result.model.backbone.state_dict().keys()


@pytest.mark.parametrize("change", [{"width_multiplier": 0.25}, {"variant": "yolov1"}, {"batch_norm": False},
                                    {"backbone": "resnet18"}])
def test_checkpoint_for_another_architecture_is_refused(pretrained, change):
    params, _, path, _ = pretrained
    other = dataclasses.replace(params.model, pretrained=str(path), **change)
    with pytest.raises(PretrainedWeightsError, match="was pretrained for") as err:
        build_model(other)
    assert str(path) in str(err.value)


def test_classifier_shapes():
    params = params_from_dict(small_params(Path("/nonexistent")))
    model = build_classifier(params.model, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_bad_folders_and_fractions_name_the_key(tmp_path, devkit):
    params = params_from_dict(small_params(tmp_path))
    with pytest.raises(FileNotFoundError, match="pretrain.image_folder"):
        image_folder_datasets(params.pretrain, seed=0)
    make_crops(devkit, ["2007/trainval"], DEMO_CLASSES, tmp_path / "crops")
    with pytest.raises(ValueError, match="pretrain.val_fraction"):
        image_folder_datasets(dataclasses.replace(params.pretrain, val_fraction=0.0), seed=0)
    (tmp_path / "other" / "zebra").mkdir(parents=True)  # a validation tree with other class names
    shutil.copy(next((tmp_path / "crops").rglob("*.png")), tmp_path / "other" / "zebra" / "a.png")
    with pytest.raises(ValueError, match="pretrain.val_folder: classes"):
        image_folder_datasets(dataclasses.replace(params.pretrain, val_folder=str(tmp_path / "other")), seed=0)


def test_stage_makes_crops_pretrains_and_tracks(tmp_path, devkit, monkeypatch, capsys):
    from pipelines import pretrain as stage

    monkeypatch.chdir(tmp_path)
    shutil.copytree(devkit, tmp_path / "data" / "extracted" / "VOCdevkit")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params(tmp_path), sort_keys=False))
    assert stage.main(["--params", "params.yaml", "--make-crops"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == str(tmp_path / "backbone.pt") and (tmp_path / "backbone.pt").is_file()
    report = json.loads((tmp_path / "reports" / "pretrain.json").read_text())
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "pretrain"
    assert {"top1", "top5", "loss"} <= run.data.metrics.keys()
    assert run.data.params["pretrain.epochs"] == "2" and run.data.params["model.backbone"] == "darknet"


def test_stage_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    from pipelines import pretrain as stage

    monkeypatch.chdir(tmp_path)
    assert stage.main(["--params", "missing.yaml", "--no-track"]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params(tmp_path), sort_keys=False))
    assert stage.main(["--params", "params.yaml", "--no-track"]) == 2  # no crops yet
    err = capsys.readouterr().err
    assert "pretrain.image_folder" in err and len(err.strip().splitlines()) == 1
    assert stage.main(["--params", "params.yaml", "--make-crops", "--no-track"]) == 2  # no VOCdevkit extracted
    assert "ImageSets" in capsys.readouterr().err


def _hues(images: list[torch.Tensor]) -> torch.Tensor:
    """Mean hue (fraction of the colour circle) of each (3, H, W) float image."""
    out = []  # hue angle from the opponent axes (the HSV hexcone's hue, smoothly), averaged over pixels
    for im in images:
        r, g, b = im.reshape(3, -1)
        angle = torch.atan2((3 ** 0.5) * (g - b), 2 * r - g - b).mean()
        out.append(angle / (2 * torch.pi))
    return torch.stack(out)


def test_colour_augmentation_changes_hue_only_when_asked(tmp_path):
    """A folder of one pure-red image: without colour keys every training sample keeps its hue; with hue 0.5 the
    hue spreads over the circle (a classifier can no longer tell classes by colour alone)."""
    from PIL import Image

    for name in ("red", "other"):
        (tmp_path / "crops" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (220, 30, 30)).save(tmp_path / "crops" / name / f"{i}.png")
    plain = params_from_dict(small_params(tmp_path)).pretrain
    coloured = params_from_dict(small_params(tmp_path, hue=0.5, saturation=1.5, exposure=1.5)).pretrain
    torch.manual_seed(0)
    train_plain, _, _ = image_folder_datasets(plain, seed=0)
    train_coloured, _, _ = image_folder_datasets(coloured, seed=0)
    hue_plain = _hues([train_plain[i % len(train_plain)][0] for i in range(24)])
    hue_coloured = _hues([train_coloured[i % len(train_coloured)][0] for i in range(24)])
    assert hue_plain.abs().max() < 0.02  # red stays red
    assert hue_coloured.abs().max() > 0.2 and hue_coloured.std() > 0.1  # shifted far and differently each time


def test_colour_keys_are_range_checked(tmp_path):
    from yolov1.config import ConfigError

    for key, value in (("hue", 0.6), ("saturation", 0.5), ("exposure", 0.9)):
        with pytest.raises(ConfigError, match=f"pretrain.{key}"):
            params_from_dict(small_params(tmp_path, **{key: value}))
