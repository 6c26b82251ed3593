"""Typed, frozen configuration: the dataclasses that params.yaml is loaded into.

`params_from_dict` checks a plain mapping (already parsed from YAML by `pipelines.params`) against these
dataclasses: unknown keys, missing keys and wrong types raise `ConfigError` naming the key path, e.g.
``model.grid_size: expected int, got 'seven'``. Nothing here has a default: every tunable comes from the file.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A params file that does not match the schema; the message starts with the key path at fault."""


@dataclass(frozen=True)
class ArchiveConfig:
    name: str
    filename: str
    md5: str
    size: int | None  # bytes, when known (checked before the md5)
    local: str | None  # a tarball already on disk, tried before any mirror
    mirrors: tuple[str, ...]


@dataclass(frozen=True)
class AugmentConfig:
    scale: float
    translate: float
    exposure: float
    saturation: float
    hflip: float
    min_visible: float


@dataclass(frozen=True)
class DataConfig:
    root: str
    archives: tuple[ArchiveConfig, ...]
    train_sets: tuple[str, ...]
    test_sets: tuple[str, ...]
    classes: tuple[str, ...]
    use_difficult: bool
    on_bad_object: Literal["error", "skip"]
    augment: AugmentConfig
    cache: Literal["none", "ram"] = "none"  # "ram": decode every image once, resized to the input size, kept in memory


@dataclass(frozen=True)
class ModelConfig:
    variant: Literal["yolov1", "fast"]
    input_size: int
    grid_size: int
    boxes_per_cell: int
    num_classes: int
    batch_norm: bool
    width_multiplier: float
    head: Literal["fc", "conv"]
    head_hidden: int
    dropout: float
    # Added after the first release: the defaults keep older checkpoints' configs loadable; params files must
    # still give every key (the loader requires all fields).
    backbone: Literal["darknet", "resnet18", "resnet34", "resnet50"] = "darknet"
    pretrained: str = "none"  # "none", "imagenet" (torchvision's weights) or a path to a state dict / checkpoint


@dataclass(frozen=True)
class LossConfig:
    lambda_coord: float
    lambda_noobj: float
    confidence_target: Literal["iou", "one"]


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    epochs: int
    batch_size: int
    optimizer: Literal["sgd", "adamw"]
    lr: float
    momentum: float
    weight_decay: float
    schedule: Literal["step", "cosine"]
    warmup_fraction: float
    warmup_start_factor: float
    milestones: tuple[float, ...]
    gamma: float
    grad_clip_norm: float
    precision: Literal["auto", "fp32", "bf16"]
    channels_last: bool
    compile: bool
    num_workers: int
    deterministic: bool
    resume: Literal["auto", "never"]
    checkpoint_dir: str
    log_every: int
    val_every: int
    val_images: int
    loss: LossConfig
    # Added after the first release (defaults only for code that builds a TrainConfig directly).
    gpus: Literal["auto"] | int = "auto"  # processes (one per GPU) the train stage starts; "auto" = all visible
    grad_accumulation: int = 1  # micro-batches per optimizer step; batch_size stays the global batch per step
    sync_batch_norm: bool = False  # SyncBatchNorm across ranks (only with more than one process)
    checkpoint_every: int = 1  # epochs between resumable checkpoints (last.pt); best.pt follows validation mAP
    freeze_backbone_epochs: int = 0  # backbone frozen (BatchNorm in eval mode) for the first N epochs
    backbone_lr_multiplier: float = 1.0  # backbone learning rate = lr x this
    ema_decay: float = 0.0  # EMA of the weights for validation and the saved model (yolov1.ema); 0: off


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int
    score_threshold: float
    nms_iou_threshold: float
    max_detections: int
    match_iou_threshold: float
    draw_score_threshold: float
    num_pictures: int
    precision: Literal["fp32", "bf16"] = "fp32"  # scoring precision on CUDA (bf16 ties change AP)
    match_comparison: Literal[">=", ">"] = ">="  # ">=": the official devkit (VOCevaldet.m); ">": the Python ports


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str
    min_improvement: float
    min_map: float = 0.0  # absolute VOC07 mAP floor below which a model is never promoted


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str
    uri: str
    artifact_root: str
    system_metrics: bool = True  # MLflow system metrics (CPU, memory, GPU) during training


@dataclass(frozen=True)
class ScheduleConfig:
    deployment: str
    cron: str
    timezone: str


@dataclass(frozen=True)
class ServeConfig:
    max_image_pixels: int  # width x height, read from the image header before decoding (predict CLI and server)
    max_rows: int  # images per request to the served model
    max_request_bytes: int  # body size of one request to the served model


@dataclass(frozen=True)
class PretrainConfig:
    image_folder: str  # torchvision ImageFolder tree (one folder per class) for classification pretraining
    val_folder: str | None  # held-out ImageFolder tree; null: val_fraction of image_folder
    val_fraction: float
    input_size: int  # the paper pretrains at 224 px
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    num_workers: int
    output: str  # backbone checkpoint that model.pretrained takes
    hue: float  # colour augmentation: hue shifted by up to this fraction of the colour circle (0: off, max 0.5)
    saturation: float  # saturation scaled by a factor in [1 / s, s] (1: off)
    exposure: float  # brightness scaled by a factor in [1 / e, e] (1: off)


@dataclass(frozen=True)
class Params:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    register: RegisterConfig
    tracking: TrackingConfig
    schedule: ScheduleConfig
    serve: ServeConfig
    pretrain: PretrainConfig


def params_from_dict(raw: Any) -> Params:
    """Build `Params` from a parsed params mapping, checking every key, type and range; raises `ConfigError`."""
    params = _build(Params, raw, "")
    _check_consistency(params)
    _check_ranges(params)
    return params


def model_config_from_dict(raw: Any, where: str = "model") -> ModelConfig:
    """Build a `ModelConfig` (e.g. from a checkpoint) with the same type checks as params.yaml plus its ranges.

    Ranges include upper bounds (`MODEL_LIMITS`), so a hostile config cannot ask for a net of many GB.
    """
    cfg = _build(ModelConfig, raw, where)
    _check_fields(cfg, where, _MODEL_RANGES)
    stride, rem = divmod(cfg.input_size, cfg.grid_size)
    if rem or stride not in (8, 16, 32, 64):
        raise ConfigError(f"{where}.input_size: input_size / grid_size must be 8, 16, 32 or 64 (the net's stride), "
                          f"got {cfg.input_size} / {cfg.grid_size}")
    return cfg


def params_to_dict(params: Any) -> dict[str, Any]:
    """The inverse of `params_from_dict`: plain dicts and lists, ready for YAML/JSON."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(params)


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config into ``{"train.lr": 0.01, ...}`` (lists kept whole), e.g. for experiment tracking."""
    out: dict[str, Any] = {}
    for key, value in (params_to_dict(params) if dataclasses.is_dataclass(params) else params).items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _check_consistency(p: Params) -> None:
    if p.model.num_classes != len(p.data.classes):
        raise ConfigError(
            f"model.num_classes: is {p.model.num_classes} but data.classes lists {len(p.data.classes)} names"
        )
    if len(set(p.data.classes)) != len(p.data.classes):
        raise ConfigError("data.classes: names must be unique")
    stride, rem = divmod(p.model.input_size, max(p.model.grid_size, 1))
    if rem or stride not in (8, 16, 32, 64):
        raise ConfigError(
            f"model.input_size: input_size / grid_size must be 8, 16, 32 or 64 (the net's stride), "
            f"got {p.model.input_size} / {p.model.grid_size}"
        )
    if list(p.train.milestones) != sorted(p.train.milestones) or any(not 0 < m < 1 for m in p.train.milestones):
        raise ConfigError(f"train.milestones: must be increasing fractions in (0, 1), got {_short(list(p.train.milestones))}")
    for i, sets in enumerate((p.data.train_sets, p.data.test_sets)):
        name = ("data.train_sets", "data.test_sets")[i]
        for s in sets:
            year, _, split = s.partition("/")
            if not (year.isdigit() and split):
                raise ConfigError(f"{name}: expected '<year>/<split>' like '2007/trainval', got {_short(s)}")


@dataclass(frozen=True)
class _Range:
    """A closed or half-open interval a numeric key must lie in; `None` ends are unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        return f"{'<' if self.hi_open else '<='} {self.hi}"


_POSITIVE = _Range(0, lo_open=True)
_NON_NEGATIVE = _Range(0)
_AT_LEAST_1 = _Range(1)
_UNIT = _Range(0, 1)  # probabilities, thresholds, fractions
_UNIT_HALF_OPEN = _Range(0, 1, hi_open=True)  # momentum, dropout: 1 would never forget / drop everything
_COUNT = _Range(1, 1_000_000)  # epochs, batch sizes: large enough for any real run, small enough to catch typos
_WORKERS = _Range(0, 256)

# Upper bounds too: a checkpoint's config (untrusted) goes through the same table, and the paper's net is
# input 448, S=7, B=2, C=20, width 1, head_hidden 4096.
_MODEL_RANGES = {
    "input_size": _Range(8, 4096), "grid_size": _Range(1, 64), "boxes_per_cell": _Range(1, 16),
    "num_classes": _Range(1, 1000), "width_multiplier": _Range(0, 4, lo_open=True), "head_hidden": _Range(1, 16384),
    "dropout": _UNIT_HALF_OPEN,
}
MAX_HEAD_WEIGHTS = 600_000_000  # weights of the fc head (2.4 GB in fp32); the paper's is 211 M
_SECTION_RANGES: dict[str, dict[str, _Range]] = {
    "data.augment": {"scale": _UNIT_HALF_OPEN, "translate": _UNIT, "exposure": _Range(1, 10),
                     "saturation": _Range(1, 10), "hflip": _UNIT, "min_visible": _UNIT},
    "model": _MODEL_RANGES,
    "train": {"seed": _Range(0, 2**32 - 1), "epochs": _COUNT, "batch_size": _COUNT, "lr": _Range(0, 10, lo_open=True),
              "momentum": _UNIT_HALF_OPEN, "weight_decay": _Range(0, 1), "warmup_fraction": _UNIT,
              "warmup_start_factor": _Range(0, 1, lo_open=True), "gamma": _Range(0, 1, lo_open=True),
              "grad_clip_norm": _NON_NEGATIVE, "num_workers": _WORKERS, "log_every": _COUNT,
              "val_every": _Range(0, 1_000_000), "val_images": _Range(0, 10_000_000), "grad_accumulation": _Range(1, 1024),
              "checkpoint_every": _COUNT, "freeze_backbone_epochs": _Range(0, 1_000_000),
              "backbone_lr_multiplier": _Range(0, 100), "ema_decay": _Range(0, 1, hi_open=True)},
    "train.loss": {"lambda_coord": _Range(0, 1000), "lambda_noobj": _Range(0, 1000)},
    "eval": {"batch_size": _COUNT, "score_threshold": _UNIT, "nms_iou_threshold": _UNIT,
             "max_detections": _Range(1, 100_000), "match_iou_threshold": _UNIT, "draw_score_threshold": _UNIT,
             "num_pictures": _Range(0, 1024)},
    "register": {"min_improvement": _Range(0, 1), "min_map": _UNIT},
    "serve": {"max_image_pixels": _Range(1, 1 << 30), "max_rows": _Range(1, 100_000),
              "max_request_bytes": _Range(1, 1 << 31)},
    "pretrain": {"val_fraction": _UNIT_HALF_OPEN, "input_size": _Range(32, 4096), "epochs": _COUNT,
                 "batch_size": _COUNT, "lr": _Range(0, 10, lo_open=True), "momentum": _UNIT_HALF_OPEN,
                 "weight_decay": _Range(0, 1), "num_workers": _WORKERS, "hue": _Range(0, 0.5),
                 "saturation": _Range(1, 10), "exposure": _Range(1, 10)},
}


def _check_ranges(p: Params) -> None:
    """Every numeric key against `_SECTION_RANGES` (NaN/inf never get this far: `_build` refuses them)."""
    for section, ranges in _SECTION_RANGES.items():
        node: Any = p
        for part in section.split("."):
            node = getattr(node, part)
        _check_fields(node, section, ranges)
    if p.train.gpus != "auto" and not 1 <= p.train.gpus <= 1024:
        raise ConfigError(f"train.gpus: must be \"auto\" or in [1, 1024], got {p.train.gpus!r}")
    for i, archive in enumerate(p.data.archives):
        if archive.size is not None and not 1 <= archive.size <= 1 << 44:
            raise ConfigError(f"data.archives[{i}].size: must be in [1, 2**44] bytes or null, got {archive.size!r}")
    numeric = [f.name for f in dataclasses.fields(p.model) if f.type in ("int", "float")]
    assert set(numeric) <= set(_MODEL_RANGES), "every numeric model key needs a range"  # a bug here, not in a file


def _check_fields(node: Any, where: str, ranges: dict[str, _Range]) -> None:
    for key, allowed in ranges.items():
        value = getattr(node, key)
        if not allowed.holds(value):
            raise ConfigError(f"{where}.{key}: must be {allowed}, got {_short(value)}")
    if isinstance(node, ModelConfig) and node.head == "fc":
        channels = 2048 if node.backbone.startswith("resnet") else max(1, round(1024 * node.width_multiplier))
        cells = node.grid_size * node.grid_size
        weights = node.head_hidden * (channels * cells + cells * (5 * node.boxes_per_cell + node.num_classes))
        if weights > MAX_HEAD_WEIGHTS:
            raise ConfigError(f"{where}.head_hidden: the fc head would have {weights:,} weights "
                              f"(limit {MAX_HEAD_WEIGHTS:,}); lower head_hidden, grid_size or width_multiplier")


_INT_LIMIT = 1 << 63
_QUOTE_LIMIT = 80  # characters of a value quoted in an error (a YAML bomb once printed a 39 MB message)
_REPR = reprlib.Repr()  # bounded repr: depth 3, 6 items per container (Python 3.11's Repr takes no arguments)
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = _QUOTE_LIMIT


def _short(value: Any, limit: int = _QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to `limit` characters; never builds the whole repr of a huge nested value."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    return _short(value) if isinstance(value, str) else f"{type(value).__name__} {_short(value)}"


def _build(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (lists -> tuples, dicts -> dataclasses)."""
    where = path or "<root>"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {_describe(value)}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = [k for k in value if k not in names]
        if unknown:
            key = unknown[0] if isinstance(unknown[0], str) and len(unknown[0]) <= _QUOTE_LIMIT else _short(unknown[0])
            raise ConfigError(f"{path + '.' if path else ''}{key}: unknown key (expected one of {names})")
        missing = [n for n in names if n not in value]
        if missing:
            raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: missing key")
        return tp(**{n: _build(hints[n], value[n], f"{path}.{n}" if path else n) for n in names})
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _build(arg, value, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: {_describe(value)} matches none of {[str(e) for e in errors]}"[:4 * _QUOTE_LIMIT])
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {_describe(value)}")
        return value
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return tuple(_build(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {_describe(value)}")
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise ConfigError(f"{where}: {_short(value)} does not fit in 64 bits")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {_short(value)} is out of the float range") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # a bug in this module, not in the file
