"""Prepare stage: VOC XML -> images/objects tables -> un-augmented grid targets, behind the data-validation gate.

Writes <data.root>/prepared/{images,objects}.parquet, targets_{train,test}.npy, validation.json and report.json,
all or nothing: they are built in a staging directory that replaces prepared/ only once everything passed.

Run: python -m pipelines.prepare [--params params.yaml] [--workers N]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipelines.params import DEFAULT_PATH, load_params
from pipelines.validate import IMAGE_OK, ValidationError, check_image_files, check_tables
from yolov1.config import ConfigError, DataConfig, ModelConfig, Params
from yolov1.encode import encode
from yolov1.io import make_staging_dir, remove_leftovers
from yolov1.voc import Annotation, AnnotationError, SkippedObject, parse_annotations, read_image_set

__all__ = ["OUTPUT_FILES", "PrepareError", "PreparedTables", "read_tables", "encode_targets", "run", "main"]

log = logging.getLogger("yolov1.prepare")

# What a successful run leaves in prepared/ (targets files are per split); removed whenever a run fails.
OUTPUT_FILES = ("images.parquet", "objects.parquet", "report.json", "validation.json")
STAGING_PREFIX = ".prepared-"  # + "<pid>-<random>": where a run builds its outputs before renaming them in
OLD_PREFIX = ".prepared.old-"  # + "<pid>": the previous outputs, for the moment of the swap
MAX_EXAMPLES = 5  # file names kept per skip reason / image problem in the report and errors
_POOL_MIN_IMAGES = 1024  # fewer images are encoded in-process: a pool's start-up would cost more


class PrepareError(Exception):
    """A problem with the input data that the user can fix; the message names the file at fault."""


@dataclass(frozen=True)
class PreparedTables:
    """The two tables (schema in `pipelines.validate`) plus what the report needs: the XML file of each image
    row (aligned with ``images``) and every object the parser skipped, with its XML file."""

    images: pd.DataFrame
    objects: pd.DataFrame
    xml_paths: tuple[str, ...]
    skipped: tuple[tuple[str, SkippedObject], ...]


def read_tables(data: DataConfig, *, workers: int, progress: bool = False) -> PreparedTables:
    """Parse every annotation of ``data.train_sets`` (split "train") and ``data.test_sets`` (split "test").

    Image ids are ``f"{year}_{id}"``; image paths are relative to ``data.root``. Object boxes are continuous
    0-based pixels (xyxy) and, in the ``*_n`` columns, the same divided by the image width/height (0..1).
    Raises `AnnotationError` (naming file:line) or `PrepareError` (a missing image-set list).
    """
    devkit = Path(data.root) / "extracted" / "VOCdevkit"
    rows: list[tuple[str, str, int, str, str]] = []  # (image_id, split, year, xml path, file stem), table order
    for split, sets in (("train", data.train_sets), ("test", data.test_sets)):
        for entry in sets:
            year, _, name = entry.partition("/")
            try:
                ids = read_image_set(devkit, year, name)
            except FileNotFoundError as exc:
                raise PrepareError(str(exc)) from None
            xml_dir = devkit / f"VOC{year}" / "Annotations"
            rows += [(f"{year}_{i}", split, int(year), str(xml_dir / f"{i}.xml"), i) for i in ids]
    annotations = _parse(data, [Path(r[3]) for r in rows], workers, progress)
    images, objects = _build_tables(rows, annotations)
    skipped = tuple((r[3], s) for r, a in zip(rows, annotations, strict=True) for s in a.skipped)
    return PreparedTables(images, objects, tuple(r[3] for r in rows), skipped)


def _parse(data: DataConfig, paths: list[Path], workers: int, progress: bool) -> list[Annotation]:
    """`parse_annotations` over blocks of files, in one process pool, so that a progress bar can follow."""
    size = max(1, math.ceil(len(paths) / (workers * 8)))
    blocks = [paths[i : i + size] for i in range(0, len(paths), size)]
    parse = functools.partial(
        parse_annotations, classes=tuple(data.classes), on_bad_object=data.on_bad_object, workers=1
    )
    annotations: list[Annotation] = []
    with tqdm(total=len(paths), desc="parse XML", unit="file", disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1 or len(blocks) < 2:
            for block in blocks:
                annotations += parse(block)
                bar.update(len(block))
            return annotations
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            for block, parsed in zip(blocks, pool.map(parse, blocks), strict=True):  # in order: first error wins
                annotations += parsed
                bar.update(len(block))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return annotations


def encode_targets(
    images: pd.DataFrame,
    objects: pd.DataFrame,
    model: ModelConfig,
    *,
    use_difficult: bool,
    workers: int = 1,
    progress: bool = False,
) -> tuple[np.ndarray, int]:
    """Un-augmented grid targets of ``images``' rows, in that order -> ((n, S, S, 5 + C) float32, displaced).

    Boxes come from the image-normalised ``*_n`` corners of ``objects`` (converted to cxcywh for `encode`);
    objects marked difficult are left out unless ``use_difficult``. ``displaced`` counts the boxes that lost
    their cell to a larger box (the paper's grid holds one object per cell). `encode` costs ~0.3 ms per image,
    so with ``workers > 1`` contiguous blocks of images are encoded in a process pool.
    """
    s, c = model.grid_size, model.num_classes
    if not use_difficult:
        objects = objects[objects["difficult"] == 0]
    corners = objects[["xmin_n", "ymin_n", "xmax_n", "ymax_n"]].to_numpy(np.float64)  # (K, 4) xyxy
    boxes = np.concatenate([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], axis=1)
    labels = objects["class_index"].to_numpy(np.int64)
    position = pd.Index(images["image_id"]).get_indexer(objects["image_id"])  # (K,) row of each object's image
    keep = position >= 0
    order = np.argsort(position[keep], kind="stable")
    boxes, labels = boxes[keep][order], labels[keep][order]  # (K', 4) cxcywh, (K',) grouped by image row
    counts = np.bincount(position[keep], minlength=len(images))  # (n,) objects per image
    first = np.concatenate([[0], np.cumsum(counts)])  # (n + 1,) first object of each image
    n = len(images)
    per_job = max(1, math.ceil(n / (workers * 4)) if workers > 1 and n >= _POOL_MIN_IMAGES else n)
    jobs = [
        (boxes[first[a] : first[b]], labels[first[a] : first[b]], counts[a:b], s, c)
        for a, b in ((a, min(a + per_job, n)) for a in range(0, n, per_job))
    ]
    targets = np.zeros((len(images), s, s, 5 + c), dtype=np.float32)
    displaced, row = 0, 0
    with tqdm(total=len(images), desc="encode targets", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        pool, results = None, map(_encode_block, jobs)
        if len(jobs) > 1:  # one torch thread per process: the pool is the parallelism
            pool = ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,))
            results = pool.map(_encode_block, jobs)
        try:
            for block, moved in results:
                targets[row : row + len(block)] = block
                displaced, row = displaced + moved, row + len(block)
                bar.update(len(block))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return targets, displaced


def _encode_block(job: tuple[np.ndarray, np.ndarray, np.ndarray, int, int]) -> tuple[np.ndarray, int]:
    """`encode` each image of a block: (boxes (K, 4) cxcywh grouped by image, labels (K,), counts (n,), S, C)
    -> ((n, S, S, 5 + C) float32, displaced)."""
    boxes, labels, counts, grid_size, num_classes = job
    targets = np.zeros((len(counts), grid_size, grid_size, 5 + num_classes), dtype=np.float32)
    displaced, start = 0, 0
    for row, count in enumerate(counts.tolist()):
        if count:
            end = start + count
            encoded = encode(torch.from_numpy(boxes[start:end]), torch.from_numpy(labels[start:end]), grid_size,
                             num_classes)
            targets[row] = encoded.target.numpy()
            displaced, start = displaced + encoded.displaced, end
    return targets, displaced


def run(
    params: Params, *, workers: int | None = None, check_images: bool = True, show_progress: bool = False
) -> dict[str, Any]:
    """The prepare stage (see the module docstring); returns the report (also written to report.json).

    ``workers``: processes for XML parsing and image checks (default: the usable CPUs). ``check_images=False``
    skips opening the image files (for benchmarks of the table building); the gate then skips that rule too.
    Raises `AnnotationError`, `PrepareError` or `pipelines.validate.ValidationError`; on any failure the
    outputs of an earlier run are removed from prepared/ (validation.json is kept when the gate failed).
    """
    workers = workers or _usable_cpus()
    root = Path(params.data.root)
    prepared = root / "prepared"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    staging = make_staging_dir(root, STAGING_PREFIX)  # 0777 less the umask (mkdtemp's 0700 would stick)
    try:
        report = _prepare(params, staging, workers, check_images, show_progress)
        _publish(staging, prepared)
    except BaseException as exc:
        _clear_outputs(prepared)
        if isinstance(exc, ValidationError) and (staging / "validation.json").exists():
            prepared.mkdir(parents=True, exist_ok=True)
            os.replace(staging / "validation.json", prepared / "validation.json")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _prepare(params: Params, out: Path, workers: int, check_images: bool, progress: bool) -> dict[str, Any]:
    data, timings = params.data, {}
    t0 = tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 3)
        tick = now

    tables = read_tables(data, workers=workers, progress=progress)
    lap("parse_and_tables")
    status = None
    if check_images:
        status = check_image_files(tables.images, Path(data.root), workers=workers, progress=progress)
        _raise_on_image_problems(tables, status, Path(data.root))
        lap("check_images")
    splits = [s for s, sets in (("train", data.train_sets), ("test", data.test_sets)) if sets]
    gate = check_tables(
        tables.images, tables.objects, classes=data.classes, image_root=None,
        result_path=out / "validation.json", splits=splits, image_status=status,
    )  # fmt: skip
    lap("validate")
    displaced = {}
    for split in splits:
        images = tables.images[tables.images["split"] == split]
        targets, displaced[split] = encode_targets(
            images, tables.objects, params.model, use_difficult=data.use_difficult, workers=workers,
            progress=progress,
        )
        np.save(out / f"targets_{split}.npy", targets)
        lap(f"encode_{split}")
    tables.images.to_parquet(out / "images.parquet", engine="pyarrow", index=False)
    tables.objects.to_parquet(out / "objects.parquet", engine="pyarrow", index=False)
    lap("write_tables")
    timings["total"] = round(time.perf_counter() - t0, 3)
    report = _report(params, tables, displaced, gate.to_dict(), check_images, timings)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _build_tables(rows: Sequence[tuple[str, str, int, str, str]], annotations: Sequence[Annotation]):
    """The two tables from the parsed annotations (``rows`` aligned with them); columns are built whole, in numpy,
    as 21,503 per-image frames would dominate the stage."""
    width = np.array([a.width for a in annotations], dtype=np.int64)
    height = np.array([a.height for a in annotations], dtype=np.int64)
    images = pd.DataFrame({
        "image_id": pd.array([r[0] for r in rows], dtype="string"),
        "split": pd.array([r[1] for r in rows], dtype="string"),
        "year": np.array([r[2] for r in rows], dtype=np.int64),
        "path": pd.array([f"extracted/VOCdevkit/VOC{r[2]}/JPEGImages/{r[4]}.jpg" for r in rows], dtype="string"),
        "width": width,
        "height": height,
    })  # fmt: skip
    counts = np.array([len(a.objects) for a in annotations], dtype=np.int64)
    objs = [o for a in annotations for o in a.objects]
    box = np.array([(o.xmin, o.ymin, o.xmax, o.ymax) for o in objs], dtype=np.float64).reshape(-1, 4)  # (K, 4)
    size = np.repeat(np.stack([width, height, width, height], axis=1), counts, axis=0).astype(np.float64)  # (K, 4)
    normalised = box / size if len(objs) else box
    objects = pd.DataFrame({
        "image_id": pd.array(np.repeat(np.array([r[0] for r in rows], dtype=object), counts), dtype="string"),
        "class_name": pd.array([o.class_name for o in objs], dtype="string"),
        "class_index": np.array([o.class_index for o in objs], dtype=np.int64),
        **{name: box[:, k] for k, name in enumerate(("xmin", "ymin", "xmax", "ymax"))},
        **{name: normalised[:, k] for k, name in enumerate(("xmin_n", "ymin_n", "xmax_n", "ymax_n"))},
        "difficult": np.array([o.difficult for o in objs], dtype=np.int8),
        "truncated": np.array([o.truncated for o in objs], dtype=np.int8),
    })  # fmt: skip
    return images, objects


def _raise_on_image_problems(tables: PreparedTables, status: pd.Series, root: Path) -> None:
    bad = np.flatnonzero((status != IMAGE_OK).to_numpy())
    if len(bad) == 0:
        return
    messages = []
    for row in bad[:MAX_EXAMPLES]:
        image = tables.images.iloc[row]
        problem = str(status.iloc[row]).replace("in the table", "in the annotation")
        messages.append(f"{tables.xml_paths[row]}: image {root / image['path']}: {problem}")
    more = f" (and {len(bad) - 1} more images with problems: {'; '.join(messages[1:])})" if len(bad) > 1 else ""
    raise PrepareError(messages[0] + more)


def _report(params, tables: PreparedTables, displaced, gate, check_images, timings) -> dict[str, Any]:
    images, objects = tables.images, tables.objects
    split_of = objects["image_id"].map(images.drop_duplicates("image_id").set_index("image_id")["split"])
    per_split = {}
    for split in displaced:
        objs = objects[split_of == split]
        classes = {}
        for name in params.data.classes:
            of_class = objs[objs["class_name"] == name]
            classes[name] = {
                "images": int(of_class["image_id"].nunique()), "objects": len(of_class),
                "difficult": int(of_class["difficult"].sum()),
            }  # fmt: skip
        in_targets = objs if params.data.use_difficult else objs[objs["difficult"] == 0]
        per_split[split] = {
            "images": int((images["split"] == split).sum()), "objects": len(objs),
            "difficult": int(objs["difficult"].sum()), "truncated": int(objs["truncated"].sum()),
            "objects_in_targets": len(in_targets), "displaced_by_cell_collisions": displaced[split],
            "per_class": classes,
        }  # fmt: skip
    return {
        "sets": {"train": list(params.data.train_sets), "test": list(params.data.test_sets)},
        "grid_size": params.model.grid_size, "num_classes": params.model.num_classes,
        "use_difficult": params.data.use_difficult, "on_bad_object": params.data.on_bad_object,
        "images_checked": "header + JPEG end-of-image marker (full decode otherwise)" if check_images else "no",
        "splits": per_split,
        "skipped_objects": _skipped_summary(tables.skipped),
        "validation": {"success": gate["success"], "statistics": gate["statistics"]},
        "timings_s": timings,
    }  # fmt: skip


def _skipped_summary(skipped: Sequence[tuple[str, SkippedObject]]) -> dict[str, Any]:
    by_reason: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "examples": []})
    for xml, obj in skipped:
        # Group "box (xmin=1, ...) lies outside the 500x375 image" and the like under one reason.
        kind = re.sub(r"\d+x\d+ ", "", re.sub(r"\s*\([^)]*\)", "", obj.reason))
        entry = by_reason[kind]
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(f"{xml}: object {obj.index}: {obj.reason}")
    return {"total": len(skipped), "by_reason": dict(by_reason)}


def _remove_leftovers(root: Path) -> None:
    """Staging folders of a killed prepare (``.prepared-<pid>-*``, ``.prepared.old-<pid>``) whose process is gone."""
    for prefix in (STAGING_PREFIX, OLD_PREFIX):
        for path in remove_leftovers(root, prefix):
            log.warning("removed %s, left behind by an interrupted prepare", path)


def _publish(staging: Path, prepared: Path) -> None:
    """Replace ``prepared`` by ``staging`` with renames: readers see the old set or the new one, never a mix."""
    old = None
    if prepared.exists():
        old = prepared.with_name(f"{OLD_PREFIX}{os.getpid()}")
        os.replace(prepared, old)
    os.replace(staging, prepared)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clear_outputs(prepared: Path) -> None:
    if not prepared.is_dir():
        return
    for path in prepared.iterdir():
        if path.name in OUTPUT_FILES or (path.name.startswith("targets_") and path.suffix == ".npy"):
            path.unlink()


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="yolov1 prepare",
        description="Parse the VOC annotations of data.train_sets / data.test_sets (params.yaml) into "
        "<data.root>/prepared/images.parquet and objects.parquet, check every image file, run the data-validation "
        "gate (Great Expectations) and write the un-augmented grid targets targets_{train,test}.npy and "
        "report.json. Nothing is written unless every check passes; errors exit with status 2.",
    )
    parser.add_argument("--params", default=str(DEFAULT_PATH), help="params file (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the usable CPUs)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        report = run(params, workers=args.workers, show_progress=True)
    except ValidationError as err:
        result = Path(params.data.root) / "prepared" / "validation.json"
        print(f"error: {err}\n  full result: {result}", file=sys.stderr)
        return 2
    except (AnnotationError, PrepareError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, counts in report["splits"].items():
        print(f"{split}: {counts['images']} images, {counts['objects']} objects ({counts['difficult']} difficult), "
              f"{counts['displaced_by_cell_collisions']} displaced by cell collisions")
    print(f"skipped objects: {report['skipped_objects']['total']}; total {report['timings_s']['total']} s")
    return 0


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 prepare"))
