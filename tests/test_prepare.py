"""The prepare stage end to end on a small synthetic VOC: tables, targets, report, and clear errors on bad input."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipelines import prepare
from pipelines.validate import ValidationError
from yolov1.config import params_from_dict
from yolov1.encode import encode
from yolov1.synth import DEMO_CLASSES, generate_voc
from yolov1.voc import VOC_CLASSES, AnnotationError, parse_annotation, read_image_set

SPEC = dict(
    num_trainval=20,
    num_test=8,
    image_size=((64, 112), (56, 96)),
    seed=3,
    classes=DEMO_CLASSES,
    max_objects=5,
    object_size=(0.15, 0.45),
    difficult_size=(0.08, 0.12),
    difficult_fraction=0.2,
    truncated_fraction=0.3,
    max_overhang=0.3,
    max_iou=0.5,
    colour_jitter=12,
)
VOC = Path("extracted/VOCdevkit/VOC2007")
PREPARED_FILES = ["images.parquet", "objects.parquet", "report.json", "targets_test.npy", "targets_train.npy",
                  "validation.json"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("template") / "data"
    generate_voc(data / "extracted", **SPEC)
    return data


@pytest.fixture
def data(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the synthetic dataset at tmp_path/data (tests may break it)."""
    return Path(shutil.copytree(template, tmp_path / "data"))


def _params(repo_params_dict, data: Path, **overrides):
    raw = copy.deepcopy(repo_params_dict)
    raw["data"].update({"root": str(data), "train_sets": ["2007/trainval"], "test_sets": ["2007/test"], **overrides})
    return params_from_dict(raw)


def _expect_clean_failure(data: Path) -> None:
    leftovers = sorted(p.name for p in (data / "prepared").iterdir()) if (data / "prepared").exists() else []
    assert not {"images.parquet", "objects.parquet", "report.json"} & set(leftovers), leftovers
    assert not any(name.endswith(".npy") for name in leftovers), leftovers
    assert not [p for p in data.iterdir() if p.name.startswith(".prepared")]  # no staging dir left behind


def test_tables_targets_and_report(repo_params_dict, data: Path):
    params = _params(repo_params_dict, data)
    summary = prepare.run(params, workers=1)
    out = data / "prepared"
    assert sorted(p.name for p in out.iterdir()) == PREPARED_FILES
    images, objects = pd.read_parquet(out / "images.parquet"), pd.read_parquet(out / "objects.parquet")
    assert images.dtypes.astype(str).to_dict() == {
        "image_id": "string", "split": "string", "year": "int64", "path": "string", "width": "int64",
        "height": "int64",
    }  # fmt: skip
    assert objects.dtypes.astype(str).to_dict() == {
        "image_id": "string", "class_name": "string", "class_index": "int64",
        **dict.fromkeys(["xmin", "ymin", "xmax", "ymax", "xmin_n", "ymin_n", "xmax_n", "ymax_n"], "float64"),
        "difficult": "int8", "truncated": "int8",
    }  # fmt: skip

    # Rows match the XMLs, parsed one by one (the parser itself is tested in test_voc.py).
    devkit = data / "extracted" / "VOCdevkit"
    ids = {s: read_image_set(devkit, 2007, n) for s, n in (("train", "trainval"), ("test", "test"))}
    assert list(images["image_id"]) == [f"2007_{i}" for i in ids["train"] + ids["test"]]
    assert list(images["split"]) == ["train"] * 20 + ["test"] * 8
    expected = []
    for image_id in ids["train"] + ids["test"]:
        ann = parse_annotation(devkit / "VOC2007" / "Annotations" / f"{image_id}.xml", classes=VOC_CLASSES,
                               on_bad_object="error")
        row = images[images["image_id"] == f"2007_{image_id}"].iloc[0]
        assert (row["width"], row["height"]) == (ann.width, ann.height)
        assert row["path"] == f"{VOC}/JPEGImages/{image_id}.jpg" and (data / row["path"]).is_file()
        expected += [(f"2007_{image_id}", o.class_name, o.class_index, o.xmin, o.ymin, o.xmax, o.ymax,
                      int(o.difficult), int(o.truncated)) for o in ann.objects]
    columns = ["image_id", "class_name", "class_index", "xmin", "ymin", "xmax", "ymax", "difficult", "truncated"]
    assert [tuple(r) for r in objects[columns].itertuples(index=False)] == expected
    assert objects["difficult"].sum() > 0  # the dataset exercises the use_difficult rule

    # Normalised corners are the pixel corners over the image size.
    size = objects.merge(images, on="image_id")
    for col, dim in (("xmin", "width"), ("ymin", "height"), ("xmax", "width"), ("ymax", "height")):
        np.testing.assert_array_equal(size[f"{col}_n"], size[col] / size[dim])

    # Targets: (n, S, S, 5 + C) float32 in table order, each equal to encode() of the image's non-difficult boxes.
    displaced = {}
    for split in ("train", "test"):
        targets = np.load(out / f"targets_{split}.npy")
        split_ids = images.loc[images["split"] == split, "image_id"]
        assert targets.shape == (len(split_ids), 7, 7, 25) and targets.dtype == np.float32
        displaced[split] = 0
        for n, image_id in enumerate(split_ids):
            objs = objects[(objects["image_id"] == image_id) & (objects["difficult"] == 0)]
            xyxy = torch.tensor(objs[["xmin_n", "ymin_n", "xmax_n", "ymax_n"]].to_numpy(), dtype=torch.float64)
            cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
            labels = torch.tensor(objs["class_index"].to_numpy(), dtype=torch.int64)
            enc = encode(cxcywh.reshape(-1, 4), labels, 7, 20)
            np.testing.assert_array_equal(targets[n], enc.target.numpy(), err_msg=image_id)
            displaced[split] += enc.displaced
        assert int(targets[..., 4].sum()) == len(objects[objects["image_id"].isin(split_ids)
                                                         & (objects["difficult"] == 0)]) - displaced[split]

    # The report's counts agree with the tables.
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(summary))
    for split in ("train", "test"):
        objs = objects[objects["image_id"].isin(images.loc[images["split"] == split, "image_id"])]
        counts = report["splits"][split]
        assert counts["images"] == (20 if split == "train" else 8) and counts["objects"] == len(objs)
        assert counts["difficult"] == objs["difficult"].sum()
        assert counts["objects_in_targets"] == (objs["difficult"] == 0).sum()
        assert counts["displaced_by_cell_collisions"] == displaced[split]
        assert sum(c["objects"] for c in counts["per_class"].values()) == len(objs)
        assert counts["per_class"]["dog"]["images"] == objs.loc[objs["class_name"] == "dog", "image_id"].nunique()
    assert report["skipped_objects"] == {"total": 0, "by_reason": {}}
    assert report["validation"]["success"] and json.loads((out / "validation.json").read_text())["success"]
    assert set(report["timings_s"]) >= {"parse_and_tables", "check_images", "validate", "total"}


def test_use_difficult_puts_difficult_boxes_in_the_targets(repo_params_dict, data: Path):
    report = prepare.run(_params(repo_params_dict, data, use_difficult=True), workers=1)
    train = report["splits"]["train"]
    assert train["objects_in_targets"] == train["objects"] > train["objects"] - train["difficult"]
    targets = np.load(data / "prepared" / "targets_train.npy")
    assert int(targets[..., 4].sum()) == train["objects"] - train["displaced_by_cell_collisions"]


def test_two_workers_give_the_same_outputs(repo_params_dict, data: Path, tmp_path: Path):
    prepare.run(_params(repo_params_dict, data), workers=1)
    first = {n: (data / "prepared" / n).read_bytes() for n in ("images.parquet", "objects.parquet",
                                                                 "targets_train.npy", "targets_test.npy")}
    prepare.run(_params(repo_params_dict, data), workers=2)
    for name, content in first.items():
        assert (data / "prepared" / name).read_bytes() == content, name


def test_main_succeeds_and_reruns_replace_the_outputs(repo_params_dict, data: Path, tmp_path: Path, capsys):
    params_file = tmp_path / "params.yaml"
    raw = copy.deepcopy(repo_params_dict)
    raw["data"].update(root=str(data), train_sets=["2007/trainval"], test_sets=["2007/test"])
    params_file.write_text(yaml.safe_dump(raw))
    assert prepare.main(["--params", str(params_file), "--workers", "1"]) == 0
    assert "train: 20 images" in capsys.readouterr().out
    (data / "prepared" / "stale.txt").write_text("from an older run")
    assert prepare.main(["--params", str(params_file), "--workers", "1"]) == 0
    assert sorted(p.name for p in (data / "prepared").iterdir()) == PREPARED_FILES


def _break_and_run(repo_params_dict, data: Path, **overrides):
    """Prepare once (so that valid outputs exist), then run again on the now-broken data: return the error."""
    prepare.run(_params(repo_params_dict, data), workers=1)
    return lambda: prepare.run(_params(repo_params_dict, data, **overrides), workers=1)


def test_malformed_xml_is_named_and_leaves_no_tables(repo_params_dict, data: Path, tmp_path: Path, capsys):
    again = _break_and_run(repo_params_dict, data)
    xml = data / VOC / "Annotations" / "000003.xml"
    xml.write_text(xml.read_text().replace("</size>", "</sise>"))
    with pytest.raises(AnnotationError, match=r"000003\.xml:\d+: malformed XML"):
        again()
    _expect_clean_failure(data)
    params_file = tmp_path / "params.yaml"
    raw = copy.deepcopy(repo_params_dict)
    raw["data"].update(root=str(data), train_sets=["2007/trainval"], test_sets=["2007/test"])
    params_file.write_text(yaml.safe_dump(raw))
    assert prepare.main(["--params", str(params_file), "--workers", "1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "parse XML" not in line]  # minus tqdm
    assert len(err) == 1 and err[0].startswith("error: ") and "000003.xml:13: malformed XML" in err[0]


def test_unknown_class_is_an_error_or_skipped_and_counted(repo_params_dict, data: Path):
    again = _break_and_run(repo_params_dict, data)
    xml = data / VOC / "Annotations" / "000005.xml"
    xml.write_text(re.sub(r"<name>[^<]*</name>", "<name>unicorn</name>", xml.read_text(), count=1))
    with pytest.raises(AnnotationError, match=r"000005\.xml:\d+: object 0: unknown class 'unicorn'"):
        again()
    _expect_clean_failure(data)

    report = prepare.run(_params(repo_params_dict, data, on_bad_object="skip"), workers=1)
    assert report["skipped_objects"]["total"] == 1
    entry = report["skipped_objects"]["by_reason"]["unknown class 'unicorn'"]
    assert entry["count"] == 1 and "000005.xml: object 0" in entry["examples"][0]
    objects = pd.read_parquet(data / "prepared" / "objects.parquet")
    assert "unicorn" not in set(objects["class_name"])
    total = sum(s["objects"] for s in report["splits"].values())
    assert total == len(objects)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_jpeg_is_named(repo_params_dict, data: Path, damage: str):
    again = _break_and_run(repo_params_dict, data)
    jpg = data / VOC / "JPEGImages" / "000021.jpg"  # a test image
    if damage == "missing":
        jpg.unlink()
    else:
        jpg.write_bytes(jpg.read_bytes()[:-300])
    problem = "file missing" if damage == "missing" else "truncated or corrupt"
    with pytest.raises(prepare.PrepareError, match=rf"000021\.xml: image .*000021\.jpg: {problem}"):
        again()
    _expect_clean_failure(data)


def test_xml_size_that_disagrees_with_the_image_is_named(repo_params_dict, data: Path):
    again = _break_and_run(repo_params_dict, data)
    xml = data / VOC / "Annotations" / "000002.xml"
    text = xml.read_text()
    width = int(text.split("<width>")[1].split("<")[0])
    height = int(text.split("<height>")[1].split("<")[0])
    xml.write_text(text.replace(f"<width>{width}</width>", f"<width>{width + 7}</width>"))
    message = (rf"000002\.xml: image .*000002\.jpg: size {width}x{height} in the file but "
               rf"{width + 7}x{height} in the annotation")
    with pytest.raises(prepare.PrepareError, match=message):
        again()
    _expect_clean_failure(data)


def test_gate_failure_writes_validation_json_and_no_tables(repo_params_dict, data: Path, tmp_path, capsys):
    again = _break_and_run(repo_params_dict, data, test_sets=["2007/trainval"])  # every id twice: not unique
    with pytest.raises(ValidationError, match="image ids are unique") as info:
        again()
    failure = next(f for f in info.value.report.failures if f.rule == "image ids are unique")
    assert failure.unexpected_count == 40 and failure.rows[0]["image_id"] == "2007_000001"
    _expect_clean_failure(data)
    assert json.loads((data / "prepared" / "validation.json").read_text())["success"] is False

    params_file = tmp_path / "params.yaml"
    raw = copy.deepcopy(repo_params_dict)
    raw["data"].update(root=str(data), train_sets=["2007/trainval"], test_sets=["2007/trainval"])
    params_file.write_text(yaml.safe_dump(raw))
    assert prepare.main(["--params", str(params_file), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: data validation failed" in err and "2007_000001" in err and "validation.json" in err


def test_missing_image_set_list_is_named(repo_params_dict, data: Path):
    params = _params(repo_params_dict, data, test_sets=["2007/nosuchsplit"])
    with pytest.raises(prepare.PrepareError, match=r"nosuchsplit\.txt: image set list not found"):
        prepare.run(params, workers=1)
    _expect_clean_failure(data)


def test_encode_targets_of_no_objects_is_all_zero(repo_params_dict, data: Path):
    params = _params(repo_params_dict, data)
    images = pd.DataFrame({"image_id": ["a", "b"]})
    objects = pd.DataFrame(columns=["image_id", "class_index", "xmin_n", "ymin_n", "xmax_n", "ymax_n", "difficult"])
    targets, displaced = prepare.encode_targets(images, objects, params.model, use_difficult=False)
    assert targets.shape == (2, 7, 7, 25) and not targets.any() and displaced == 0


def test_encode_targets_matches_encode_per_image_in_a_pool_too(repo_params_dict, data: Path, monkeypatch):
    model = _params(repo_params_dict, data).model
    rng = np.random.default_rng(0)
    images = pd.DataFrame({"image_id": [f"i{n}" for n in range(40)]})
    rows = []
    for n in rng.permutation(np.repeat(np.arange(41), rng.integers(0, 5, 41))):  # "i40" is in no image row
        x0, y0 = rng.uniform(0, 0.6, 2)
        x1, y1 = x0 + rng.uniform(0.01, 0.4), y0 + rng.uniform(0.01, 0.4)
        rows.append((f"i{n}", int(rng.integers(20)), x0, y0, x1, y1, int(rng.random() < 0.3)))
    objects = pd.DataFrame(rows, columns=["image_id", "class_index", "xmin_n", "ymin_n", "xmax_n", "ymax_n",
                                          "difficult"])
    serial = prepare.encode_targets(images, objects, model, use_difficult=False)
    monkeypatch.setattr(prepare, "_POOL_MIN_IMAGES", 8)
    pooled = prepare.encode_targets(images, objects, model, use_difficult=False, workers=2)
    np.testing.assert_array_equal(pooled[0], serial[0])
    assert pooled[1] == serial[1]
    displaced = 0
    for n, image_id in enumerate(images["image_id"]):  # the plain loop, in the objects' own order
        objs = objects[(objects["image_id"] == image_id) & (objects["difficult"] == 0)]
        x0, y0, x1, y1 = (torch.tensor(objs[c].to_numpy()) for c in ("xmin_n", "ymin_n", "xmax_n", "ymax_n"))
        boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=1).reshape(-1, 4)
        enc = encode(boxes, torch.tensor(objs["class_index"].to_numpy()), 7, 20)
        np.testing.assert_array_equal(serial[0][n], enc.target.numpy())
        displaced += enc.displaced
    assert serial[1] == displaced > 0  # the random boxes do collide


def test_outputs_are_readable_by_group_and_others_under_umask_022(repo_params_dict, data: Path):
    import stat

    old = os.umask(0o022)
    try:
        prepare.run(_params(repo_params_dict, data), workers=1)
    finally:
        os.umask(old)
    out = data / "prepared"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # mkdtemp's 0700 used to stick to the published folder
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name  # validation.json was 0600 (mkstemp)


def test_leftovers_of_a_killed_prepare_are_removed_on_the_next_run(repo_params_dict, data: Path, caplog):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a pid whose process has exited
    stale = [data / ".prepared-abc123", data / f".prepared-{dead_pid}-xyz", data / f".prepared.old-{dead_pid}"]
    for path in stale:
        path.mkdir()
        (path / "images.parquet").write_bytes(b"half")
    live = data / f".prepared-{os.getppid()}-live"  # the pid of a live process: another prepare may be filling it
    live.mkdir()
    with caplog.at_level("WARNING", logger="yolov1.prepare"):
        prepare.run(_params(repo_params_dict, data), workers=1)
    assert not any(p.exists() for p in stale)
    assert live.is_dir()
    assert sum("left behind by an interrupted prepare" in r.getMessage() for r in caplog.records) == 3
    assert sorted(p.name for p in (data / "prepared").iterdir()) == PREPARED_FILES
