"""The synthetic VOC generator: VOC layout and XML, boxes that fit the drawn shapes, determinism, the tarball."""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov1.synth import (
    CLASS_STYLES,
    DEMO_CLASSES,
    generate_voc,
    generate_voc_tarball,
    make_tarball,
    write_voc_standins,
)
from yolov1.voc import VOC_CLASSES, parse_annotation, read_image_set

SPEC = dict(
    num_trainval=24,
    num_test=8,
    image_size=((96, 160), (80, 144)),
    seed=7,
    classes=DEMO_CLASSES,
    max_objects=4,
    object_size=(0.2, 0.5),
    difficult_size=(0.08, 0.12),
    difficult_fraction=0.15,
    truncated_fraction=0.3,
    max_overhang=0.3,
    max_iou=0.3,
    colour_jitter=12,
)


@pytest.fixture(scope="module")
def devkit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_voc(tmp_path_factory.mktemp("synth"), **SPEC)


def _annotations(devkit: Path, split: str):
    voc = devkit / "VOC2007"
    for image_id in read_image_set(devkit, 2007, split):
        path = voc / "Annotations" / f"{image_id}.xml"
        yield image_id, parse_annotation(path, classes=DEMO_CLASSES, on_bad_object="error")


def _iou(a, b) -> float:
    iw = max(0.0, min(a.xmax, b.xmax) - max(a.xmin, b.xmin))
    ih = max(0.0, min(a.ymax, b.ymax) - max(a.ymin, b.ymin))
    union = (a.xmax - a.xmin) * (a.ymax - a.ymin) + (b.xmax - b.xmin) * (b.ymax - b.ymin) - iw * ih
    return iw * ih / union


def test_class_styles_are_distinct():
    assert set(CLASS_STYLES) == set(VOC_CLASSES)
    pairs = [(s.shape, s.colour) for s in CLASS_STYLES.values()]
    assert len(set(pairs)) == len(pairs)
    demo = [CLASS_STYLES[c] for c in DEMO_CLASSES]
    assert len({s.shape for s in demo}) == len({s.colour for s in demo}) == len(DEMO_CLASSES)


def test_layout_and_split_files(devkit: Path):
    voc = devkit / "VOC2007"
    train, val, trainval, test = (read_image_set(devkit, 2007, s) for s in ("train", "val", "trainval", "test"))
    assert len(trainval) == 24 and len(test) == 8
    assert sorted(train + val) == trainval and not set(train) & set(val)
    assert not set(trainval) & set(test)
    ids = sorted(trainval + test)
    assert ids[0] == "000001" and ids == [f"{n:06d}" for n in range(1, 33)]
    assert sorted(p.stem for p in (voc / "JPEGImages").iterdir()) == ids
    assert sorted(p.stem for p in (voc / "Annotations").iterdir()) == ids
    assert not any(p.name.startswith(".") for p in devkit.parent.iterdir())  # no staging dir left behind


def test_xml_is_voc_format_and_boxes_fit_their_images(devkit: Path):
    counts = []
    for split in ("trainval", "test"):
        for image_id, ann in _annotations(devkit, split):
            # on_bad_object="error" above already rejects any box outside its image; check it plainly too.
            assert ann.filename == f"{image_id}.jpg"
            with Image.open(devkit / "VOC2007" / "JPEGImages" / ann.filename) as image:
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (ann.width, ann.height)
            assert 96 <= ann.width <= 160 and 80 <= ann.height <= 144
            for obj in ann.objects:
                assert 0 <= obj.xmin < obj.xmax <= ann.width and 0 <= obj.ymin < obj.ymax <= ann.height
                assert obj.xmin == int(obj.xmin) and obj.xmax == int(obj.xmax)  # VOC integer corners
            for a, b in itertools.combinations(ann.objects, 2):
                assert _iou(a, b) <= SPEC["max_iou"]
            counts.append(len(ann.objects))
    assert 1 <= min(counts) and max(counts) <= SPEC["max_objects"] and len(set(counts)) > 1
    text = (devkit / "VOC2007" / "Annotations" / "000001.xml").read_text()
    for tag in ("<folder>VOC2007</folder>", "<source>", "<depth>3</depth>", "<segmented>0</segmented>",
                "<pose>Unspecified</pose>", "<truncated>", "<difficult>", "<bndbox>"):  # fmt: skip
        assert tag in text


def test_some_objects_truncated_and_some_difficult(devkit: Path):
    objects = [(ann, obj) for _, ann in _annotations(devkit, "trainval") for obj in ann.objects]
    truncated = [(ann, o) for ann, o in objects if o.truncated]
    difficult = [o for _, o in objects if o.difficult]
    assert len(truncated) >= 3 and len(difficult) >= 2 and len(objects) - len(truncated) - len(difficult) >= 10
    for ann, obj in truncated:  # cut by the image border, so its box touches it
        assert obj.xmin == 0 or obj.ymin == 0 or obj.xmax == ann.width or obj.ymax == ann.height
    # A shape of side s (fraction of the shorter image side) with aspect a is round(s*sqrt(a)) x round(s/sqrt(a))
    # pixels, so the square root of its box area stays within about 1 px of s: difficult ones are the small ones.
    for ann, obj in objects:
        side = ((obj.xmax - obj.xmin) * (obj.ymax - obj.ymin)) ** 0.5 / min(ann.width, ann.height)
        if obj.difficult:
            assert side <= 0.12 + 1.5 / min(ann.width, ann.height) and not obj.truncated
        elif not obj.truncated:
            assert side >= 0.2 - 1.5 / min(ann.width, ann.height)


def test_shapes_lie_inside_their_boxes(devkit: Path):
    checked = 0
    for _, ann in _annotations(devkit, "trainval"):
        pixels = np.asarray(Image.open(devkit / "VOC2007" / "JPEGImages" / ann.filename), dtype=np.float32)
        for obj in ann.objects:
            x0, y0, x1, y1 = int(obj.xmin), int(obj.ymin), int(obj.xmax), int(obj.ymax)
            m = 4  # a band this wide around an isolated, ordinary object holds no other object
            others = [o for o in ann.objects if o is not obj]
            if obj.difficult or any(o.xmin < x1 + m and o.xmax > x0 - m and o.ymin < y1 + m and o.ymax > y0 - m for o in others):
                continue
            colour = np.asarray(CLASS_STYLES[obj.class_name].colour, dtype=np.float32)
            near = np.linalg.norm(pixels - colour, axis=-1) < 60  # (H, W): jitter 12 + grain 16 + JPEG
            inside = near[y0:y1, x0:x1].mean()
            band = np.zeros_like(near)
            band[max(0, y0 - m) : y1 + m, max(0, x0 - m) : x1 + m] = True
            band[y0:y1, x0:x1] = False
            # Every shape covers at least ~30% of its box (a star the least); the band outside shows none of it.
            assert inside > 0.2, (ann.filename, obj)
            assert near[band].mean() < 0.05, (ann.filename, obj)
            checked += 1
    assert checked >= 10


def test_same_seed_gives_identical_files_other_seed_differs(tmp_path: Path):
    spec = {**SPEC, "num_trainval": 4, "num_test": 2}
    a, b, c = (generate_voc(tmp_path / name, **{**spec, "seed": seed}) for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files_a) == 6 * 2 + 4
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    jpg = Path("VOC2007/JPEGImages/000001.jpg")
    assert (a / jpg).read_bytes() != (c / jpg).read_bytes()


def test_no_test_split_and_bad_arguments(tmp_path: Path):
    devkit = generate_voc(tmp_path / "x", **{**SPEC, "num_trainval": 3, "num_test": 0, "year": 2012})
    main = devkit / "VOC2012" / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["train.txt", "trainval.txt", "val.txt"]
    assert read_image_set(devkit, 2012, "trainval") == ["2012_000001", "2012_000002", "2012_000003"]
    with pytest.raises(FileExistsError, match="VOC2012"):
        generate_voc(tmp_path / "x", **{**SPEC, "year": 2012})
    with pytest.raises(ValueError, match="unicorn"):
        generate_voc(tmp_path / "y", **{**SPEC, "classes": ("dog", "unicorn")})
    with pytest.raises(ValueError, match="some images"):
        generate_voc(tmp_path / "y", **{**SPEC, "num_trainval": 0, "num_test": 0})


def test_tarball_layout_and_deterministic_md5(tmp_path: Path, devkit: Path):
    md5 = make_tarball(devkit.parent, tmp_path / "a.tar")
    assert md5 == hashlib.md5((tmp_path / "a.tar").read_bytes()).hexdigest()
    assert make_tarball(devkit.parent, tmp_path / "b.tar") == md5
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[0] == "VOCdevkit" and members[0].isdir()
        assert all(n == "VOCdevkit" or n.startswith("VOCdevkit/") for n in names)
        assert "VOCdevkit/VOC2007/JPEGImages/000001.jpg" in names
        assert "VOCdevkit/VOC2007/ImageSets/Main/test.txt" in names
        assert all(m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" for m in members)
        tar.extractall(tmp_path / "out", filter="data")
    rel = Path("VOCdevkit/VOC2007/Annotations/000003.xml")
    assert (tmp_path / "out" / rel).read_bytes() == (devkit.parent / rel).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar", "out"]  # no temp files left


def test_generate_voc_tarball_is_reproducible(tmp_path: Path):
    spec = {**SPEC, "num_trainval": 3, "num_test": 1}
    path, md5, size = generate_voc_tarball(tmp_path / "one" / "voc.tar", **spec)
    again = generate_voc_tarball(tmp_path / "two.tar", **spec)
    assert path == tmp_path / "one" / "voc.tar" and size == path.stat().st_size > 0
    assert again[1:] == (md5, size)


def test_workers_and_folder_route_give_the_same_bytes_and_progress_counts_every_image(tmp_path: Path):
    spec = {**SPEC, "num_trainval": 9, "num_test": 3}
    seen: list[tuple[int, int]] = []
    _, md5_one, _ = generate_voc_tarball(tmp_path / "one.tar", **spec)
    _, md5_two, _ = generate_voc_tarball(tmp_path / "two.tar", workers=2, progress=lambda d, t: seen.append((d, t)),
                                         **spec)
    generate_voc(tmp_path / "folder", **spec)
    assert md5_one == md5_two == make_tarball(tmp_path / "folder", tmp_path / "packed.tar")
    assert seen == [(d, 12) for d in range(1, 13)]  # once per image, in order, in this process


def test_tarball_mode_follows_the_umask(tmp_path: Path):
    old = os.umask(0o027)
    try:
        path, _, _ = generate_voc_tarball(tmp_path / "voc.tar", **{**SPEC, "num_trainval": 1, "num_test": 0})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0666 & ~0027, not mkstemp's 0600


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory):
    return write_voc_standins(tmp_path_factory.mktemp("standins"), num_2007_trainval=7, num_2007_test=5,
                              num_2012_trainval=4)


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
        return tar.getnames()


def test_standins_have_the_official_names_and_2007_ids_interleave(standins):
    tv07, te07, tv12 = standins
    assert [(s.name, s.filename, s.year, s.image_set) for s in standins] == [
        ("voc2007-trainval", "VOCtrainval_06-Nov-2007.tar", 2007, "trainval"),
        ("voc2007-test", "VOCtest_06-Nov-2007.tar", 2007, "test"),
        ("voc2012-trainval", "VOCtrainval_11-May-2012.tar", 2012, "trainval"),
    ]
    # 12 ids in one range; position k (0-based) is test when (k + 1) * 5 // 12 > k * 5 // 12: k = 2, 4, 7, 9, 11.
    assert sorted(tv07.ids + te07.ids) == [f"{n:06d}" for n in range(1, 13)] and not set(tv07.ids) & set(te07.ids)
    assert te07.ids == ("000003", "000005", "000008", "000010", "000012")
    assert tv12.ids == ("2008_000008", "2009_000010", "2010_000012", "2011_000014")
    assert all(s.difficult_objects > 0 for s in standins)  # the rehearsal checks difficult objects are dropped
    for s in standins:
        assert s.md5 == hashlib.md5(s.path.read_bytes()).hexdigest() and s.size == s.path.stat().st_size


def test_standin_archives_carry_only_their_own_lists(standins):
    tv07, te07, tv12 = standins
    main07, main12 = "VOCdevkit/VOC2007/ImageSets/Main/", "VOCdevkit/VOC2012/ImageSets/Main/"
    lists = {s.filename: sorted(n.removeprefix(main07).removeprefix(main12) for n in _tar_names(s.path)
                                if n.startswith((main07, main12)) and n.endswith(".txt")) for s in standins}
    assert lists[te07.filename] == sorted(["test.txt"] + [f"{c}_test.txt" for c in VOC_CLASSES])
    expected_tv = sorted(f"{p}{s}.txt" for s in ("train", "val", "trainval") for p in ("", *(c + "_" for c in VOC_CLASSES)))
    assert lists[tv07.filename] == lists[tv12.filename] == expected_tv
    names = _tar_names(te07.path)
    assert names[0] == "VOCdevkit" and all(n == "VOCdevkit" or n.startswith("VOCdevkit/VOC2007") for n in names)
    assert {n for n in names if n.endswith(".jpg")} == {f"VOCdevkit/VOC2007/JPEGImages/{i}.jpg" for i in te07.ids}


def test_standins_extract_into_the_merged_official_devkit(tmp_path: Path, standins):
    for s in standins:  # in the order the README gives: 2007 trainval, 2007 test, 2012 trainval
        with tarfile.open(s.path) as tar:
            tar.extractall(tmp_path, filter="data")
    devkit = tmp_path / "VOCdevkit"
    assert sorted(p.name for p in devkit.iterdir()) == ["VOC2007", "VOC2012"]
    tv07, te07, tv12 = standins
    assert read_image_set(devkit, 2007, "trainval") == list(tv07.ids)
    assert read_image_set(devkit, 2007, "test") == list(te07.ids)
    assert read_image_set(devkit, 2012, "trainval") == list(tv12.ids)
    assert read_image_set(devkit, 2007, "train") + read_image_set(devkit, 2007, "val") != []
    # The per-class flags agree with the XML: 1 some non-difficult object, 0 only difficult ones, -1 none.
    for year, image_set in ((2007, "trainval"), (2007, "test"), (2012, "trainval")):
        main = devkit / f"VOC{year}" / "ImageSets" / "Main"
        for cls in VOC_CLASSES:
            for line in (main / f"{cls}_{image_set}.txt").read_text().splitlines():
                image_id, flag = line.split()
                ann = parse_annotation(devkit / f"VOC{year}" / "Annotations" / f"{image_id}.xml",
                                       classes=VOC_CLASSES, on_bad_object="error")
                mine = [o for o in ann.objects if o.class_name == cls]
                want = 1 if any(not o.difficult for o in mine) else 0 if mine else -1
                assert int(flag) == want, (year, image_set, cls, image_id)
    used = set()
    for year in (2007, 2012):
        for xml in (devkit / f"VOC{year}" / "Annotations").iterdir():
            ann = parse_annotation(xml, classes=VOC_CLASSES, on_bad_object="error")
            used |= {o.class_name for o in ann.objects}
            assert Image.open(devkit / f"VOC{year}" / "JPEGImages" / f"{xml.stem}.jpg").size == (ann.width, ann.height)
    assert used <= set(VOC_CLASSES) and len(used) >= 10


def test_standins_are_reproducible_and_reject_empty_archives(tmp_path: Path, standins):
    again = write_voc_standins(tmp_path, num_2007_trainval=7, num_2007_test=5, num_2012_trainval=4, workers=2)
    assert [s.md5 for s in again] == [s.md5 for s in standins]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(s.filename for s in standins)  # no temp files
    with pytest.raises(ValueError, match="at least one image"):
        write_voc_standins(tmp_path / "x", num_2007_test=0)


def test_every_standin_has_difficult_objects_and_progress_covers_all_images(tmp_path: Path):
    seen: list[tuple[int, int]] = []
    standins = write_voc_standins(tmp_path, num_2007_trainval=1, num_2007_test=1, num_2012_trainval=1, seed=3,
                                  progress=lambda d, t: seen.append((d, t)))
    assert [s.ids for s in standins] == [("000001",), ("000002",), ("2008_000008",)]
    assert all(s.difficult_objects >= 1 for s in standins)  # by construction, not by luck of the seed
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_demo_data_bytes_are_pinned(tmp_path: Path):
    """The README's demo figures were measured on exactly these bytes: a speed-up of the generator must not change
    them. (The md5 is of the pre-speed-up generator's output; if a pinned Pillow/libjpeg upgrade changes JPEG
    encoding, re-measure the demo and update it.)"""
    _, md5, _ = generate_voc_tarball(tmp_path / "voc.tar", **SPEC)
    assert md5 == "9b33c097fd1cca3512018fd2891caacc"
