"""The checkpoints of one training run: ``last.pt`` (the full resumable state) and ``best.pt`` (the weights with
the best validation metric, in the `yolov1.checkpoint.load_weights` layout), written from rank 0 by background
threads, and the params hash that decides whether a last.pt may be resumed.

`yolov1.train` builds the state; this module names the files, hashes, writes, compares and reloads it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from yolov1.checkpoint import (
    AsyncCheckpointWriter,
    load_checkpoint,
    params_hash,
    remove_stale_temp_files,
    snapshot,
)
from yolov1.config import ModelConfig, TrainConfig

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "ResumeError", "RunCheckpoints", "run_hash"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
# TrainConfig keys that change how fast or where a run goes, or what it reports, but not the weights it
# produces: a checkpoint stays resumable when only these change.
_NOT_HASHED = ("device", "channels_last", "compile", "num_workers", "deterministic", "resume", "checkpoint_dir",
               "log_every", "val_every", "val_images", "gpus", "checkpoint_every")


class ResumeError(RuntimeError):
    """The checkpoint in checkpoint_dir belongs to a run with different params."""


def run_hash(model_cfg: ModelConfig, train_cfg: TrainConfig, dataset_len: int, extra: dict[str, Any] | None) -> str:
    """The params hash a resumable checkpoint must match: model config, train config minus the bookkeeping keys
    in `_NOT_HASHED`, the dataset length and `extra` (whatever else the caller says the weights depend on)."""
    hashed = {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in _NOT_HASHED}
    return params_hash({"model": model_cfg, "train": hashed, "dataset_len": dataset_len, "extra": extra or {}})


class RunCheckpoints:
    """last.pt and best.pt in `directory`, with one background writer each.

    Only rank 0 calls the save methods; a save snapshots the state to the CPU (the part on the training path)
    and waits for the previous write of the same file. `wait` joins both writers and raises the first error.
    `best` is ``{"metric", "value", "epoch"}`` of best.pt (None until validation gave the metric once); last.pt
    records it so that a resumed run keeps comparing against it.
    """

    def __init__(self, directory: Path, *, params_hash: str, model_cfg: ModelConfig,
                 classes: Sequence[str] | None, best_metric: str, rank: int) -> None:
        self.last_path, self.best_path = directory / CHECKPOINT_NAME, directory / BEST_NAME
        self.hash, self.model_cfg, self.best_metric = params_hash, model_cfg, best_metric
        self.classes = list(classes) if classes is not None else [str(i) for i in range(model_cfg.num_classes)]
        self.best: dict[str, Any] | None = None
        self.writers = {CHECKPOINT_NAME: AsyncCheckpointWriter(), BEST_NAME: AsyncCheckpointWriter()}
        if rank == 0:
            remove_stale_temp_files(self.last_path)
            remove_stale_temp_files(self.best_path)

    def save_last(self, state: dict[str, Any]) -> None:
        """Write last.pt in the background: `state` (model, optimizer, scheduler, counters, rng, ...) plus the
        format, params hash, model config and best-so-far."""
        state = snapshot({"format": 1, "params_hash": self.hash, "model_config": dataclasses.asdict(self.model_cfg),
                          **state, "best": dict(self.best) if self.best is not None else None})
        self.writers[CHECKPOINT_NAME].submit(self.last_path, state)

    def note_best(self, val: dict[str, float], epoch: int) -> bool:
        """Record validation's `best_metric` of `epoch`; True when it beats the best so far (then save_best)."""
        value = val.get(self.best_metric)
        if value is None:
            if self.best is None:
                logger.warning("validation gave no %r (keys %s): best.pt is not written", self.best_metric,
                               sorted(val))
            return False
        if not math.isfinite(value) or (self.best is not None and value <= self.best["value"]):
            return False
        self.best = {"metric": self.best_metric, "value": float(value), "epoch": epoch}
        return True

    def save_best(self, model: nn.Module, *, epoch: int, steps: int) -> None:
        """Write best.pt in the background, in the `load_weights` layout (state_dict, model_config, classes)."""
        state = snapshot({"state_dict": model.state_dict(), "model_config": dataclasses.asdict(self.model_cfg),
                          "classes": self.classes, "epoch": epoch, "steps": steps, "params_hash": self.hash,
                          "best": dict(self.best)})
        self.writers[BEST_NAME].submit(self.best_path, state)
        logger.info("new best %s %.4f at epoch %d -> %s", self.best["metric"], self.best["value"], epoch,
                    self.best_path)

    def best_result(self) -> dict[str, Any] | None:
        """``{"metric", "value", "epoch", "path"}`` of best.pt, or None when it was never written."""
        return {**self.best, "path": self.best_path} if self.best is not None else None

    def wait(self) -> None:
        """Wait for every background write; raises the first write error (after waiting for all of them)."""
        errors = []
        for writer in self.writers.values():
            try:
                writer.wait()
            except BaseException as err:  # noqa: BLE001  (re-raised below, after the other writers finish)
                errors.append(err)
        if errors:
            raise errors[0]

    def load_last(self, resume: str) -> dict[str, Any] | None:
        """last.pt's state to resume from, or None (``resume: never`` or no file). `ResumeError` when it was
        written with other params. Restores `best` from it."""
        path = self.last_path
        if resume == "never" or not path.is_file():
            return None
        state = load_checkpoint(path)
        if state.get("params_hash") != self.hash:
            raise ResumeError(f"checkpoint {path} was written with different params (hash "
                              f"{str(state.get('params_hash'))[:12]}, now {self.hash[:12]}): delete it or set "
                              f"train.resume: never")
        self.best = dict(state["best"]) if state.get("best") else None
        return state

    def rank_rng(self, state: dict[str, Any], rank: int, world: int) -> dict[str, Tensor]:
        """This rank's RNG state from a loaded last.pt (rank 0's, with a warning, when the world size changed)."""
        ranks = state["rng"]
        if len(ranks) == world:
            return ranks[rank]
        logger.warning("checkpoint %s was written by %d process(es), resuming with %d: not bit-exact",
                       self.last_path, len(ranks), world)
        return ranks[0]
