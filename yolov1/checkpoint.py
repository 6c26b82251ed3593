"""Checkpoints (resumable training state) and final weights, written atomically and read with weights_only.

Every file here holds only tensors, numbers, strings, lists and dicts, and is always read back with
``torch.load(weights_only=True)``: loading a checkpoint never unpickles an arbitrary object, so a tampered or
foreign file can fail to load but cannot run code.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from yolov1.config import ModelConfig

__all__ = [
    "AsyncCheckpointWriter", "CheckpointError", "WeightsFile", "get_rng_state", "load_checkpoint", "load_weights",
    "params_hash", "read_weights", "remove_stale_temp_files", "save_checkpoint", "save_weights", "set_rng_state",
    "snapshot",
]

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read or lacks what it should hold; names the file."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: unique temp file in the same directory, fsync, ``os.replace``.

    A crash at any moment leaves either the previous file or the new one, never a torn file (a killed write
    can leave a ``.<name>.*.tmp`` beside it; `remove_stale_temp_files` clears those). `state` must hold only what
    ``weights_only`` loading accepts (tensors, numbers, str, bool, None, lists, tuples, dicts). A full disk
    raises `CheckpointError` saying "no space left on device" and naming `path`; the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    sink = _Sink(fd)
    try:
        try:
            torch.save(state, sink)
            os.fsync(fd)
        except Exception as err:
            # torch's zip writer turns a failed write into "unexpected pos ..."; the sink kept the real OSError.
            cause = sink.error if sink.error is not None else err
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointError(f"{path}: no space left on device while writing it ({sink.written} bytes "
                                      f"written; the previous file, if any, is untouched)") from cause
            raise
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file reads like any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temp_files(path: str | os.PathLike) -> int:
    """Delete the ``.<name>.*.tmp`` files a killed `save_checkpoint` of `path` left behind; returns how many."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d unfinished checkpoint write(s) of %s", len(stale), path)
    return len(stale)


def snapshot(state: Any) -> Any:
    """A copy of `state` (nested dicts/lists/tuples of tensors and plain values) with every tensor copied to
    the CPU: what a background write needs, so training can go on changing the originals in place."""
    if isinstance(state, Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(v) for v in state)
    return copy.deepcopy(state)


class AsyncCheckpointWriter:
    """Writes checkpoints with `save_checkpoint` on one background thread, one at a time.

    `submit` waits for the previous write to finish (re-raising its error), then starts the next; `wait` blocks
    until nothing is pending. The caller passes a `snapshot` (CPU copies), never live tensors. Errors of a
    write are logged when they happen and raised at the next `submit`/`wait`.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: str | os.PathLike, state: dict[str, Any]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(Path(path), state), daemon=True,
                                        name=f"checkpoint-writer-{Path(path).name}")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    @property
    def pending(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _write(self, path: Path, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(path, state)
        except BaseException as err:  # handed to the training thread at its next submit/wait
            logger.error("checkpoint write failed: %s", err)
            self._error = err


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
                 extra: dict[str, Any] | None = None, *, inference: dict[str, Any] | None = None) -> Path:
    """Write the final trained weights (the DVC output) atomically, loadable with ``weights_only=True``.

    Contents: ``{"state_dict": float tensors on CPU, "model_config": dict of ModelConfig fields,
    "classes": list of C names, "inference": dict or absent, **extra}``; `extra` (e.g. epochs, params hash,
    metrics) must be plain data. `inference` makes the file self-describing for prediction without a params
    file: the decode thresholds and image limit (`yolov1.predict.InferenceSettings.to_dict()`).
    """
    if len(classes) != model_cfg.num_classes:
        raise ValueError(f"classes: {len(classes)} names but model_config.num_classes is {model_cfg.num_classes}")
    extra = dict(extra or {})
    clash = set(WEIGHTS_KEYS) & extra.keys()
    if clash:
        raise ValueError(f"extra: keys {sorted(clash)} are reserved")
    if inference is not None:
        extra["inference"] = dict(inference)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"state_dict": state_dict, "model_config": dataclasses.asdict(model_cfg), "classes": list(classes),
               **extra}
    return save_checkpoint(path, payload)


WEIGHTS_KEYS = ("state_dict", "model_config", "classes", "inference")


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """What `read_weights` found: the rebuilt net plus everything the file says about itself.

    ``inference`` is the raw mapping `save_weights` stored (None in files written before it existed); ``extra``
    holds the other plain-data keys (epochs, params hash, ...).
    """

    model: nn.Module
    model_cfg: ModelConfig
    classes: list[str]
    inference: dict[str, Any] | None
    extra: dict[str, Any]


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig, list[str]]:
    """Rebuild the net written by `save_weights`: ``(model in eval mode on device, ModelConfig, class names)``."""
    found = read_weights(path, device)
    return found.model, found.model_cfg, found.classes


def read_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> WeightsFile:
    """Rebuild the net written by `save_weights`, refusing a hostile or foreign file before allocating it.

    The file is read with ``weights_only=True``; its ``model_config`` goes through the same typed loader as
    params.yaml with upper bounds (`yolov1.config.model_config_from_dict`); the network is first built on the
    meta device (no memory) and every tensor's shape compared with the file's, so a 400-byte file that asks for
    a 26-billion-parameter net fails in milliseconds. Configs saved before ``backbone``/``pretrained`` existed
    get those fields' defaults. Raises `CheckpointError` naming the file and the key at fault.
    """
    from yolov1.config import ConfigError, model_config_from_dict
    from yolov1.model import build_model  # here, not at the top: only loading weights needs the network code

    state = load_checkpoint(path)
    missing = [k for k in ("state_dict", "model_config", "classes") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a weights file (missing {missing})")
    raw_cfg = state["model_config"]
    if not isinstance(raw_cfg, dict):
        raise CheckpointError(f"{path}: model_config: expected a mapping, got {type(raw_cfg).__name__}")
    raw_cfg = {**_NEW_MODEL_FIELDS, **raw_cfg}  # files written before these fields existed
    try:
        model_cfg = model_config_from_dict(raw_cfg, where="model_config")
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err
    classes = state["classes"]
    if (not isinstance(classes, (list, tuple)) or len(classes) != model_cfg.num_classes
            or not all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: classes: expected {model_cfg.num_classes} names (model_config.num_classes)")
    state_dict = state["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: state_dict: expected a mapping of names to tensors")
    # Built with pretrained="none": the file's tensors replace any initial weights, so nothing is fetched.
    build_cfg = dataclasses.replace(model_cfg, pretrained="none")
    with torch.device("meta"):
        skeleton = build_model(build_cfg)
    state_dict = skeleton.upgrade_state_dict(state_dict)  # files from before the backbone/head split
    _check_shapes(path, skeleton.state_dict(), state_dict)
    model = build_model(build_cfg)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: state_dict does not fit the model its config describes ({err})") from err
    inference = state.get("inference")
    if inference is not None and not isinstance(inference, dict):
        raise CheckpointError(f"{path}: inference: expected a mapping, got {type(inference).__name__}")
    extra = {k: v for k, v in state.items() if k not in WEIGHTS_KEYS}
    return WeightsFile(model.to(device).eval(), model_cfg, list(classes), inference, extra)


# ModelConfig fields added after the first release, with the values older files implicitly had.
_NEW_MODEL_FIELDS = {f.name: f.default for f in dataclasses.fields(ModelConfig)
                     if f.default is not dataclasses.MISSING}


def _check_shapes(path: str | os.PathLike, expected: dict[str, Tensor], found: dict[str, Tensor]) -> None:
    """Names and shapes of the file's tensors against the (meta-device) model's; names the first mismatch."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: state_dict does not fit the model its config describes "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: state_dict does not fit the model its config describes ({name}: "
                                  f"file has {tuple(found[name].shape)}, config needs {tuple(tensor.shape)})")


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


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# The one place bytes reach the disk, so a test can make it fail (e.g. with ENOSPC) without touching os.write.
_write = os.write


class _Sink:
    """A write-only file object over a raw fd for torch.save, keeping the first OSError a write raised."""

    def __init__(self, fd: int) -> None:
        self.fd, self.written, self.error = fd, 0, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                n = _write(self.fd, view)
                self.written += n
                view = view[n:]
        except OSError as err:
            self.error = err
            raise
        return len(data) if not isinstance(data, memoryview) else data.nbytes

    def flush(self) -> None:
        pass
