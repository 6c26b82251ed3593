"""PASCAL VOC annotation parsing: one XML file -> a validated `Annotation` in continuous 0-based pixels.

This is the one place where VOC's 1-based inclusive pixel corners become the project's 0-based continuous boxes.
XML goes through defusedxml (no entity expansion, no external references); bad objects raise or are skipped and
recorded, as the caller chooses, and every error names the file (and the line, when it can be found).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Literal
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

__all__ = [
    "VOC_CLASSES",
    "VOCObject",
    "SkippedObject",
    "Annotation",
    "AnnotationError",
    "parse_annotation",
    "parse_annotations",
    "read_image_set",
]

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

_CHUNKS_PER_WORKER = 8  # a few chunks per process balance the load (and feed progress) without one task per file
_SERIAL_BLOCK = 256  # files between progress reports when parsing in this process


@dataclass(frozen=True)
class VOCObject:
    """One annotated object. Box corners are continuous 0-based pixels (xyxy): 0 <= xmin < xmax <= width."""

    class_name: str
    class_index: int  # position of class_name in the `classes` passed to the parser
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class SkippedObject:
    """An object left out under ``on_bad_object="skip"``: its position among the file's objects and why."""

    index: int
    class_name: str  # "" when the object has no <name>
    reason: str


@dataclass(frozen=True)
class Annotation:
    """One VOC annotation file: the image's file name and size (pixels), its valid objects and the skipped ones."""

    filename: str
    width: int
    height: int
    objects: tuple[VOCObject, ...]
    skipped: tuple[SkippedObject, ...]


class AnnotationError(ValueError):
    """A bad annotation; the message starts with ``file:line:`` (or ``file:`` when the line is unknown)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        # Called with the message alone when unpickled from a worker process: the prefix is already in it.
        if file is not None:
            message = f"{file}:{line}: {message}" if line is not None else f"{file}: {message}"
        super().__init__(message)
        self.file = file
        self.line = line


class _BadObject(Exception):
    """Internal: an object that fails validation; becomes an AnnotationError or a SkippedObject."""

    def __init__(self, class_name: str, reason: str) -> None:
        super().__init__(reason)
        self.class_name = class_name
        self.reason = reason


def parse_annotation(
    source: str | Path | bytes,
    *,
    classes: Sequence[str],
    on_bad_object: Literal["error", "skip"],
    name: str | None = None,
) -> Annotation:
    """Parse one VOC annotation into an `Annotation` with 0-based continuous pixel xyxy boxes.

    ``source`` is a `Path` to read, or the document itself as ``bytes``/``str``. ``name`` is the file name used in
    error messages (default: the path, or ``"<string>"``). ``classes`` fixes each object's ``class_index``.

    Real-world quirks accepted: integer or decimal coordinates (``273.5``); missing ``<difficult>``,
    ``<truncated>`` or ``<pose>`` (VOC's own default, 0 / "Unspecified"); a person's ``<part>`` children (ignored:
    only direct ``<object>`` children of the root count, and only an object's own ``<bndbox>``); extra tags and
    surrounding whitespace.

    A bad object (unknown or missing class name, missing or non-numeric coordinate, zero or negative area, a box
    outside the image after conversion) raises `AnnotationError` when ``on_bad_object == "error"``; with
    ``"skip"`` it is left out and recorded in ``Annotation.skipped`` with the reason. Malformed XML, entity
    declarations (e.g. a "billion laughs" bomb), a missing ``<filename>`` or ``<size>``, or a non-positive size
    always raise `AnnotationError`.
    """
    if on_bad_object not in ("error", "skip"):
        raise ValueError(f"on_bad_object must be 'error' or 'skip', got {on_bad_object!r}")
    data, name = _read_source(source, name)
    root = _parse_xml(data, name)
    width, height = _image_size(root, name)
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise AnnotationError("missing <filename>", name)
    class_index = {c: i for i, c in enumerate(classes)}
    objects: list[VOCObject] = []
    skipped: list[SkippedObject] = []
    # iterfind("object") sees direct children only: a person's <part> elements are never taken for objects.
    for index, element in enumerate(root.iterfind("object")):
        try:
            objects.append(_parse_object(element, class_index, width, height))
        except _BadObject as exc:
            if on_bad_object == "error":
                raise AnnotationError(f"object {index}: {exc.reason}", name, _object_line(data, index)) from None
            logger.debug("%s: skipped object %d: %s", name, index, exc.reason)
            skipped.append(SkippedObject(index, exc.class_name, exc.reason))
    return Annotation(filename, width, height, tuple(objects), tuple(skipped))


def parse_annotations(
    paths: Sequence[Path],
    *,
    classes: Sequence[str],
    on_bad_object: Literal["error", "skip"],
    workers: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Annotation]:
    """Parse many annotation files (see `parse_annotation`); the result is in the order of ``paths``.

    With ``workers > 1`` the files go to a `ProcessPoolExecutor` (the platform's default start method: fork on
    Linux) in contiguous chunks, a few per worker rather than one task per file. The first bad file in ``paths``
    order raises its `AnnotationError` (which names the file); the count of skipped objects is logged.
    ``on_progress(n)`` is called in the calling process as each block of ``n`` files is done (for progress bars).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if on_bad_object not in ("error", "skip"):
        raise ValueError(f"on_bad_object must be 'error' or 'skip', got {on_bad_object!r}")
    paths = [Path(p) for p in paths]
    classes = tuple(classes)
    report = on_progress or (lambda n: None)
    if workers == 1 or len(paths) < 2:
        annotations = []
        for start in range(0, len(paths), _SERIAL_BLOCK):
            annotations += _parse_chunk(paths[start : start + _SERIAL_BLOCK], classes, on_bad_object)
            report(len(paths[start : start + _SERIAL_BLOCK]))
    else:
        annotations = _parse_in_pool(paths, classes, on_bad_object, workers, report)
    num_skipped = sum(len(a.skipped) for a in annotations)
    logger.info(
        "parsed %d annotation files: %d objects, %d skipped",
        len(annotations), sum(len(a.objects) for a in annotations), num_skipped,
    )
    return annotations


def read_image_set(devkit_root: Path, year: int | str, split: str) -> list[str]:
    """Image ids listed in ``devkit_root/VOC{year}/ImageSets/Main/{split}.txt``, in file order (blank lines skipped)."""
    path = Path(devkit_root) / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image set list not found (is VOC{year} extracted, and is {split!r} a split?)") from None
    # A line may carry more columns (as in the per-class lists); the id is always the first one.
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _parse_in_pool(
    paths: list[Path], classes: tuple[str, ...], on_bad_object: str, workers: int, report: Callable[[int], None]
) -> list[Annotation]:
    num_chunks = min(len(paths), workers * _CHUNKS_PER_WORKER)
    size = math.ceil(len(paths) / num_chunks)
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    annotations: list[Annotation] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        try:
            for rows in pool.map(_parse_chunk_to_rows, chunks, repeat(classes), repeat(on_bad_object)):
                annotations.extend(_from_row(row) for row in rows)
                report(len(rows))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return annotations


def _parse_chunk(paths: Sequence[Path], classes: tuple[str, ...], on_bad_object: str) -> list[Annotation]:
    return [parse_annotation(p, classes=classes, on_bad_object=on_bad_object) for p in paths]  # type: ignore[arg-type]


def _parse_chunk_to_rows(paths: Sequence[Path], classes: tuple[str, ...], on_bad_object: str) -> list[tuple]:
    # Plain tuples pickle about 10x faster than dataclasses, and unpickling runs in the one parent process.
    return [
        (
            a.filename, a.width, a.height,
            tuple((o.class_name, o.class_index, o.xmin, o.ymin, o.xmax, o.ymax, o.difficult, o.truncated)
                  for o in a.objects),
            tuple((s.index, s.class_name, s.reason) for s in a.skipped),
        )
        for a in _parse_chunk(paths, classes, on_bad_object)
    ]


def _from_row(row: tuple) -> Annotation:
    filename, width, height, objects, skipped = row
    return Annotation(
        filename, width, height, tuple(VOCObject(*o) for o in objects), tuple(SkippedObject(*s) for s in skipped)
    )


def _read_source(source: str | Path | bytes, name: str | None) -> tuple[bytes | str, str]:
    if isinstance(source, Path):
        try:
            return source.read_bytes(), name or str(source)
        except OSError as exc:
            raise AnnotationError(f"cannot read annotation: {exc.strerror or exc}", name or str(source)) from None
    if isinstance(source, str) and "<" not in source:
        raise TypeError(f"a str source is the XML document itself; pass pathlib.Path({source!r}) to read a file")
    return source, name or "<string>"


def _parse_xml(data: bytes | str, name: str) -> Element:
    parser = DefusedXMLParser(target=TreeBuilder())  # the C TreeBuilder: defusedxml only guards the expat side
    try:
        parser.feed(data)
        root = parser.close()
    except ParseError as exc:
        line, _column = exc.position
        raise AnnotationError(f"malformed XML: {exc}", name, line) from None
    except DefusedXmlException as exc:
        # Entity declarations (the "billion laughs" bomb), DTDs and external references are refused, not expanded.
        raise AnnotationError(f"refused unsafe XML: {exc}", name, parser.parser.CurrentLineNumber) from None
    if root.tag != "annotation":
        raise AnnotationError(f"root element is <{root.tag}>, expected <annotation>", name, 1)
    return root


def _image_size(root: Element, name: str) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise AnnotationError("missing <size>", name)
    dims = []
    for tag in ("width", "height"):
        text = (size.findtext(tag) or "").strip()
        if not text:
            raise AnnotationError(f"missing <size><{tag}>", name)
        try:
            value = float(text)
        except ValueError:
            raise AnnotationError(f"<size><{tag}> is not a number: {text!r}", name) from None
        if not (math.isfinite(value) and value > 0 and value == int(value)):
            raise AnnotationError(f"<size><{tag}> must be a positive whole number of pixels, got {text!r}", name)
        dims.append(int(value))
    return dims[0], dims[1]


def _parse_object(element: Element, class_index: dict[str, int], width: int, height: int) -> VOCObject:
    name = (element.findtext("name") or "").strip()
    if not name:
        raise _BadObject("", "missing <name>")
    if name not in class_index:
        raise _BadObject(name, f"unknown class {name!r}")
    box = element.find("bndbox")  # the object's own box: a <part>'s <bndbox> is one level deeper
    if box is None:
        raise _BadObject(name, "missing <bndbox>")
    x1, y1, x2, y2 = (_coordinate(box, tag, name) for tag in ("xmin", "ymin", "xmax", "ymax"))
    # VOC corners are 1-based and inclusive: pixel columns x1..x2 span the continuous interval [x1 - 1, x2), so a
    # box over a whole W x H image, (1, 1, W, H) in the XML, becomes (0, 0, W, H).
    xmin, ymin, xmax, ymax = x1 - 1.0, y1 - 1.0, x2, y2  # VOC 1-based -> 0-based: the only place this happens
    voc_box = f"(xmin={_fmt(x1)}, ymin={_fmt(y1)}, xmax={_fmt(x2)}, ymax={_fmt(y2)})"
    if xmax <= xmin or ymax <= ymin:
        raise _BadObject(name, f"zero or negative area box {voc_box}")
    if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
        raise _BadObject(name, f"box {voc_box} lies outside the {width}x{height} image")
    return VOCObject(
        name, class_index[name], xmin, ymin, xmax, ymax,
        difficult=_flag(element, "difficult", name), truncated=_flag(element, "truncated", name),
    )


def _coordinate(box: Element, tag: str, name: str) -> float:
    text = (box.findtext(tag) or "").strip()
    if not text:
        raise _BadObject(name, f"missing <bndbox><{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise _BadObject(name, f"<bndbox><{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _BadObject(name, f"<bndbox><{tag}> is not finite: {text!r}")
    return value


def _flag(element: Element, tag: str, name: str) -> bool:
    text = (element.findtext(tag) or "").strip()
    if text in ("", "0"):  # absent or empty: VOC's default is 0
        return False
    if text == "1":
        return True
    raise _BadObject(name, f"<{tag}> must be 0 or 1, got {text!r}")


def _fmt(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class _ObjectLines:
    """Parser target recording the line of each direct <object> child of the root (ElementTree keeps none)."""

    def __init__(self) -> None:
        self.parser: DefusedXMLParser | None = None
        self.lines: list[int] = []
        self._depth = 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if self._depth == 1 and tag == "object":
            self.lines.append(self.parser.parser.CurrentLineNumber)  # type: ignore[union-attr]
        self._depth += 1

    def end(self, tag: str) -> None:
        self._depth -= 1

    def close(self) -> list[int]:
        return self.lines


def _object_line(data: bytes | str, index: int) -> int | None:
    """Line of the ``index``-th object; a second, line-tracking parse that only runs on the error path."""
    target = _ObjectLines()
    parser = DefusedXMLParser(target=target)
    target.parser = parser
    parser.feed(data)
    lines = parser.close()
    return lines[index] if index < len(lines) else None
