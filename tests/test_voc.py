"""VOC annotation parsing: real-world quirks, bad inputs, the 1-based -> 0-based conversion, image sets, pools."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from yolov1.voc import (
    VOC_CLASSES,
    Annotation,
    AnnotationError,
    parse_annotation,
    parse_annotations,
    read_image_set,
)


def _xml(objects: str, *, size: str = "<size><width>500</width><height>375</height><depth>3</depth></size>") -> str:
    return f"""<annotation>
\t<folder>VOC2007</folder>
\t<filename>000005.jpg</filename>
\t{size}
{objects}</annotation>
"""


def _obj(name: str, box: tuple, extra: str = "<pose>Left</pose><truncated>0</truncated><difficult>0</difficult>") -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"\t<object>\n\t\t<name>{name}</name>{extra}\n"
        f"\t\t<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>\n"
        "\t</object>\n"
    )


def _parse(text: str | bytes, on_bad_object: str = "error") -> Annotation:
    return parse_annotation(text, classes=VOC_CLASSES, on_bad_object=on_bad_object, name="Annotations/000005.xml")


def test_voc_classes_are_the_standard_twenty_in_order():
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES)  # VOC's order happens to be alphabetical


def test_one_based_corners_become_zero_based_continuous():
    # The whole image in VOC is xmin=1, ymin=1, xmax=W=500, ymax=H=375 (1-based inclusive pixels):
    # (xmin - 1, ymin - 1, xmax, ymax) = (0, 0, 500, 375), width 500 - 0 = 500 pixels, as many as the columns 1..500.
    # A single pixel at VOC (48, 240, 48, 240) covers [47, 48) x [239, 240): area 1.
    ann = _parse(_xml(_obj("dog", (1, 1, 500, 375)) + _obj("cat", (48, 240, 48, 240))))
    whole, pixel = ann.objects
    assert (whole.xmin, whole.ymin, whole.xmax, whole.ymax) == (0.0, 0.0, 500.0, 375.0)
    assert (pixel.xmin, pixel.ymin, pixel.xmax, pixel.ymax) == (47.0, 239.0, 48.0, 240.0)
    assert (whole.class_name, whole.class_index, pixel.class_index) == ("dog", 11, 7)
    assert (ann.filename, ann.width, ann.height, ann.skipped) == ("000005.jpg", 500, 375, ())


def test_decimal_coordinates_and_whitespace():
    # "273.5" - 1 = 272.5; surrounding whitespace in names and numbers is ignored.
    text = _xml("<object><name>\n  person </name><bndbox><xmin> 273.5 </xmin><ymin>10</ymin>"
                "<xmax>300.25</xmax><ymax>\n20\n</ymax></bndbox></object>\n")  # fmt: skip
    (obj,) = _parse(text).objects
    assert (obj.class_name, obj.xmin, obj.ymin, obj.xmax, obj.ymax) == ("person", 272.5, 9.0, 300.25, 20.0)


def test_missing_difficult_truncated_pose_default_to_zero():
    text = _xml(_obj("car", (10, 10, 50, 50), extra="") + _obj("car", (60, 60, 90, 90), extra="<difficult>1</difficult><truncated>1</truncated>"))
    plain, flagged = _parse(text).objects
    assert (plain.difficult, plain.truncated) == (False, False)
    assert (flagged.difficult, flagged.truncated) == (True, True)


def test_person_parts_and_extra_tags_are_ignored():
    text = _xml(
        "\t<object>\n\t\t<name>person</name><pose>Frontal</pose><truncated>0</truncated><difficult>0</difficult>\n"
        "\t\t<occluded>1</occluded><attributes><colour>red</colour></attributes>\n"
        "\t\t<bndbox><xmin>100</xmin><ymin>50</ymin><xmax>200</xmax><ymax>300</ymax></bndbox>\n"
        "\t\t<part><name>head</name><bndbox><xmin>140</xmin><ymin>55</ymin><xmax>170</xmax><ymax>90</ymax></bndbox></part>\n"
        "\t\t<part><name>hand</name><bndbox><xmin>101</xmin><ymin>150</ymin><xmax>120</xmax><ymax>170</ymax></bndbox></part>\n"
        "\t</object>\n"
        "\t<owner><flickrid>someone</flickrid></owner>\n"
    )
    ann = _parse(text)
    # The parts' names ("head", "hand") are not classes: had they been taken for objects, parsing would fail.
    assert len(ann.objects) == 1
    (obj,) = ann.objects
    assert (obj.class_name, obj.xmin, obj.ymin, obj.xmax, obj.ymax) == ("person", 99.0, 49.0, 200.0, 300.0)


def test_no_objects_is_an_empty_annotation():
    ann = _parse(_xml("").encode())
    assert ann.objects == () and ann.skipped == ()


def test_malformed_xml_names_file_and_line():
    text = "<annotation>\n<filename>a.jpg</filename>\n<size><width>5</width>\n</annotation>\n"  # <size> never closed
    with pytest.raises(AnnotationError, match=r"^Annotations/000005\.xml:4: malformed XML") as info:
        _parse(text)
    assert info.value.line == 4 and info.value.file == "Annotations/000005.xml"


def test_entity_expansion_bomb_is_refused():
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE annotation [\n <!ENTITY lol "lol">\n'
        + "".join(f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n' for i in range(1, 10))
        + "]>\n<annotation><filename>&lol9;</filename></annotation>\n"
    )
    with pytest.raises(AnnotationError, match=r"^Annotations/000005\.xml:3: refused unsafe XML: EntitiesForbidden"):
        _parse(bomb)


def test_unknown_class_errors_or_is_skipped_and_counted():
    text = _xml(_obj("dog", (1, 1, 10, 10)) + _obj("cat2", (5, 5, 20, 20)) + _obj("cat", (5, 5, 30, 30)))
    # Lines 1-4 are <annotation>, <folder>, <filename>, <size>; object 0 takes lines 5-8, so object 1 opens on 9.
    with pytest.raises(AnnotationError, match=r"^Annotations/000005\.xml:9: object 1: unknown class 'cat2'$"):
        _parse(text)
    ann = _parse(text, on_bad_object="skip")
    assert [o.class_name for o in ann.objects] == ["dog", "cat"]
    assert [(s.index, s.class_name, s.reason) for s in ann.skipped] == [(1, "cat2", "unknown class 'cat2'")]


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((0, 10, 50, 60), "outside the 500x375 image"),  # xmin 0 -> -1 < 0
        ((10, 10, 501, 60), "outside the 500x375 image"),  # xmax 501 > W
        ((10, 10, 50, 376), "outside the 500x375 image"),  # ymax 376 > H
        ((50, 10, 49, 60), "zero or negative area"),  # xmin - 1 = 49 = xmax: zero width
        ((50, 60, 70, 40), "zero or negative area"),  # ymax < ymin
        (("abc", 10, 20, 30), "is not a number: 'abc'"),
        (("nan", 10, 20, 30), "is not finite"),
    ],
)
def test_bad_box_errors_or_is_skipped(box, reason):
    text = _xml(_obj("dog", box) + _obj("dog", (1, 1, 10, 10)))
    with pytest.raises(AnnotationError, match=r"^Annotations/000005\.xml:5: object 0: .*" + reason):
        _parse(text)
    ann = _parse(text, on_bad_object="skip")
    assert len(ann.objects) == 1 and ann.objects[0].xmax == 10.0
    assert len(ann.skipped) == 1 and ann.skipped[0].index == 0 and reason in ann.skipped[0].reason


def test_object_without_bndbox_or_name_or_bad_flag():
    for body, reason in [
        ("<object><name>dog</name></object>", "missing <bndbox>"),
        ("<object><bndbox><xmin>1</xmin></bndbox></object>", "missing <name>"),
        ("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object>", "missing <bndbox><ymax>"),
        (_obj("dog", (1, 1, 5, 5), extra="<difficult>2</difficult>"), "<difficult> must be 0 or 1"),
    ]:
        with pytest.raises(AnnotationError, match=reason):
            _parse(_xml(body))
        (skipped,) = _parse(_xml(body), on_bad_object="skip").skipped
        assert reason in skipped.reason


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("", "missing <size>"),
        ("<size><width>500</width></size>", r"missing <size><height>"),
        ("<size><width>0</width><height>375</height></size>", "positive whole number"),
        ("<size><width>-5</width><height>375</height></size>", "positive whole number"),
        ("<size><width>500</width><height>x</height></size>", "not a number"),
    ],
)
def test_missing_or_bad_size_always_errors(size, message):
    with pytest.raises(AnnotationError, match=r"^Annotations/000005\.xml: .*" + message):
        parse_annotation(_xml("", size=size), classes=VOC_CLASSES, on_bad_object="skip", name="Annotations/000005.xml")


def test_wrong_root_and_missing_filename():
    with pytest.raises(AnnotationError, match="expected <annotation>"):
        _parse("<html></html>")
    with pytest.raises(AnnotationError, match="missing <filename>"):
        _parse("<annotation><size><width>5</width><height>5</height></size></annotation>")


def test_path_source_names_the_file(tmp_path: Path):
    path = tmp_path / "000005.xml"
    path.write_text(_xml(_obj("bird", (1, 1, 2, 2))), encoding="utf-8")
    assert parse_annotation(path, classes=VOC_CLASSES, on_bad_object="error").objects[0].class_name == "bird"
    with pytest.raises(AnnotationError, match=r"missing\.xml: cannot read annotation"):
        parse_annotation(tmp_path / "missing.xml", classes=VOC_CLASSES, on_bad_object="error")
    with pytest.raises(TypeError, match="pathlib.Path"):
        parse_annotation(str(path), classes=VOC_CLASSES, on_bad_object="error")


def test_class_index_follows_the_given_classes():
    (obj,) = parse_annotation(_xml(_obj("dog", (1, 1, 5, 5))), classes=["cat", "dog"], on_bad_object="error").objects
    assert obj.class_index == 1
    with pytest.raises(AnnotationError, match="unknown class 'dog'"):
        parse_annotation(_xml(_obj("dog", (1, 1, 5, 5))), classes=["cat"], on_bad_object="error")


def test_annotation_error_survives_pickling():
    # Workers send errors back pickled: the message must not get its "file:line:" prefix twice.
    error = pickle.loads(pickle.dumps(AnnotationError("unknown class 'x'", "a.xml", 3)))
    assert str(error) == "a.xml:3: unknown class 'x'" and (error.file, error.line) == ("a.xml", 3)


def test_read_image_set(tmp_path: Path):
    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "trainval.txt").write_text("000005\n000007\n\n000009  1\n")
    assert read_image_set(tmp_path, 2007, "trainval") == ["000005", "000007", "000009"]
    (main / "test.txt").write_text("")
    assert read_image_set(tmp_path, "2007", "test") == []
    with pytest.raises(FileNotFoundError, match=r"VOC2012/ImageSets/Main/trainval\.txt"):
        read_image_set(tmp_path, 2012, "trainval")


def _write_files(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = tmp_path / f"{i:06d}.xml"
        # object i has xmax = i + 2, so the order of the results is visible in the boxes
        path.write_text(_xml(_obj(VOC_CLASSES[i % 20], (1, 1, i + 2, 3))), encoding="utf-8")
        paths.append(path)
    return paths


def test_parse_annotations_pool_keeps_order_and_matches_serial(tmp_path: Path):
    paths = _write_files(tmp_path, 23)
    serial = parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="error", workers=1)
    pooled = parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="error", workers=2)
    assert pooled == serial
    assert [a.objects[0].xmax for a in pooled] == [float(i + 2) for i in range(23)]
    assert parse_annotations([], classes=VOC_CLASSES, on_bad_object="error", workers=2) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_parse_annotations_reports_progress(tmp_path: Path, workers: int):
    paths = _write_files(tmp_path, 300)  # 300 = 256 + 44 in this process; 16 chunks of <= 19 files with 2 workers
    done: list[int] = []
    parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="error", workers=workers, on_progress=done.append)
    assert sum(done) == 300 and len(done) == (2 if workers == 1 else 16)


def test_parse_annotations_reraises_first_error_with_its_file(tmp_path: Path):
    paths = _write_files(tmp_path, 12)
    for bad in (paths[5], paths[9]):
        bad.write_text(_xml(_obj("unicorn", (1, 1, 5, 5))), encoding="utf-8")
    for workers in (1, 2):
        with pytest.raises(AnnotationError, match=r"000005\.xml:5: object 0: unknown class 'unicorn'"):
            parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="error", workers=workers)
    skipped = parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="skip", workers=2)
    assert [i for i, a in enumerate(skipped) if a.skipped] == [5, 9]
    with pytest.raises(ValueError, match="workers"):
        parse_annotations(paths, classes=VOC_CLASSES, on_bad_object="error", workers=0)
