"""The training loop: SGD (or AdamW) on the YOLOv1 loss with the paper's per-step LR schedule, gradient
accumulation, backbone freezing and LR multiplier, background checkpoints (last and best), exact resume, SIGTERM
handling, a non-finite-loss guard and DistributedDataParallel (see `yolov1.distributed` for the launch).

Progress goes to a `TrainCallbacks` object the caller supplies (rank 0 only); the library holds no tracking
client and only logs. Steps and epochs are counted 1-based in callbacks, messages and checkpoints ("step 3" is
the third optimizer step; a checkpoint at step 3 holds the state after it).

Batch rule: ``train.batch_size`` is the global batch of ONE optimizer step (the paper's 64, to which its
learning rate refers), whatever the number of processes. Each rank runs micro-batches of
``batch_size / (world_size x grad_accumulation)`` images (`micro_batch_size`), ``grad_accumulation`` of them per
step; DDP averages the ranks' gradients, so every step follows the gradient of the mean loss over the global
batch. Only BatchNorm sees the micro-batch (unless ``sync_batch_norm`` pools its statistics across ranks).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from yolov1.checkpoint import (
    AsyncCheckpointWriter,
    load_checkpoint,
    params_hash,
    remove_stale_temp_files,
    set_rng_state,
    snapshot,
)
from yolov1.config import ModelConfig, TrainConfig
from yolov1.data import images_to_float
from yolov1.distributed import (
    DistInfo,
    agree,
    barrier,
    check_replicas_agree,
    gather_rng,
    init_distributed,
    maybe_sync_batch_norm,
    resolve_device,
)
from yolov1.loss import YoloLoss
from yolov1.model import build_model
from yolov1.sampler import ResumableSampler
from yolov1.schedule import build_scheduler
from yolov1.step import LOSS_KEYS as _LOSS_KEYS
from yolov1.step import backward_micro_batch, build_optimizer, micro_batch_size, optimizer_step, training_step

__all__ = [
    "BEST_NAME", "CHECKPOINT_NAME", "NonFiniteLossError", "ResumeError", "TrainCallbacks", "TrainResult",
    "TrainingInterrupted", "build_optimizer", "micro_batch_size", "resolve_device", "train", "training_step",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
# TrainConfig keys that change how fast or where a run goes, or what it reports, but not the weights it
# produces: a checkpoint stays resumable when only these change.
_NOT_HASHED = ("device", "channels_last", "compile", "num_workers", "deterministic", "resume", "checkpoint_dir",
               "log_every", "val_every", "val_images", "gpus", "checkpoint_every")


class TrainCallbacks(Protocol):
    """What `train` reports to (rank 0 only). Metric values are floats."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Every ``train.log_every`` steps: loss/loss_<part> (means since the last call), lr, images_per_s."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch: epoch means of the losses, lr, images_per_s, and val_<key> from `val_fn`."""


class ResumeError(RuntimeError):
    """The checkpoint in checkpoint_dir belongs to a run with different params."""


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; the last good checkpoint on disk was left untouched."""

    def __init__(self, message: str, *, step: int, epoch: int, components: dict[str, float]) -> None:
        super().__init__(message)
        self.step, self.epoch, self.components = step, epoch, components


class TrainingInterrupted(RuntimeError):
    """SIGTERM arrived: a checkpoint was saved at a step boundary; rerun with ``resume: auto`` to continue."""

    def __init__(self, message: str, *, step: int, checkpoint: Path) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    """The trained model (unwrapped: no DDP / compile wrapper, on the training device) and a summary."""

    model: nn.Module
    steps: int  # optimizer steps done in total (including those before a resume)
    epochs: int  # epochs completed
    final_metrics: dict[str, float]  # the last on_epoch_end metrics
    wall_time_s: float  # this call only
    images_per_second: float  # this call only, all ranks together
    resumed_from_step: int  # 0 for a fresh run
    params_hash: str
    checkpoint: Path
    best: dict[str, Any] | None = None  # {"path", "metric", "value", "epoch"} when best.pt was written

    @property
    def final_loss(self) -> float | None:
        return self.final_metrics.get("loss")


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, dataset: Dataset, *,
          checkpoint_dir: str | os.PathLike | None = None, callbacks: TrainCallbacks | None = None,
          val_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
          collate_fn: Callable | None = None, worker_init_fn: Callable[[int], None] | None = None,
          build_fn: Callable[[ModelConfig], nn.Module] | None = None,
          checkpoint_every_steps: int = 0, hash_extra: dict[str, Any] | None = None,
          device: str | torch.device | None = None, num_classes: int | None = None,
          classes: Sequence[str] | None = None, best_metric: str = "map_voc07") -> TrainResult:
    """Train a fresh (or resumed) model on `dataset` for ``train_cfg.epochs`` epochs.

    `dataset` yields (image (3, H, W), target (S, S, 5 + C)); images are uint8 in [0, 255] (the cheap form to
    pass through loader workers' shared memory; made float [0, 1] on the device) or float in [0, 1]. A step
    takes ``train_cfg.batch_size`` images in total (the batch rule in the module docstring); the samples that
    make no full step at the end of an epoch are dropped. The model is ``build_fn(model_cfg)`` (default
    `yolov1.model.build_model`), initialised under ``torch.manual_seed(train_cfg.seed)``; the loss is
    `YoloLoss(train_cfg.loss)`.

    Checkpoints: ``checkpoint_dir / "last.pt"`` (default ``train_cfg.checkpoint_dir``) every
    ``checkpoint_every`` epochs and after the last one, every `checkpoint_every_steps` steps (0: off) and on
    SIGTERM (then `TrainingInterrupted` is raised). Rank 0 copies the state to the CPU and a background thread
    writes it; a save waits for the previous write of that file, and `train` returns only once every write is
    done. ``best.pt`` (a `yolov1.checkpoint.load_weights` file: state_dict, model_config, `classes` or "0".."C-1",
    plus the epoch and the metric) is written whenever validation's `best_metric` beats the best so far.
    With ``resume: auto`` an existing last.pt is resumed from its exact step when its params hash (model
    config, train config minus bookkeeping keys, dataset length, `hash_extra`) matches, else `ResumeError`. On
    CPU with ``num_workers: 0`` a resumed run ends bit-identical to an uninterrupted one. A NaN/inf loss raises
    `NonFiniteLossError` without writing a checkpoint after the bad step.

    Backbone options (models with a ``.backbone`` submodule): for the first ``freeze_backbone_epochs`` epochs
    the backbone gets no gradients (requires_grad False) and its BatchNorm layers stay in eval mode (running
    statistics frozen too); its param groups run at ``lr x backbone_lr_multiplier`` (`build_optimizer`).

    `collate_fn` / `worker_init_fn` go to the DataLoader (`yolov1.data.collate_train` / `worker_init_fn`).
    `val_fn(model, epoch)` runs on rank 0 every ``val_every`` epochs and after the last one (model in eval
    mode, torch RNG state preserved); its keys reach ``on_epoch_end`` prefixed with ``val_``.

    Under a multi-process launch (WORLD_SIZE > 1 in the environment: `yolov1.distributed.launch` or torchrun)
    it trains with DDP: NCCL on CUDA (one GPU per LOCAL_RANK), gloo on CPU; each rank takes its micro-batches
    from a `ResumableSampler` shard (seeded by seed and epoch), DDP averages gradients (synchronising only on
    the last micro-batch of a step), BatchNorm statistics stay per rank unless ``sync_batch_norm`` (CUDA).
    Callbacks, validation and checkpoint writes happen on rank 0; a checkpoint holds every rank's RNG state.
    On CUDA: bf16 autocast (``precision: auto``), channels_last, optional torch.compile, pinned memory and
    non-blocking copies. `device` overrides ``train_cfg.device``.
    """
    if num_classes is not None and num_classes != model_cfg.num_classes:
        raise ValueError(f"num_classes {num_classes} != model.num_classes {model_cfg.num_classes}")
    if classes is not None and len(classes) != model_cfg.num_classes:
        raise ValueError(f"classes: {len(classes)} names but model.num_classes is {model_cfg.num_classes}")
    build_fn = build_fn or build_model
    dist_info, dev = init_distributed(device if device is not None else train_cfg.device)
    try:
        with _deterministic(train_cfg.deterministic, dev):
            run = _Run(model_cfg, train_cfg, dataset, Path(checkpoint_dir or train_cfg.checkpoint_dir), callbacks,
                       val_fn, (collate_fn, worker_init_fn), build_fn, checkpoint_every_steps, hash_extra,
                       dist_info, dev, (list(classes) if classes is not None else None, best_metric))
            try:
                with run.sigterm_flag():
                    return run.fit()
            finally:
                run.finish_writes()
    finally:
        if dist_info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Window:
    """Per-step loss vectors since the last check, kept on the device so checking them costs one sync."""

    values: list[Tensor] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)  # (global step, epoch), 1-based
    started: float = field(default_factory=time.perf_counter)


class _Run:
    def __init__(self, model_cfg, cfg: TrainConfig, dataset, checkpoint_dir: Path, callbacks, val_fn, loader_fns,
                 build_fn, checkpoint_every_steps: int, hash_extra, dist_info: DistInfo, device: torch.device,
                 best_spec) -> None:
        self.cfg, self.model_cfg, self.dataset = cfg, model_cfg, dataset
        self.callbacks, self.val_fn = callbacks, val_fn
        self.checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
        self.best_path = checkpoint_dir / BEST_NAME
        self.classes, self.best_metric = best_spec
        self.checkpoint_every = checkpoint_every_steps
        self.dist, self.device = dist_info, device
        self.accumulation = cfg.grad_accumulation
        self.micro = micro_batch_size(cfg.batch_size, self.dist.world, self.accumulation)
        self.per_step = self.micro * self.accumulation  # samples of one rank per optimizer step
        self.hash = params_hash({"model": model_cfg, "train": _hashed(cfg), "dataset_len": len(dataset),
                                 "extra": hash_extra or {}})
        self.autocast = _autocast_dtype(cfg.precision, self.device)
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.stop_requested = False

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        model = maybe_sync_batch_norm(build_fn(model_cfg), cfg.sync_batch_norm, self.dist, self.device)
        self.model = model.to(self.device, memory_format=self.memory_format).train()
        self.optimizer = build_optimizer(self.model, cfg)  # checks the backbone options against the model
        self.frozen: bool | None = None
        self.ddp: DistributedDataParallel | None = None
        self.forward: nn.Module = self.model
        self.loss_fn = YoloLoss(cfg.loss, boxes_per_cell=model_cfg.boxes_per_cell, num_classes=model_cfg.num_classes)
        probe = ResumableSampler(dataset, rank=self.dist.rank, world=self.dist.world, seed=cfg.seed)
        self.steps_per_epoch = probe.shard_size // self.per_step
        if self.steps_per_epoch == 0:
            raise ValueError(f"dataset: {len(dataset)} images make no full batch of train.batch_size "
                             f"{cfg.batch_size} ({self.dist.world} ranks)")
        self.sampler = ResumableSampler(dataset, rank=self.dist.rank, world=self.dist.world, seed=cfg.seed,
                                        limit=self.steps_per_epoch * self.per_step)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg)
        self.loader = self._make_loader(*loader_fns)
        self.global_step = self.epoch = self.step_in_epoch = self.start_step = 0
        self.epoch_sums = torch.zeros(6, dtype=torch.float64)
        self.last_metrics: dict[str, float] = {}
        self.best: dict[str, Any] | None = None  # {"metric", "value", "epoch"} of best.pt
        self.rng = None
        self.lr = cfg.lr
        self.writers = {CHECKPOINT_NAME: AsyncCheckpointWriter(), BEST_NAME: AsyncCheckpointWriter()}
        if self.dist.rank == 0:
            remove_stale_temp_files(self.checkpoint_path)
            remove_stale_temp_files(self.best_path)

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self._restore()
        t0, images0 = time.perf_counter(), self.global_step * self.cfg.batch_size
        logger.info("training %d epochs x %d steps of %d images (%d rank%s x %d micro-batch%s of %d) on %s, "
                    "from step %d", self.cfg.epochs, self.steps_per_epoch, self.cfg.batch_size, self.dist.world,
                    "s" if self.dist.world > 1 else "", self.accumulation, "es" if self.accumulation > 1 else "",
                    self.micro, self.device, self.global_step)
        while self.epoch < self.cfg.epochs:
            self._run_epoch()
        check_replicas_agree(self.model, self.dist)
        self.finish_writes()
        wall = time.perf_counter() - t0
        done_images = self.global_step * self.cfg.batch_size - images0
        best = {**self.best, "path": self.best_path} if self.best is not None else None
        return TrainResult(model=self.model, steps=self.global_step, epochs=self.epoch,
                           final_metrics=dict(self.last_metrics), wall_time_s=wall,
                           images_per_second=done_images / wall if wall > 0 else 0.0,
                           resumed_from_step=self.start_step, params_hash=self.hash,
                           checkpoint=self.checkpoint_path, best=best)

    def _run_epoch(self) -> None:
        self._set_frozen(self.epoch < self.cfg.freeze_backbone_epochs)
        self._train_mode()
        self.sampler.set_position(self.epoch, self.step_in_epoch * self.per_step)
        if self.rng is not None:  # restored last, right before the first step, so nothing else draws from it
            set_rng_state(self.rng, self.device)
            self.rng = None
        window, epoch_start = _Window(), time.perf_counter()
        epoch_steps_before = self.step_in_epoch
        micro, parts = 0, None
        for images, targets in self.loader:
            if micro == 0:
                self.optimizer.zero_grad(set_to_none=True)
                parts = torch.zeros(5, device=self.device)
            micro += 1
            sync = micro == self.accumulation  # DDP all-reduces gradients on the last micro-batch only
            with self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext():
                parts += backward_micro_batch(self.forward, self.loss_fn, self._images(images),
                                              targets.to(self.device, non_blocking=True),
                                              scale=1.0 / self.accumulation, autocast_dtype=self.autocast)
            if not sync:
                continue
            micro = 0
            self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this step runs with (the head's)
            grad_norm = optimizer_step(self.model, self.optimizer, self.cfg.grad_clip_norm)
            self.scheduler.step()
            self.global_step += 1
            self.step_in_epoch += 1
            window.values.append(torch.cat([parts / self.accumulation, grad_norm.reshape(1)]))  # (6,)
            window.steps.append((self.global_step, self.epoch + 1))
            if self._step_boundary(window):
                window = _Window()
        seconds = time.perf_counter() - epoch_start
        self._end_epoch(seconds, self.step_in_epoch - epoch_steps_before)

    def _step_boundary(self, window: _Window) -> bool:
        """Checks, logging, step checkpoints and SIGTERM after an optimizer step; True when `window` was used."""
        epoch_end = self.step_in_epoch == self.steps_per_epoch
        log_due = self.global_step % self.cfg.log_every == 0
        save_due = self.checkpoint_every > 0 and self.global_step % self.checkpoint_every == 0
        stop = agree(self.stop_requested, self.dist)
        if not (log_due or save_due or stop or epoch_end):
            return False
        means = self._check(window)  # raises NonFiniteLossError before anything is saved
        if (save_due or stop) and not epoch_end:
            self._save()
        if log_due and self.callbacks is not None and self.dist.rank == 0:
            elapsed = time.perf_counter() - window.started
            self.callbacks.on_step(self.global_step, {**self._loss_metrics(means), **self._lrs(),
                                   "images_per_s": len(window.values) * self.cfg.batch_size / elapsed,
                                   "epoch": self.global_step / self.steps_per_epoch})
        if stop and not epoch_end:
            self._interrupt()
        return True

    def _end_epoch(self, seconds: float, steps: int) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        metrics = {**self._loss_metrics(self.epoch_sums / self.steps_per_epoch), **self._lrs(),
                   "epoch_time_s": seconds,
                   "images_per_s": steps * self.cfg.batch_size / seconds if seconds > 0 else 0.0}
        self.epoch_sums.zero_()
        self.last_metrics = metrics
        improved = False
        if self.val_fn is not None and self.cfg.val_every > 0 and self.dist.rank == 0 and (
                self.epoch % self.cfg.val_every == 0 or self.epoch == self.cfg.epochs):
            val = self._validate()
            metrics.update({f"val_{k}": v for k, v in val.items()})
            improved = self._note_best(val)
        stop = agree(self.stop_requested, self.dist)
        if self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs or stop:
            self._save()  # last.pt records the best so far, so a resumed run keeps comparing against it
        if improved:
            self._save_best()
        logger.info("epoch %d/%d (step %d): loss %.4f, lr %.3g, %.1f images/s", self.epoch, self.cfg.epochs,
                    self.global_step, metrics["loss"], metrics["lr"], metrics["images_per_s"])
        if self.callbacks is not None and self.dist.rank == 0:
            self.callbacks.on_epoch_end(self.epoch, metrics)
        barrier(self.dist)
        if stop:
            self._interrupt()

    def _lrs(self) -> dict[str, float]:
        out = {"lr": self.lr}
        backbone = [g["lr"] for g in self.optimizer.param_groups if g.get("name", "").startswith("backbone_")]
        if backbone and self.cfg.backbone_lr_multiplier != 1.0:
            out["lr_backbone"] = self.lr * self.cfg.backbone_lr_multiplier
        return out

    def _loss_metrics(self, means: Tensor) -> dict[str, float]:
        """(6,) means -> named floats; grad_norm only when clipping computes it."""
        names = ("loss", "loss_coord", "loss_obj", "loss_noobj", "loss_class", "grad_norm")
        count = 6 if self.cfg.grad_clip_norm > 0 else 5
        return {name: float(v) for name, v in zip(names[:count], means.tolist()[:count], strict=True)}

    def _images(self, images: Tensor) -> Tensor:
        """Loader images (N, 3, H, W), uint8 or float, -> float32 [0, 1] on the device (uint8 crosses the bus)."""
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images_to_float(images)

    def _validate(self) -> dict[str, float]:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # validation must not shift the training RNG stream
            self.model.eval()
            try:
                return dict(self.val_fn(self.model, self.epoch))
            finally:
                self._train_mode()

    # -- backbone freezing ----------------------------------------------------------------------------------
    def _set_frozen(self, frozen: bool) -> None:
        """(Un)freeze the backbone, and (re)build the DDP / compile wrappers: DDP registers only the parameters
        that require grad when it is built, so a change of the frozen set needs a new wrapper."""
        if frozen == self.frozen:
            return
        backbone = getattr(self.model, "backbone", None)
        if backbone is not None and self.cfg.freeze_backbone_epochs > 0:
            for p in backbone.parameters():
                p.requires_grad_(not frozen)
            logger.info("backbone %s at epoch %d", "frozen" if frozen else "trainable", self.epoch + 1)
        first, self.frozen = self.frozen is None, frozen
        self.forward = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True)
            self.forward = self.ddp
        if self.cfg.compile and self.device.type == "cuda":
            self.forward = torch.compile(self.forward)
        elif self.cfg.compile and first:
            logger.warning("train.compile is only used on CUDA; training uncompiled on %s", self.device)

    def _train_mode(self) -> None:
        """Training mode, except a frozen backbone's BatchNorm layers: eval (running statistics fixed)."""
        self.model.train()
        if self.frozen and self.cfg.freeze_backbone_epochs > 0:
            for module in self.model.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    # -- checks ---------------------------------------------------------------------------------------------
    def _check(self, window: _Window) -> Tensor:
        """Sync once: the window's per-step losses; raise if any is not finite; return the means (6,)."""
        values = torch.stack(window.values).double().cpu()  # (steps, 6)
        finite = torch.isfinite(values).all(dim=1)  # (steps,)
        bad = len(window.steps) if bool(finite.all()) else int((~finite).nonzero()[0])
        first_bad = window.steps[bad][0] if bad < len(window.steps) else self.total_steps + 1
        sums = values.sum(dim=0)
        if self.dist.enabled:
            flags = torch.tensor([first_bad], dtype=torch.float64)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=self.dist.control)
            dist.all_reduce(sums, group=self.dist.control)
            sums /= self.dist.world
            first_bad = int(flags.item())
        if first_bad <= self.total_steps:
            self._raise_non_finite(first_bad, window, values)
        self.epoch_sums += sums
        return sums / len(window.values)

    def _raise_non_finite(self, step: int, window: _Window, values: Tensor) -> None:
        row = [i for i, (s, _) in enumerate(window.steps) if s == step][0]
        epoch = window.steps[row][1]
        parts = {k: float(v) for k, v in zip((*_LOSS_KEYS, "grad_norm"), values[row].tolist(), strict=True)}
        shown = " ".join(f"{k}={v:.4g}" for k, v in parts.items())
        self.finish_writes()  # a write still in flight is a good state: let it land before reporting
        kept = (f"last good checkpoint {self.checkpoint_path} left untouched" if self.checkpoint_path.is_file()
                else "no checkpoint was written")
        raise NonFiniteLossError(f"non-finite loss at step {step} (epoch {epoch}): {shown}; {kept}",
                                 step=step, epoch=epoch, components=parts)

    def _interrupt(self) -> None:
        self.finish_writes()
        barrier(self.dist)  # no rank exits before rank 0's checkpoint is on disk
        message = (f"SIGTERM: stopped after step {self.global_step}; checkpoint saved to "
                   f"{self.checkpoint_path}; run again with train.resume: auto to continue")
        logger.warning(message)
        raise TrainingInterrupted(message, step=self.global_step, checkpoint=self.checkpoint_path)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _save(self) -> None:
        """last.pt: rank 0 snapshots the state to the CPU (the only part on the training path) and hands it to
        the background writer, which first waits for the previous write of last.pt."""
        rng = gather_rng(self.dist, self.device)  # collective: every rank takes part
        if self.dist.rank != 0:
            return
        state = snapshot({
            "format": 1, "params_hash": self.hash, "model_config": dataclasses.asdict(self.model_cfg),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "global_step": self.global_step, "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch, "rng": rng, "metrics": dict(self.last_metrics),
            "epoch_sums": self.epoch_sums, "best": dict(self.best) if self.best is not None else None,
        })
        self.writers[CHECKPOINT_NAME].submit(self.checkpoint_path, state)

    def _note_best(self, val: dict[str, float]) -> bool:
        value = val.get(self.best_metric)
        if value is None:
            if self.best is None:
                logger.warning("validation gave no %r (keys %s): best.pt is not written", self.best_metric,
                               sorted(val))
            return False
        if not math.isfinite(value) or (self.best is not None and value <= self.best["value"]):
            return False
        self.best = {"metric": self.best_metric, "value": float(value), "epoch": self.epoch}
        return True

    def _save_best(self) -> None:
        """best.pt in the `load_weights` format (rank 0 only; called from rank 0's validation result)."""
        classes = self.classes or [str(i) for i in range(self.model_cfg.num_classes)]
        state = snapshot({"state_dict": self.model.state_dict(),
                          "model_config": dataclasses.asdict(self.model_cfg), "classes": classes,
                          "epoch": self.epoch, "steps": self.global_step, "params_hash": self.hash,
                          "best": dict(self.best)})
        self.writers[BEST_NAME].submit(self.best_path, state)
        logger.info("new best %s %.4f at epoch %d -> %s", self.best["metric"], self.best["value"], self.epoch,
                    self.best_path)

    def finish_writes(self) -> None:
        """Wait for every background write; raises the first write error (after waiting for all of them)."""
        errors = []
        for writer in self.writers.values():
            try:
                writer.wait()
            except BaseException as err:  # noqa: BLE001  (re-raised below, after the other writers finish)
                errors.append(err)
        if errors:
            raise errors[0]

    def _restore(self) -> None:
        path = self.checkpoint_path
        if self.cfg.resume == "never" or not path.is_file():
            torch.manual_seed(self.cfg.seed + self.dist.rank)  # each rank its own dropout stream
            return
        state = load_checkpoint(path)
        if state.get("params_hash") != self.hash:
            raise ResumeError(f"checkpoint {path} was written with different params (hash "
                              f"{str(state.get('params_hash'))[:12]}, now {self.hash[:12]}): delete it or set "
                              f"train.resume: never")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = self.start_step = int(state["global_step"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.last_metrics = dict(state["metrics"])
        self.epoch_sums = state["epoch_sums"].clone()
        self.best = dict(state["best"]) if state.get("best") else None
        ranks = state["rng"]
        if len(ranks) != self.dist.world:
            logger.warning("checkpoint %s was written by %d process(es), resuming with %d: not bit-exact", path,
                           len(ranks), self.dist.world)
        self.rng = ranks[self.dist.rank] if len(ranks) == self.dist.world else ranks[0]
        if self.epoch >= self.cfg.epochs:
            set_rng_state(self.rng, self.device)
        logger.info("resumed from %s at step %d (epoch %d, step %d of it)", path, self.global_step,
                    self.epoch + 1, self.step_in_epoch)

    # -- plumbing -------------------------------------------------------------------------------------------
    def _make_loader(self, collate_fn, worker_init_fn) -> DataLoader:
        workers = self.cfg.num_workers
        cuda = self.device.type == "cuda"
        # The loader's own generator seeds the worker processes, so starting an epoch never draws from the
        # global RNG (which a resume restores); the rank makes each rank's augmentation stream differ.
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.dist.rank)
        return DataLoader(self.dataset, batch_size=self.micro, sampler=self.sampler, num_workers=workers,
                          collate_fn=collate_fn, pin_memory=cuda, drop_last=True, generator=generator,
                          worker_init_fn=worker_init_fn, persistent_workers=workers > 0,
                          prefetch_factor=PREFETCH_FACTOR if workers > 0 else None)

    @contextmanager
    def sigterm_flag(self):
        """SIGTERM sets a flag that the loop acts on at the next step boundary; the old handler comes back."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("train() not on the main thread: SIGTERM will not be turned into a checkpoint")
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):  # no logging here: a signal handler must not take the logging lock
            self.stop_requested = True

        signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


PREFETCH_FACTOR = 4  # batches each loader worker keeps ready (README: the shared memory this takes)


@contextmanager
def _deterministic(enabled: bool, device: torch.device):
    """Deterministic algorithms for the run when asked, else cuDNN autotuning (fixed input size); restored."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not enabled
    torch.backends.cudnn.deterministic = enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision in ("fp32", "auto"):
        return None
    raise ValueError(f"train.precision: expected 'auto', 'fp32' or 'bf16', got {precision!r}")


def _hashed(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_HASHED}
