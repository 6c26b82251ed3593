"""The data-validation gate: a clean table passes; each broken rule fails and names the offending row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.validate import (
    IMAGE_OK,
    ValidationError,
    check_image,
    check_image_files,
    check_tables,
    validate_tables,
)

CLASSES = ("cat", "dog", "person")
SIZES = {"2007_000001": (40, 30), "2007_000002": (32, 48), "2007_000003": (24, 24), "2007_000004": (36, 20)}


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Four images (three train, one test) with five objects, and the JPEG files under a root."""
    root = tmp_path_factory.mktemp("gate")
    rows = []
    for n, (image_id, (w, h)) in enumerate(SIZES.items()):
        rel = f"extracted/VOCdevkit/VOC2007/JPEGImages/{image_id[5:]}.jpg"
        _jpeg(root / rel, (w, h), seed=n)
        rows.append((image_id, "test" if n == 3 else "train", 2007, rel, w, h))
    images = pd.DataFrame(rows, columns=["image_id", "split", "year", "path", "width", "height"])
    boxes = [  # (image_id, class, xmin, ymin, xmax, ymax, difficult, truncated); a whole-image box included
        ("2007_000001", "cat", 0.0, 0.0, 40.0, 30.0, 0, 1),
        ("2007_000001", "dog", 4.0, 5.0, 20.0, 25.0, 1, 0),
        ("2007_000002", "person", 10.0, 2.0, 30.0, 47.0, 0, 0),
        ("2007_000003", "dog", 1.0, 1.0, 2.0, 2.0, 0, 0),
        ("2007_000004", "cat", 3.0, 4.0, 35.0, 19.0, 0, 0),
    ]
    objects = pd.DataFrame(boxes, columns=["image_id", "class_name", "xmin", "ymin", "xmax", "ymax", "difficult",
                                           "truncated"])
    objects.insert(2, "class_index", objects["class_name"].map(CLASSES.index))
    w = objects["image_id"].map(lambda i: SIZES[i][0])
    h = objects["image_id"].map(lambda i: SIZES[i][1])
    for col, size in (("xmin", w), ("ymin", h), ("xmax", w), ("ymax", h)):
        objects[f"{col}_n"] = objects[col] / size
    return root, images, objects


def _validate(root: Path, images: pd.DataFrame, objects: pd.DataFrame, **kwargs):
    return validate_tables(images, objects, classes=CLASSES, image_root=root, result_path=None, **kwargs)


def _failure(report, table: str, rule: str):
    found = [f for f in report.failures if f.table == table and f.rule == rule]
    assert found, f"no failure {table}: {rule!r} in {[f'{f.table}: {f.rule}' for f in report.failures]}"
    return found[0]


def test_clean_tables_pass_and_result_json_is_written(clean, tmp_path: Path):
    root, images, objects = clean
    result_path = tmp_path / "out" / "validation.json"
    report = validate_tables(images, objects, classes=CLASSES, image_root=root, result_path=result_path)
    assert report.success and report.failures == ()
    assert report.statistics["objects"]["unsuccessful_expectations"] == 0
    saved = json.loads(result_path.read_text())
    assert saved["success"] is True and set(saved) == {"success", "images", "objects"}
    assert [p.name for p in result_path.parent.iterdir()] == ["validation.json"]  # no temp file left
    assert check_tables(images, objects, classes=CLASSES, image_root=root, result_path=None).success
    assert report.to_dict()["failures"] == []


@pytest.mark.parametrize(
    ("column", "row", "value", "rule"),
    [
        ("class_name", 2, "unicorn", "known class"),
        ("xmin", 1, 20.0, "xmin < xmax"),  # xmin = xmax = 20
        ("xmax", 2, 32.5, "xmax <= width"),  # image 2 is 32 px wide
        ("ymin", 4, -1.0, "0 <= ymin"),
        ("difficult", 0, 2, "difficult in {0, 1}"),
        ("class_index", 3, 0, "class_index is the position of class_name in the classes"),  # dog is 1, not 0
    ],
)
def test_each_broken_object_rule_names_the_row(clean, column, row, value, rule):
    root, images, objects = clean
    broken = objects.copy()
    broken.loc[row, column] = value
    report = _validate(root, images, broken)
    assert not report.success
    failure = _failure(report, "objects", rule)
    assert failure.unexpected_count == 1 and failure.table == "objects"
    offending = failure.rows[0]
    assert offending["row"] == row and offending["image_id"] == objects.loc[row, "image_id"]
    assert offending[column] == value
    assert column in failure.columns and rule in failure.describe()


def test_unknown_class_also_breaks_the_index_pair_and_both_are_listed(clean):
    root, images, objects = clean
    broken = objects.copy()
    broken.loc[0, "class_name"] = "unicorn"
    with pytest.raises(ValidationError) as info:
        check_tables(images, broken, classes=CLASSES, image_root=root, result_path=None)
    lines = str(info.value).splitlines()
    assert lines[0] == "data validation failed: 2 rule(s) broken"
    assert any("known class" in line and "'unicorn'" in line and "2007_000001" in line for line in lines[1:])
    assert info.value.report.failures[0].to_dict()["rows"][0]["image_id"] == "2007_000001"


def test_duplicate_image_id_names_both_rows(clean):
    root, images, objects = clean
    broken = images.copy()
    broken.loc[2, "image_id"] = "2007_000001"
    failure = _failure(_validate(root, broken, objects), "images", "image ids are unique")
    assert failure.unexpected_count == 2 and sorted(r["row"] for r in failure.rows) == [0, 2]
    assert {r["image_id"] for r in failure.rows} == {"2007_000001"}


def test_zero_width_is_named(clean):
    root, images, objects = clean
    broken = images.copy()
    broken.loc[3, "width"] = 0
    report = _validate(root, broken, objects)
    failure = _failure(report, "images", "width > 0")
    assert failure.rows == ({"row": 3, "image_id": "2007_000004", "width": 0},)
    # its object no longer fits either: xmax 35 > width 0
    assert _failure(report, "objects", "xmax <= width").rows[0]["image_id"] == "2007_000004"


def test_empty_split_fails_with_the_missing_split(clean):
    root, images, objects = clean
    train = images[images["split"] == "train"]
    report = _validate(root, train, objects[objects["image_id"] != "2007_000004"])
    failure = _failure(report, "images", "every split of ['train', 'test'] has images")
    assert "missing values: ['test']" in failure.detail
    assert _validate(root, train, objects[objects["image_id"] != "2007_000004"], splits=("train",)).success


def test_unexpected_split_and_orphan_object(clean):
    root, images, objects = clean
    broken_images = images.copy()
    broken_images.loc[1, "split"] = "val"
    orphan = pd.concat([objects, objects.iloc[[0]].assign(image_id="2007_999999")], ignore_index=True)
    report = _validate(root, broken_images, orphan)
    assert _failure(report, "images", "split in ['train', 'test']").rows[0]["image_id"] == "2007_000002"
    assert _failure(report, "objects", "image_id in images").rows[0] == {"row": 5, "image_id": "2007_999999", "has_image": False}


def test_missing_and_truncated_image_files_are_named(clean, tmp_path: Path):
    root, images, objects = clean
    data = tmp_path / "data"
    for rel in images["path"]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes((root / rel).read_bytes())
    (data / images.loc[0, "path"]).unlink()
    jpeg = (data / images.loc[2, "path"]).read_bytes()
    (data / images.loc[2, "path"]).write_bytes(jpeg[: len(jpeg) * 2 // 3])  # cut inside the compressed data
    report = _validate(data, images, objects)
    failure = _failure(report, "images", "image file present, complete, of this size")
    assert [(r["row"], r["image_id"]) for r in failure.rows] == [(0, "2007_000001"), (2, "2007_000003")]
    assert failure.rows[0]["image_status"] == "file missing"
    assert failure.rows[1]["image_status"].startswith("truncated or corrupt")


def test_precomputed_image_status_is_used_and_none_skips_the_file_rule(clean):
    root, images, objects = clean
    status = pd.Series([IMAGE_OK, "file missing", IMAGE_OK, IMAGE_OK])
    failure = _failure(_validate(root, images, objects, image_status=status), "images",
                       "image file present, complete, of this size")
    assert failure.rows == ({"row": 1, "image_id": "2007_000002", "image_status": "file missing"},)
    report = validate_tables(images.assign(path="nowhere.jpg"), objects, classes=CLASSES, image_root=None,
                             result_path=None)
    assert report.success and report.statistics["images"]["evaluated_expectations"] == 6


def test_failed_result_json_keeps_every_offending_row(clean, tmp_path: Path):
    root, images, objects = clean
    broken = objects.assign(difficult=7)  # all five rows
    report = validate_tables(images, broken, classes=CLASSES, image_root=root, result_path=tmp_path / "v.json")
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["success"] is False and not report.success
    [result] = [r for r in saved["objects"]["results"] if not r["success"]]
    assert result["expectation_config"]["kwargs"]["column"] == "difficult"
    assert [r["image_id"] for r in result["result"]["unexpected_index_list"]] == list(objects["image_id"])


def test_missing_schema_column_is_a_value_error(clean):
    root, images, objects = clean
    with pytest.raises(ValueError, match=r"objects table lacks column\(s\) \['xmin_n'\]"):
        _validate(root, images, objects.drop(columns="xmin_n"))


def test_empty_objects_table_passes(clean):
    root, images, objects = clean
    assert _validate(root, images, objects.iloc[:0]).success


def test_check_image(tmp_path: Path):
    path = tmp_path / "a.jpg"
    _jpeg(path, (64, 48), seed=1)
    data = path.read_bytes()
    assert data.endswith(b"\xff\xd9")
    assert check_image(path) == IMAGE_OK and check_image(path, (64, 48)) == IMAGE_OK
    assert check_image(path, (48, 64)) == "size 64x48 in the file but 48x64 in the table"
    assert check_image(tmp_path / "none.jpg") == "file missing"
    padded = tmp_path / "padded.jpg"  # complete, with junk after the end-of-image marker: full decode accepts it
    padded.write_bytes(data + b"junk")
    assert check_image(padded) == IMAGE_OK
    for cut in (len(data) - 2, len(data) // 2, 200):  # every cut loses the marker and fails the full decode
        truncated = tmp_path / f"cut{cut}.jpg"
        truncated.write_bytes(data[:cut])
        assert check_image(truncated).startswith("truncated or corrupt"), cut
    (tmp_path / "text.jpg").write_text("not an image")
    assert check_image(tmp_path / "text.jpg").startswith("truncated or corrupt")
    png = tmp_path / "a.png"  # other formats are always fully decoded
    Image.new("RGB", (64, 48), (9, 9, 9)).save(png)
    png_data = png.read_bytes()
    assert check_image(png) == IMAGE_OK
    png.write_bytes(png_data[: len(png_data) - 30])
    assert check_image(png).startswith("truncated or corrupt")


def test_check_image_files_in_a_pool_matches_a_loop(tmp_path: Path):
    rows = []
    for n in range(70):  # >= 64 rows takes the pool
        rel = f"img/{n}.jpg"
        if n % 7:
            _jpeg(tmp_path / rel, (16, 12), seed=n)
        rows.append((rel, 16 if n % 5 else 12, 12))
    images = pd.DataFrame(rows, columns=["path", "width", "height"], index=range(100, 170))
    pooled = check_image_files(images, tmp_path, workers=2)
    looped = [check_image(tmp_path / p, (w, h)) for p, w, h in rows]
    assert list(pooled.index) == list(images.index) and list(pooled) == looped
    assert pooled.eq(IMAGE_OK).sum() == sum(1 for n in range(70) if n % 7 and n % 5)


def test_great_expectations_is_imported_lazily():
    code = "import sys, pipelines.validate; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
