"""`yolov1 predict`: detect objects in image files, folders, globs or http(s) URLs, like a detector tool does.

The model is a weights file (default ``models/yolov1.pt``, which holds its config, classes, thresholds and image
limit, so no params file is needed) or an MLflow URI such as ``models:/yolov1-voc@champion``. Thresholds come
from the model (or from ``--params`` when given); ``--conf``, ``--iou`` and ``--max-det`` override them.

Each run writes into a new folder ``runs/predict/N`` (or ``--out``, which must be new or empty unless
``--exist-ok``): ``<image>.png`` with boxes drawn, ``detections.json`` (rewritten atomically after every batch,
so it holds every image done so far), with ``--save-txt`` ``labels/<image>.txt`` (YOLO format: ``class cx cy w
h [conf]``, normalised), with ``--save-json`` ``predictions.json`` (one record per box, ``bbox`` as pixel x, y,
w, h). A file that is not a readable image, or whose header says it has more than ``serve.max_image_pixels``
pixels, is named, skipped and counted (``--strict``: stop at the first). The last line is a summary.
Exit status: 0 when at least one image was predicted, 2 on an error or when every image was skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from yolov1.redact import redact, redact_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
DEFAULT_WEIGHTS = "models/yolov1.pt"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # the project's embedded store (params tracking.uri)
MAX_DOWNLOAD_BYTES = 50_000_000
DOWNLOAD_TIMEOUT_S = 30


class PredictError(Exception):
    """A problem with the command's inputs that ends it: the message is one line for the user."""


@dataclass(frozen=True)
class Source:
    """One image to predict: a display name, an output stem and how to get its bytes."""

    name: str
    stem: str
    read: Callable[[], bytes]


# -- the model ----------------------------------------------------------------------------------------------


def resolve_weights(model: str, params_path: Path | None = None) -> Path:
    """A local weights path, or the weights artifact of a registered/logged MLflow model.

    A URI is looked up in MLFLOW_TRACKING_URI, else the params file's ``tracking.uri`` (when there is one),
    else ``sqlite:///mlflow.db``. A local store that does not exist is an error: reading never creates one.
    """
    if "://" not in model and not model.startswith(("models:/", "runs:/")):
        path = Path(model)
        if not path.is_file():
            raise PredictError(f"{path}: no such weights file (train first, or pass models:/<name>@champion)")
        return path
    uri = _tracking_uri(params_path)
    _require_local_store(model, uri)
    if uri.startswith(("http://", "https://")):  # MLflow's client retries a dead server for minutes, silently
        from pipelines.tracking import TrackingUnavailable, check_reachable

        try:
            check_reachable(uri)
        except TrackingUnavailable as err:
            raise PredictError(f"{model}: {err}") from None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _quiet_mlflow_info():
            local = Path(mlflow.artifacts.download_artifacts(model))
    except (MlflowException, OSError) as err:
        first = str(getattr(err, "message", err)).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise PredictError(f"{model}: not found in the tracking store {redact_url(uri)} ({redact(first)})") from None
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise PredictError(f"{model}: no weights (.pt) artifact in the model")
    return found[0]


@contextlib.contextmanager
def _quiet_mlflow_info():
    """MLflow's INFO lines (store set-up, background monitors) kept off stderr while the model is looked up.

    MLflow logs through its own handler straight to stderr; predict's stderr is its own one-line errors and
    the skipped-file lines. MLflow's warnings and errors still show."""
    import logging

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _tracking_uri(params_path: Path | None) -> str:
    from pipelines.tracking import tracking_uri
    from yolov1.config import TrackingConfig

    cfg = TrackingConfig(experiment="", uri=DEFAULT_TRACKING_URI, artifact_root="mlartifacts")
    if params_path is not None and params_path.is_file():
        from pipelines.params import load_params

        cfg = load_params(params_path).tracking
    return tracking_uri(cfg)


def _require_local_store(model: str, uri: str) -> None:
    """A sqlite or file store must already exist: MLflow would create an empty one and then report 'not found'."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
    elif uri.startswith("file:"):
        path = Path(uri[len("file:"):].removeprefix("//"))
    elif "://" not in uri:
        path = Path(uri)
    else:
        return
    if not path.exists():
        raise PredictError(f"{model}: no MLflow store at {path} (tracking URI {redact_url(uri)}); set "
                           "MLFLOW_TRACKING_URI or run from the workspace that holds the registry")
    if uri.startswith("sqlite:///") and not _has_mlflow_tables(path):
        # MLflow would create its tables in this file (and log that on stderr) before reporting "not found".
        raise PredictError(f"{model}: {path} is not an MLflow store (no registry tables; tracking URI "
                           f"{redact_url(uri)}); set MLFLOW_TRACKING_URI or run from the workspace that holds it")


def _has_mlflow_tables(path: Path) -> bool:
    """Whether the sqlite file holds MLflow's tables; opened read-only, so looking never writes to it."""
    import sqlite3
    from urllib.parse import quote

    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)) as db:
            names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:  # not a database at all, or unreadable
        return False
    return {"experiments", "runs", "registered_models", "model_versions"} <= names


def _settings(weights_inference: dict | None, params_path: Path | None, weights: Path, args) -> object:
    """Thresholds and image limit: the model's own, or the params file's when given; flags override them."""
    from yolov1.predict import InferenceSettings

    if params_path is not None:
        from pipelines.params import load_params

        params = load_params(params_path)
        settings = InferenceSettings.from_params(params.eval, params.serve)
    elif weights_inference is not None:
        try:
            settings = InferenceSettings.from_dict(weights_inference)
        except ValueError as err:
            raise PredictError(f"{weights}: {err}") from None
    else:
        raise PredictError(f"{weights}: holds no thresholds (written before they were stored); pass --params "
                           "params.yaml")
    overrides = {"score_threshold": args.conf, "nms_iou_threshold": args.iou, "max_detections": args.max_det}
    try:
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as err:
        flag = {"score_threshold": "--conf", "nms_iou_threshold": "--iou", "max_detections": "--max-det"}
        key = str(err).split(":")[0]
        raise PredictError(f"{flag.get(key, key)}: {str(err).split(': ', 1)[-1]}") from None


def _device(spec: str | None) -> str:
    import torch

    if spec is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    spec = spec.strip().lower()
    if spec.isdigit():
        spec = f"cuda:{spec}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise PredictError(f"--device: unknown device {spec!r} (cpu, cuda, cuda:N or N)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise PredictError(f"--device: {spec} requested but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return str(device)


def _class_indices(wanted: list[str] | None, classes: list[str]) -> list[int] | None:
    if not wanted:
        return None
    out = []
    for item in (w for arg in wanted for w in arg.split(",") if w):
        if item.isdigit() and int(item) < len(classes):
            out.append(int(item))
        elif item in classes:
            out.append(classes.index(item))
        else:
            raise PredictError(f"--classes: {item!r} is neither a class index 0..{len(classes) - 1} nor one of "
                               f"{classes}")
    return out


# -- the sources --------------------------------------------------------------------------------------------


def collect_sources(inputs: list[str], *, max_download_bytes: int = MAX_DOWNLOAD_BYTES) -> tuple[list[Source], int]:
    """Files, folders (their image files, not recursive), glob patterns and http(s) URLs -> (sources, ignored).

    ``ignored`` counts files in the given folders without an image suffix (reported, never silent). A path
    or pattern that matches nothing is an error naming it.
    """
    sources: list[Source] = []
    ignored = 0
    for item in inputs:
        if item.lower().startswith(("http://", "https://")):
            stem = Path(item.split("?")[0].rstrip("/")).stem or "download"
            sources.append(Source(redact_url(item), stem, lambda url=item: download(url, max_download_bytes)))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            ignored += len(files) - len(images)
            sources += [_file_source(p) for p in images]
        elif path.is_file():
            sources.append(_file_source(path))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise PredictError(f"{item}: the pattern matches no file")
            sources += [_file_source(p) for p in matches]
        else:
            raise PredictError(f"{path}: no such image, folder, pattern or URL")
    if not sources:
        raise PredictError(f"no images found in {', '.join(inputs)}")
    return sources, ignored


def _file_source(path: Path) -> Source:
    return Source(str(path), path.stem, path.read_bytes)


def download(url: str, max_bytes: int) -> bytes:
    """GET an http(s) URL into memory, refusing more than `max_bytes` (from Content-Length, else while reading)."""
    request = urllib.request.Request(url, headers={"User-Agent": "yolov1-predict"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise OSError(f"{redact_url(url)}: {int(length):,} bytes is over the download limit of "
                              f"{max_bytes:,} (--max-download-bytes)")
            data = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as err:
        raise OSError(f"{redact_url(url)}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError) as err:
        raise OSError(f"{redact_url(url)}: cannot download ({redact(getattr(err, 'reason', err))})") from None
    if len(data) > max_bytes:
        raise OSError(f"{redact_url(url)}: over the download limit of {max_bytes:,} bytes (--max-download-bytes)")
    return data


# -- the outputs --------------------------------------------------------------------------------------------


def new_run_dir(root: Path = Path("runs/predict")) -> Path:
    """The next free ``root/N`` (N = 1, 2, ...), created here so two concurrent runs never share one."""
    root.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
    while True:
        try:
            (root / str(n)).mkdir()
            return root / str(n)
        except FileExistsError:
            n += 1


def _prepare_out(out: Path | None, exist_ok: bool) -> Path:
    if out is None:
        return new_run_dir()
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not exist_ok:
        raise PredictError(f"--out {out}: exists and is not empty (pass --exist-ok to write into it, or another "
                           "--out; without --out each run gets a new runs/predict/N)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` through a uniquely named temp file and ``os.replace``; the file gets the umask's mode."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def yolo_txt(pred, *, with_conf: bool) -> str:
    """One line per box: ``class cx cy w h [conf]``, centre and size normalised by the image's width/height."""
    lines = []
    for box, label, score in zip(pred.boxes_xyxy, pred.labels, pred.scores, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        values = [(x1 + x2) / 2 / pred.width, (y1 + y2) / 2 / pred.height, (x2 - x1) / pred.width,
                  (y2 - y1) / pred.height]
        fields = [str(int(label))] + [f"{v:.6f}" for v in values] + ([f"{float(score):.5f}"] if with_conf else [])
        lines.append(" ".join(fields))
    return "".join(line + "\n" for line in lines)


def _records(name: str, pred) -> list[dict]:
    return [{"image": name, "category_id": int(label), "category": n, "score": round(float(s), 5),
             "bbox": [round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2] - b[0]), 2),
                      round(float(b[3] - b[1]), 2)]}
            for b, label, n, s in zip(pred.boxes_xyxy, pred.labels, pred.names, pred.scores, strict=True)]


class _Writer:
    """Everything one run writes, image by image; the JSON files are rewritten atomically after each batch."""

    def __init__(self, out: Path, args) -> None:
        self.out, self.args = out, args
        self.results: dict[str, dict] = {}
        self.records: list[dict] = []
        self.stems: set[str] = set()

    def add(self, source: Source, image, pred, classes) -> None:
        from yolov1.plots import draw_boxes, save_image

        stem = self._unique(source.stem)
        self.results[source.name] = pred.to_dict()
        if self.args.save_json:
            self.records += _records(source.name, pred)
        if self.args.save_txt:
            (self.out / "labels").mkdir(exist_ok=True)
            write_text_atomic(self.out / "labels" / f"{stem}.txt", yolo_txt(pred, with_conf=self.args.save_conf))
        if not self.args.nosave:
            save_image(draw_boxes(image, pred.boxes_xyxy, pred.labels, classes, scores=pred.scores),
                       self.out / f"{stem}.png")

    def flush(self) -> None:
        write_text_atomic(self.out / "detections.json", json.dumps(self.results, indent=2))
        if self.args.save_json:
            write_text_atomic(self.out / "predictions.json", json.dumps(self.records))

    def _unique(self, stem: str) -> str:
        candidate, k = stem, 2
        while candidate in self.stems:  # two inputs named a.jpg in different folders: a.png and a_2.png
            candidate, k = f"{stem}_{k}", k + 1
        self.stems.add(candidate)
        return candidate


# -- the run ------------------------------------------------------------------------------------------------


def run(args) -> dict:
    from tqdm import tqdm

    from yolov1.checkpoint import read_weights
    from yolov1.predict import Detector, ImageError, load_image

    weights = resolve_weights(args.model, args.params)
    device = _device(args.device)
    found = read_weights(weights, device=device)
    settings = _settings(found.inference, args.params, weights, args)
    detector = Detector(found.model, found.model_cfg, found.classes, score_threshold=settings.score_threshold,
                        nms_iou_threshold=settings.nms_iou_threshold, max_detections=settings.max_detections,
                        max_image_pixels=settings.max_image_pixels, device=device,
                        keep_labels=_class_indices(args.classes, found.classes), input_size=args.imgsz)
    sources, ignored = collect_sources(args.inputs, max_download_bytes=args.max_download_bytes)
    out = _prepare_out(args.out, args.exist_ok)
    writer = _Writer(out, args)
    skipped: list[str] = []
    bar = tqdm(total=len(sources), desc="predict", unit="img", disable=not sys.stderr.isatty())
    for batch in _chunks(sources, args.batch):
        loaded = []
        for source in batch:
            try:
                loaded.append((source, load_image(source.read(), name=source.name,
                                                  max_pixels=settings.max_image_pixels)))
            except (ImageError, OSError) as err:
                message = str(err) if source.name in str(err) else f"{source.name}: {err}"
                if args.strict:
                    writer.flush()
                    raise PredictError(f"{redact(message)} (--strict: stopped; results so far in {out})") from None
                print(f"yolov1 predict: skipped {redact(message)}", file=sys.stderr)
                skipped.append(source.name)
        for (source, image), pred in zip(loaded, detector.predict_images([img for _, img in loaded]), strict=True):
            writer.add(source, image, pred, found.classes)
        writer.flush()
        bar.update(len(batch))
    bar.close()
    return {"images": len(writer.results), "skipped": len(skipped), "skipped_files": skipped,
            "ignored_non_images": ignored,
            "detections": sum(len(r["detections"]) for r in writer.results.values()), "out_dir": str(out),
            "score_threshold": settings.score_threshold, "nms_iou_threshold": settings.nms_iou_threshold,
            "max_detections": settings.max_detections, "device": device}


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yolov1 predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="SOURCE",
                        help="image files, folders, glob patterns ('imgs/**/*.jpg') and/or http(s) URLs")
    parser.add_argument("--model", default=DEFAULT_WEIGHTS,
                        help="weights file or MLflow model URI, e.g. models:/yolov1-voc@champion (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=None,
                        help="take thresholds, image limit and tracking URI from this params file instead of the model")
    parser.add_argument("--conf", "--score-threshold", dest="conf", type=float, default=None,
                        help="keep boxes scoring above this, in [0, 1] (default: the model's)")
    parser.add_argument("--iou", type=float, default=None, help="NMS IoU threshold in [0, 1] (default: the model's)")
    parser.add_argument("--max-det", type=int, default=None, help="most boxes per image (default: the model's)")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="keep only these classes (indices or names, e.g. --classes 0 14 or --classes dog,cat)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or N (default: cuda when available)")
    parser.add_argument("--imgsz", type=int, default=None,
                        help="inference size in px (default: the trained size; other sizes need a conv head)")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--save-txt", action="store_true", help="write labels/<image>.txt in YOLO format")
    parser.add_argument("--save-conf", action="store_true", help="with --save-txt: append each box's score")
    parser.add_argument("--save-json", action="store_true", help="write predictions.json (one record per box)")
    parser.add_argument("--nosave", action="store_true", help="do not write the pictures with boxes drawn")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: a new runs/predict/N); must be new or empty")
    parser.add_argument("--exist-ok", action="store_true", help="allow --out to be a folder that is not empty")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping")
    parser.add_argument("--max-download-bytes", type=int, default=MAX_DOWNLOAD_BYTES,
                        help="size limit for an image fetched from a URL (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1:
        return _fail("--batch: must be >= 1")
    try:
        summary = run(args)
    except Exception as err:  # noqa: BLE001 - sorted below: expected errors get one line, bugs a traceback
        if not _expected(err):
            raise
        return _fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    print(json.dumps(summary, indent=2))
    line = (f"yolov1 predict: {summary['images']} images, {summary['detections']} detections, "
            f"{summary['skipped']} skipped")
    if summary["ignored_non_images"]:
        line += f", {summary['ignored_non_images']} non-image files ignored"
    print(f"{line} -> {summary['out_dir']}", file=sys.stderr)
    return 0 if summary["images"] else 2


def _expected(err: Exception) -> bool:
    from yolov1.checkpoint import CheckpointError

    return isinstance(err, (PredictError, CheckpointError, FileNotFoundError, ValueError, OSError))


def _fail(message: str) -> int:
    print(f"yolov1 predict: error: {redact(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    from pipelines.cli import run_main  # Ctrl-C: a short message and exit 130, not a traceback

    raise SystemExit(run_main(main, prog="yolov1 predict"))
