"""Typed, frozen configuration: the dataclasses that params.yaml is loaded into.

`params_from_dict` checks a plain mapping (already parsed from YAML by `pipelines.params`) against these
dataclasses: unknown keys, missing keys and wrong types raise `ConfigError` naming the key path, e.g.
``model.grid_size: expected int, got 'seven'``. Nothing here has a default: every tunable comes from the file.
"""

from __future__ import annotations

import dataclasses
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
    gpus: Union[Literal["auto"], int] = "auto"  # processes (one per GPU) the train stage starts; "auto" = all visible
    grad_accumulation: int = 1  # micro-batches per optimizer step; batch_size stays the global batch per step
    sync_batch_norm: bool = False  # SyncBatchNorm across ranks (only with more than one process)
    checkpoint_every: int = 1  # epochs between resumable checkpoints (last.pt); best.pt follows validation mAP
    freeze_backbone_epochs: int = 0  # backbone frozen (BatchNorm in eval mode) for the first N epochs
    backbone_lr_multiplier: float = 1.0  # backbone learning rate = lr x this


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
    """Build `Params` from a parsed params mapping, checking every key and type; raises `ConfigError`."""
    params = _build(Params, raw, "")
    _check_consistency(params)
    return params


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
    positive = {
        "model.grid_size": p.model.grid_size, "model.boxes_per_cell": p.model.boxes_per_cell,
        "model.num_classes": p.model.num_classes, "model.width_multiplier": p.model.width_multiplier,
        "model.head_hidden": p.model.head_hidden, "train.epochs": p.train.epochs,
        "train.batch_size": p.train.batch_size, "train.lr": p.train.lr, "eval.batch_size": p.eval.batch_size,
        "train.log_every": p.train.log_every,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value!r}")
    fractions = {
        "model.dropout": p.model.dropout, "train.warmup_fraction": p.train.warmup_fraction,
        "data.augment.hflip": p.data.augment.hflip, "data.augment.min_visible": p.data.augment.min_visible,
        "eval.nms_iou_threshold": p.eval.nms_iou_threshold,
        "eval.match_iou_threshold": p.eval.match_iou_threshold,
    }
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}: must be in [0, 1], got {value!r}")
    if list(p.train.milestones) != sorted(p.train.milestones) or any(not 0 < m < 1 for m in p.train.milestones):
        raise ConfigError(f"train.milestones: must be increasing fractions in (0, 1), got {list(p.train.milestones)}")
    for i, sets in enumerate((p.data.train_sets, p.data.test_sets)):
        name = ("data.train_sets", "data.test_sets")[i]
        for s in sets:
            year, _, split = s.partition("/")
            if not (year.isdigit() and split):
                raise ConfigError(f"{name}: expected '<year>/<split>' like '2007/trainval', got {s!r}")


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{type(value).__name__} {value!r}"


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
            raise ConfigError(f"{path + '.' if path else ''}{unknown[0]}: unknown key (expected one of {names})")
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
        raise ConfigError(f"{where}: {_describe(value)} matches none of {[str(e) for e in errors]}")
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
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # a bug in this module, not in the file
