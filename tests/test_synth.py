"""The synthetic VOC generator: VOC layout and XML, boxes that fit the drawn shapes, determinism, the tarball."""

from __future__ import annotations

import hashlib
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov1.synth import CLASS_STYLES, DEMO_CLASSES, generate_voc, generate_voc_tarball, make_tarball
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
