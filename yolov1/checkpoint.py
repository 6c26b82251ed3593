"""Checkpoints (resumable training state) and final weights, written atomically and read with weights_only.

Every file here holds only tensors, numbers, strings, lists and dicts, and is always read back with
``torch.load(weights_only=True)``: loading a checkpoint never unpickles an arbitrary object, so a tampered or
foreign file can fail to load but cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from yolov1.config import ModelConfig

__all__ = [
    "CheckpointError", "get_rng_state", "load_checkpoint", "load_weights", "params_hash", "save_checkpoint",
    "save_weights", "set_rng_state",
]

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read or lacks what it should hold; names the file."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: temp file in the same directory, fsync, ``os.replace``.

    A crash at any moment leaves either the previous file or the new one, never a torn file. `state` must hold
    only what ``weights_only`` loading accepts (tensors, numbers, str, bool, None, lists, tuples, dicts).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the final file should read like any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by `save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises `CheckpointError` naming the file when it is missing, truncated, or holds anything but plain data
    (a pickled custom object is refused, not executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        raise CheckpointError(f"{path}: cannot be loaded as plain data with weights_only=True ({err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


def params_hash(*configs: Any) -> str:
    """sha256 (hex) of the canonical JSON of `configs` (dataclasses, dicts, lists, numbers, strings).

    Canonical: dataclasses become dicts, tuples lists, keys sorted, no whitespace, so equal configs always
    give the same hash and any changed value gives another.
    """
    text = json.dumps([_plain(c) for c in configs], sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def get_rng_state(device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The torch RNG states as ByteTensors: ``{"torch": CPU generator}`` plus ``"cuda"`` (that device's
    generator) when `device` is a CUDA device. DataLoader order needs no state: it is a function of
    (seed, epoch) (see `yolov1.train`)."""
    device = torch.device(device)
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: str | torch.device = "cpu") -> None:
    """Restore what `get_rng_state` captured; a CUDA state is restored only when `device` is CUDA."""
    device = torch.device(device)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    elif "cuda" in state:
        logger.warning("checkpoint holds a CUDA RNG state but training runs on %s: not restored", device)


def save_weights(path: str | os.PathLike, model: nn.Module, model_cfg: ModelConfig, classes: list[str] | tuple,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the final trained weights (the DVC output) atomically, loadable with ``weights_only=True``.

    Contents: ``{"state_dict": float tensors on CPU, "model_config": dict of ModelConfig fields,
    "classes": list of C names, **extra}``; `extra` (e.g. epochs, params hash, metrics) must be plain data.
    """
    if len(classes) != model_cfg.num_classes:
        raise ValueError(f"classes: {len(classes)} names but model_config.num_classes is {model_cfg.num_classes}")
    extra = dict(extra or {})
    clash = {"state_dict", "model_config", "classes"} & extra.keys()
    if clash:
        raise ValueError(f"extra: keys {sorted(clash)} are reserved")
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"state_dict": state_dict, "model_config": dataclasses.asdict(model_cfg), "classes": list(classes),
               **extra}
    return save_checkpoint(path, payload)


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig, list[str]]:
    """Rebuild the net written by `save_weights`: ``(model in eval mode on device, ModelConfig, class names)``."""
    from yolov1.model import build_model  # here, not at the top: only loading weights needs the network code

    state = load_checkpoint(path)
    missing = [k for k in ("state_dict", "model_config", "classes") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a weights file (missing {missing})")
    raw_cfg = dict(state["model_config"])
    try:
        model_cfg = ModelConfig(**raw_cfg)
    except TypeError as err:
        raise CheckpointError(f"{path}: model_config does not match ModelConfig ({err})") from err
    model = build_model(model_cfg)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: state_dict does not fit the model its config describes ({err})") from err
    return model.to(device).eval(), model_cfg, list(state["classes"])


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"params_hash: cannot hash a {type(value).__name__} ({value!r}); pass configs or plain data")


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
