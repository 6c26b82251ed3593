"""A deterministic generator of small, learnable datasets in exactly PASCAL VOC's on-disk format.

Images are coloured shapes on textured backgrounds (how they are drawn: `yolov1.synth_draw`) with VOC XML
annotations and ImageSets lists, written as a devkit folder (`generate_voc`), one tarball laid out like an official
archive (`generate_voc_tarball`), or stand-ins for the three official archives (`write_voc_standins`), so the
demo and the tests run the real pipeline. The same arguments give byte-identical files, whatever ``workers``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from yolov1.synth_draw import CLASS_STYLES, DEMO_CLASSES, ClassStyle, DrawnObject, DrawSpec, render_sample
from yolov1.voc import VOC_CLASSES

__all__ = [
    "CLASS_STYLES", "DEMO_CLASSES", "ClassStyle", "Progress", "StandIn", "generate_voc", "make_tarball",
    "generate_voc_tarball", "write_voc_standins",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (images drawn so far, images in total), called in the calling process
_SPOOL_BYTES = 256 << 20  # a tarball's contents stay in memory up to this size, then spill to one temp file


@dataclasses.dataclass(frozen=True)
class StandIn:
    """One stand-in for an official VOC archive, as written by `write_voc_standins`."""

    name: str  # the data.archives entry name params.yaml uses for it, e.g. "voc2007-test"
    filename: str  # the official file name, e.g. "VOCtest_06-Nov-2007.tar"
    path: Path
    md5: str
    size: int  # bytes
    year: int
    image_set: str  # "trainval" or "test": the ImageSets/Main list the archive carries
    ids: tuple[str, ...]  # image ids in that list, in file order
    difficult_objects: int  # objects marked difficult in its annotations


def generate_voc(
    root: Path,
    *,
    num_trainval: int,
    num_test: int,
    image_size: tuple[int, int] | tuple[tuple[int, int], tuple[int, int]],
    seed: int,
    classes: Sequence[str],
    max_objects: int,
    object_size: tuple[float, float],
    difficult_size: tuple[float, float],
    difficult_fraction: float,
    truncated_fraction: float,
    max_overhang: float,
    max_iou: float,
    colour_jitter: int,
    year: int = 2007,
    jpeg_quality: int = 90,
    workers: int = 1,
    progress: Progress | None = None,
) -> Path:
    """Write a VOC-format dataset under ``root/VOCdevkit/VOC{year}`` and return ``root/VOCdevkit``.

    Layout: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and ``ImageSets/Main/{train,val,trainval,test}.txt``
    (``test.txt`` only when ``num_test > 0``). Ids are VOC-style: ``000001``... for 2007, ``{year}_000001``...
    otherwise; the first ``num_trainval`` ids are trainval (train: even positions, val: odd), the rest test.
    XML boxes are 1-based inclusive integers, exactly as VOC writes them.

    Args:
        image_size: ``(W, H)`` pixels, or ``((w_min, w_max), (h_min, h_max))`` drawn uniformly (inclusive) per image.
        seed: image ``n`` draws from ``numpy.random.default_rng([seed, n])``; same arguments -> byte-identical files.
        classes: VOC class names, keys of `CLASS_STYLES`; each object's class is drawn uniformly among them.
        max_objects: each image gets 1..max_objects objects (uniform), fewer when one finds no place.
        object_size: (min, max) side of an ordinary object, as a fraction of the image's shorter side (the square
            root of its box area before the class aspect is applied).
        difficult_size: (min, max) side of a small object marked ``difficult``, same units.
        difficult_fraction: probability that an object is a small, difficult one.
        truncated_fraction: probability that an (ordinary) object hangs past one border; its box is clipped to
            the visible pixels and it is marked ``truncated``.
        max_overhang: largest fraction of a truncated object's width/height that lies outside the image.
        max_iou: bound on the IoU between any two boxes of an image (larger objects are drawn first, so smaller
            ones stay visible).
        colour_jitter: each object's colour is its class colour +- up to this much per channel.
        year: the VOC year in folder names and ids (presentation).
        jpeg_quality: pillow JPEG quality (presentation).
        workers: processes drawing images (1: this process); the files do not depend on it.
        progress: called as ``progress(done, total)`` after each image, in this process.
    """
    spec = _draw_spec(image_size, classes, max_objects, object_size, difficult_size, difficult_fraction,
                      truncated_fraction, max_overhang, max_iou, colour_jitter)
    ids, splits = _plain_layout(num_trainval, num_test, year)
    root = Path(root)
    target = root / "VOCdevkit" / f"VOC{year}"
    if target.exists():
        raise FileExistsError(f"{target}: already exists; generate into an empty root")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=root))
    try:
        voc = staging / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (voc / sub).mkdir(parents=True)
        samples = [(image_id, (seed, n)) for n, image_id in enumerate(ids, start=1)]
        for image_id, jpeg, xml, _objects in _draw_all(samples, year, spec, jpeg_quality, workers, progress):
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
            (voc / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
        for split, split_ids in splits.items():
            (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(_id_list(split_ids))
        target.parent.mkdir(exist_ok=True)
        os.replace(voc, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("generated %d trainval + %d test images in %s", num_trainval, num_test, target)
    return root / "VOCdevkit"


def make_tarball(devkit_parent: Path, tar_path: Path) -> str:
    """Pack ``devkit_parent/VOCdevkit`` into a plain .tar with top-level ``VOCdevkit/``, like the official archive.

    Deterministic: members in `os.walk` order with sorted names, mtime 0, uid/gid 0, empty user/group names, modes
    0755/0644. Written to a temp file beside ``tar_path`` (mode as the umask allows) and moved into place.
    Returns the archive's md5 hex digest.
    """
    devkit = Path(devkit_parent) / "VOCdevkit"
    if not devkit.is_dir():
        raise FileNotFoundError(f"{devkit}: no VOCdevkit directory to pack")
    files = {p.relative_to(devkit_parent).as_posix(): p for p in sorted(devkit.rglob("*")) if p.is_file()}
    dirs = [p.relative_to(devkit_parent).as_posix() for p in devkit.rglob("*") if p.is_dir()]
    return _write_tar(Path(tar_path), files, lambda source: source.read_bytes(), extra_dirs=dirs)


def generate_voc_tarball(tar_path: Path, *, workers: int = 1, progress: Progress | None = None,
                         **kwargs: Any) -> tuple[Path, str, int]:
    """The tarball `make_tarball` would pack from `generate_voc(**kwargs)`, byte for byte: returns (path, md5, bytes).

    Built without an intermediate folder (contents are held in memory, spilling to one temp file past 256 MiB).
    `workers` and `progress` as in `generate_voc`.
    """
    draw_keys = ("image_size", "classes", "max_objects", "object_size", "difficult_size", "difficult_fraction",
                 "truncated_fraction", "max_overhang", "max_iou", "colour_jitter")
    missing = [k for k in (*draw_keys, "num_trainval", "num_test", "seed") if k not in kwargs]
    unknown = sorted(set(kwargs) - {*draw_keys, "num_trainval", "num_test", "seed", "year", "jpeg_quality"})
    if missing or unknown:
        raise TypeError(f"generate_voc_tarball: missing arguments {missing}, unknown arguments {unknown}")
    spec = _draw_spec(*(kwargs[k] for k in draw_keys))
    year, seed = kwargs.get("year", 2007), kwargs["seed"]
    ids, splits = _plain_layout(kwargs["num_trainval"], kwargs["num_test"], year)
    samples = [(image_id, (seed, n)) for n, image_id in enumerate(ids, start=1)]
    with _Spool() as spool:
        voc = f"VOCdevkit/VOC{year}"
        for image_id, jpeg, xml, _objects in _draw_all(samples, year, spec, kwargs.get("jpeg_quality", 90),
                                                       workers, progress):
            spool.add(f"{voc}/JPEGImages/{image_id}.jpg", jpeg)
            spool.add(f"{voc}/Annotations/{image_id}.xml", xml.encode("utf-8"))
        for split, split_ids in splits.items():
            spool.add(f"{voc}/ImageSets/Main/{split}.txt", _id_list(split_ids).encode())
        digest = _write_tar(Path(tar_path), spool.files, spool.read)
    return Path(tar_path), digest, Path(tar_path).stat().st_size


def write_voc_standins(
    out_dir: Path,
    *,
    seed: int = 2007,
    num_2007_trainval: int = 6,
    num_2007_test: int = 6,
    num_2012_trainval: int = 6,
    image_size: tuple[tuple[int, int], tuple[int, int]] = ((96, 160), (80, 128)),
    classes: Sequence[str] = VOC_CLASSES,
    workers: int = 1,
    progress: Progress | None = None,
) -> tuple[StandIn, StandIn, StandIn]:
    """Write small stand-ins for the three official archives into `out_dir`; returns them in this order:

    ``VOCtrainval_06-Nov-2007.tar`` (name "voc2007-trainval"), ``VOCtest_06-Nov-2007.tar`` ("voc2007-test") and
    ``VOCtrainval_11-May-2012.tar`` ("voc2012-trainval"), with the official layout: ``VOCdevkit/VOC<year>/``
    ``{Annotations,JPEGImages,ImageSets/Main}``. As in the real archives, VOC2007's trainval and test ids are
    disjoint and interleaved in one number range (``000001``...), the trainval archive carries only the
    ``{train,val,trainval}.txt`` lists and the test archive only ``test.txt``, each with its per-class lists
    (``<class>_<list>.txt``, lines ``"<id> <flag>"`` with flag 1 present, 0 only difficult, -1 absent), and VOC2012
    ids look like ``2008_000008``. Untarring all three into one folder gives the merged official devkit (VOC2007
    with trainval and test, and VOC2012). Object classes are drawn from `classes` (the 20 VOC names by default);
    every archive holds difficult objects (the first image of each is drawn with difficult objects only; the
    others have 1-3 objects, each difficult with probability 0.2). Same arguments, byte-identical archives.
    Existing files of those names in `out_dir` are replaced (atomically). `workers`, `progress`: as in
    `generate_voc`, with ``total`` the images of all three archives.
    """
    spec = _draw_spec(image_size, classes, 3, (0.25, 0.55), (0.08, 0.14), 0.2, 0.2, 0.3, 0.3, 12)
    all_difficult = dataclasses.replace(spec, difficult_fraction=1.0)
    ids07, trainval07, test07, ids12 = _standin_ids(num_2007_trainval, num_2007_test, num_2012_trainval)
    samples07 = [(image_id, (seed, n)) for n, image_id in enumerate(ids07, start=1)]
    samples12 = [(image_id, (seed, 2012, k)) for k, image_id in enumerate(ids12)]
    total, done = len(samples07) + len(samples12), 0

    def counted(d: int, _t: int) -> None:
        if progress is not None:
            progress(done + d, total)  # `done`: images of the earlier _spool_images calls

    out_dir = Path(out_dir)
    standins = []
    firsts = {trainval07[0], test07[0], ids12[0]}
    with _Spool() as spool:
        objects07, objects12 = {}, {}
        for year, samples, objects in ((2007, samples07, objects07), (2012, samples12, objects12)):
            for draw_spec, part in ((all_difficult, [x for x in samples if x[0] in firsts]),
                                    (spec, [x for x in samples if x[0] not in firsts])):
                objects.update(_spool_images(spool, part, year, draw_spec, workers, counted))
                done += len(part)
        for name, filename, year, image_set, set_ids, objects in (
            ("voc2007-trainval", "VOCtrainval_06-Nov-2007.tar", 2007, "trainval", trainval07, objects07),
            ("voc2007-test", "VOCtest_06-Nov-2007.tar", 2007, "test", test07, objects07),
            ("voc2012-trainval", "VOCtrainval_11-May-2012.tar", 2012, "trainval", ids12, objects12),
        ):
            lists = {"trainval": set_ids, "train": set_ids[0::2], "val": set_ids[1::2]} if image_set == "trainval" \
                else {"test": set_ids}
            files = _standin_files(spool, year, set_ids, lists, objects, tuple(classes))
            digest = _write_tar(out_dir / filename, files, spool.read)
            difficult = sum(o.difficult for i in set_ids for o in objects[i])
            standins.append(StandIn(name, filename, out_dir / filename, digest, (out_dir / filename).stat().st_size,
                                    year, image_set, tuple(set_ids), difficult))
    logger.info("wrote VOC stand-ins %s into %s", ", ".join(s.filename for s in standins), out_dir)
    return tuple(standins)  # type: ignore[return-value]


def _standin_ids(num_2007_trainval: int, num_2007_test: int,
                 num_2012_trainval: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(all 2007 ids, 2007 trainval, 2007 test, 2012 trainval): 2007 test ids spread through one number range."""
    if min(num_2007_trainval, num_2007_test, num_2012_trainval) < 1:
        raise ValueError("every stand-in archive needs at least one image, got "
                         f"{num_2007_trainval}, {num_2007_test}, {num_2012_trainval}")
    ids07 = [f"{n:06d}" for n in range(1, num_2007_trainval + num_2007_test + 1)]
    test_at = _spread(num_2007_test, len(ids07))
    test07 = [i for k, i in enumerate(ids07) if k in test_at]
    trainval07 = [i for k, i in enumerate(ids07) if k not in test_at]
    # Official VOC2012 ids carry the year the image was added (2008-2011), numbers ascending within a year.
    ids12 = [f"{2008 + 4 * k // num_2012_trainval}_{8 + 2 * k:06d}" for k in range(num_2012_trainval)]
    return ids07, trainval07, test07, ids12


def _draw_spec(image_size, classes, max_objects, object_size, difficult_size, difficult_fraction,
               truncated_fraction, max_overhang, max_iou, colour_jitter) -> DrawSpec:
    w, h = image_size
    sizes = ((w, w), (h, h)) if isinstance(w, int) and isinstance(h, int) else (tuple(w), tuple(h))
    return DrawSpec(sizes, tuple(classes), max_objects, tuple(object_size), tuple(difficult_size),
                    difficult_fraction, truncated_fraction, max_overhang, max_iou, colour_jitter)


def _plain_layout(num_trainval: int, num_test: int, year: int) -> tuple[list[str], dict[str, list[str]]]:
    """Ids of `generate_voc` (trainval first, then test) and its ImageSets/Main lists."""
    if num_trainval < 0 or num_test < 0 or num_trainval + num_test == 0:
        raise ValueError(f"need num_trainval, num_test >= 0 and some images, got {num_trainval}, {num_test}")
    ids = [f"{n:06d}" if year == 2007 else f"{year}_{n:06d}" for n in range(1, num_trainval + num_test + 1)]
    trainval, test = ids[:num_trainval], ids[num_trainval:]
    splits = {"train": trainval[0::2], "val": trainval[1::2], "trainval": trainval}
    if test:
        splits["test"] = test
    return ids, splits


def _spread(count: int, total: int) -> set[int]:
    """`count` positions out of range(total), evenly interleaved (a Bresenham line): 3 of 6 -> {1, 3, 5}."""
    return {k for k in range(total) if (k + 1) * count // total > k * count // total}


def _draw_all(samples: Sequence[tuple[str, tuple[int, ...]]], year: int, spec: DrawSpec, jpeg_quality: int,
              workers: int, progress: Progress | None) -> Iterator[tuple[str, bytes, str, tuple[DrawnObject, ...]]]:
    """(id, JPEG bytes, XML, objects) for each (id, rng key) in `samples`, in order, drawn by `workers` processes."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    draw = partial(_draw_one, year=year, spec=spec, jpeg_quality=jpeg_quality)
    total = len(samples)
    if workers == 1 or total < 2 * workers:
        results: Iterable = map(draw, samples)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(draw, samples, chunksize=max(1, min(64, total // (workers * 8))))
    try:
        for done, result in enumerate(results, start=1):
            yield result
            if progress is not None:
                progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _draw_one(sample: tuple[str, tuple[int, ...]], *, year: int, spec: DrawSpec,
              jpeg_quality: int) -> tuple[str, bytes, str, tuple[DrawnObject, ...]]:
    image_id, key = sample
    return (image_id, *render_sample(key, year, image_id, spec, jpeg_quality))


def _spool_images(spool: _Spool, samples, year: int, spec: DrawSpec, workers: int,
                  progress: Progress) -> dict[str, tuple[DrawnObject, ...]]:
    """Draw `samples` into the spool under ``VOCdevkit/VOC{year}/``; returns each id's objects."""
    objects = {}
    for image_id, jpeg, xml, drawn in _draw_all(samples, year, spec, 90, workers, progress):
        spool.add(f"VOCdevkit/VOC{year}/JPEGImages/{image_id}.jpg", jpeg)
        spool.add(f"VOCdevkit/VOC{year}/Annotations/{image_id}.xml", xml.encode("utf-8"))
        objects[image_id] = drawn
    return objects


def _standin_files(spool: _Spool, year: int, ids: list[str], lists: dict[str, list[str]],
                   objects: dict[str, tuple[DrawnObject, ...]], classes: tuple[str, ...]) -> dict[str, str]:
    """Archive path -> spool path of the images of `ids` plus the lists (written to the spool here)."""
    voc = f"VOCdevkit/VOC{year}"
    files = {}
    for image_id in ids:
        for sub, ext in (("Annotations", "xml"), ("JPEGImages", "jpg")):
            files[f"{voc}/{sub}/{image_id}.{ext}"] = f"{voc}/{sub}/{image_id}.{ext}"
    for list_name, list_ids in lists.items():
        texts = {list_name: _id_list(list_ids)}
        for cls in classes:  # the devkit's per-class lists: 1 present, 0 only as difficult, -1 absent
            flags = [max((1 if not o.difficult else 0 for o in objects[i] if o.class_name == cls), default=-1)
                     for i in list_ids]
            texts[f"{cls}_{list_name}"] = "".join(f"{i} {f:2d}\n" for i, f in zip(list_ids, flags, strict=True))
        for stem, text in texts.items():
            path = f"{voc}/ImageSets/Main/{stem}.txt"
            key = f"{path}#{year}-{list_name}"  # the trainval and test archives of 2007 share no list names anyway
            spool.add(key, text.encode())
            files[path] = key
    return files


def _id_list(ids: Sequence[str]) -> str:
    return "".join(i + "\n" for i in ids)


class _Spool:
    """Named byte strings kept for a tarball: in memory up to 256 MiB, then in one temp file (bounded memory)."""

    def __init__(self):
        self._file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
        self._where: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    @property
    def files(self) -> dict[str, str]:
        """Every name added, mapped to itself (the form `_write_tar` takes)."""
        return {name: name for name in self._where}

    def add(self, name: str, data: bytes) -> None:
        self._file.seek(0, os.SEEK_END)
        self._where[name] = (self._file.tell(), len(data))
        self._file.write(data)

    def read(self, name: str) -> bytes:
        offset, size = self._where[name]
        self._file.seek(offset)
        return self._file.read(size)


def _write_tar(tar_path: Path, files: dict[str, Any], read: Callable[[Any], bytes],
               extra_dirs: Iterable[str] = ()) -> str:
    """Write a tar of `files` (archive path -> source, whose bytes are ``read(source)``); returns its md5.

    Members come in the order `os.walk` with sorted names visits a folder tree (each folder, its files, then its
    sub-folders), with the normalised headers of `make_tarball`. The file is created beside `tar_path` under a
    unique name (mode 0666 less the umask) and renamed into place.
    """
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_name(f".{tar_path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as raw, \
                tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for arcname, source in _walk_order(files, extra_dirs):
                info = tarfile.TarInfo(arcname)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if source is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    data = read(source)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, _BytesReader(data))
        digest = _md5(tmp)
        os.replace(tmp, tar_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def _walk_order(files: dict[str, Any], extra_dirs: Iterable[str]) -> list[tuple[str, Any]]:
    """(archive path, source or None for a folder) in os.walk order: folder, its files sorted, its folders sorted."""
    tree: dict = {}
    for path in [*files, *(d + "/" for d in extra_dirs)]:
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        if leaf:
            node[leaf] = path
    out: list[tuple[str, Any]] = []

    def visit(prefix: str, node: dict) -> None:
        out.append((prefix, None))
        for name in sorted(k for k, v in node.items() if not isinstance(v, dict)):
            out.append((f"{prefix}/{name}", files[node[name]]))
        for name in sorted(k for k, v in node.items() if isinstance(v, dict)):
            visit(f"{prefix}/{name}", node[name])

    for top in sorted(tree):
        visit(top, tree[top])
    return out


class _BytesReader:
    """The minimal file object `TarFile.addfile` reads a member's bytes from."""

    def __init__(self, data: bytes):
        self._data, self._pos = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = self._data[self._pos:end].tobytes()
        self._pos += len(chunk)
        return chunk


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
