"""The training loop: SGD (or AdamW) on the YOLOv1 loss with the paper's per-step LR schedule, gradient
accumulation, backbone freezing and LR multiplier, an optional weight EMA, background checkpoints (last and
best), exact resume, SIGTERM handling, a non-finite-loss guard and DistributedDataParallel (see
`yolov1.distributed` for the launch).

The parts live in their own modules: `yolov1.step` (one optimizer step), `yolov1.run_checkpoints` (last.pt /
best.pt), `yolov1.sampler` (the loader), `yolov1.freeze`, `yolov1.ema`, `yolov1.loss_window` (the non-finite
guard), `yolov1.runtime` (SIGTERM, determinism) and `yolov1.distributed`; this module runs the loop over them.

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

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from yolov1.checkpoint import set_rng_state
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
    wrap_ddp,
)
from yolov1.ema import ModelEMA
from yolov1.freeze import set_backbone_frozen, train_mode
from yolov1.loss import YoloLoss
from yolov1.loss_window import LossWindow, NonFiniteLossError, loss_metrics
from yolov1.model import build_model
from yolov1.run_checkpoints import BEST_NAME, CHECKPOINT_NAME, ResumeError, RunCheckpoints, run_hash
from yolov1.runtime import StopFlag, autocast_dtype, deterministic, sigterm_flag
from yolov1.sampler import PREFETCH_FACTOR, ResumableSampler, train_loader
from yolov1.schedule import build_scheduler
from yolov1.step import backward_micro_batch, build_optimizer, micro_batch_size, optimizer_step, training_step

__all__ = [
    "BEST_NAME", "CHECKPOINT_NAME", "PREFETCH_FACTOR", "NonFiniteLossError", "ResumeError", "TrainCallbacks",
    "TrainResult", "TrainingInterrupted", "build_optimizer", "micro_batch_size", "resolve_device", "train",
    "training_step",
]

logger = logging.getLogger(__name__)


class TrainCallbacks(Protocol):
    """What `train` reports to (rank 0 only). Metric values are floats."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Every ``train.log_every`` steps: loss/loss_<part> (means since the last call), lr, images_per_s."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch: epoch means of the losses, lr, images_per_s, and val_<key> from `val_fn`."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM arrived: a checkpoint was saved at a step boundary; rerun with ``resume: auto`` to continue."""

    def __init__(self, message: str, *, step: int, checkpoint: Path) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    """The trained model (unwrapped: no DDP / compile wrapper, on the training device; the EMA weights when
    ``train.ema_decay`` > 0) and a summary."""

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

    Backbone options (models with a ``.backbone`` submodule): frozen for the first ``freeze_backbone_epochs``
    epochs (`yolov1.freeze`); its param groups run at ``lr x backbone_lr_multiplier`` (`build_optimizer`).

    ``ema_decay`` > 0: an exponential moving average of the weights (`yolov1.ema.ModelEMA`) follows every
    optimizer step; validation, best.pt and the returned model use it, last.pt carries it for exact resume.

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
        with deterministic(train_cfg.deterministic, dev):
            run = _Run(model_cfg, train_cfg, dataset, Path(checkpoint_dir or train_cfg.checkpoint_dir), callbacks,
                       val_fn, (collate_fn, worker_init_fn), build_fn, checkpoint_every_steps, hash_extra,
                       dist_info, dev, (list(classes) if classes is not None else None, best_metric))
            try:
                with sigterm_flag(run.stop):
                    return run.fit()
            finally:
                run.checkpoints.wait()
    finally:
        if dist_info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _Run:
    """One call of `train`: the model, optimizer, schedule and loader of this rank, and the loop over them."""

    def __init__(self, model_cfg, cfg: TrainConfig, dataset, checkpoint_dir: Path, callbacks, val_fn, loader_fns,
                 build_fn, checkpoint_every_steps: int, hash_extra, dist_info: DistInfo, device: torch.device,
                 best_spec) -> None:
        self.cfg, self.callbacks, self.val_fn = cfg, callbacks, val_fn
        self.checkpoint_every = checkpoint_every_steps
        self.dist, self.device = dist_info, device
        self.accumulation = cfg.grad_accumulation
        self.micro = micro_batch_size(cfg.batch_size, self.dist.world, self.accumulation)
        self.per_step = self.micro * self.accumulation  # samples of one rank per optimizer step
        self.hash = run_hash(model_cfg, cfg, len(dataset), hash_extra)
        classes, best_metric = best_spec
        self.checkpoints = RunCheckpoints(checkpoint_dir, params_hash=self.hash, model_cfg=model_cfg,
                                          classes=classes, best_metric=best_metric, rank=self.dist.rank)
        self.autocast = autocast_dtype(cfg.precision, self.device)
        channels_last = cfg.channels_last and self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.stop = StopFlag()

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        model = maybe_sync_batch_norm(build_fn(model_cfg), cfg.sync_batch_norm, self.dist, self.device)
        self.model = model.to(self.device, memory_format=self.memory_format).train()
        self.optimizer = build_optimizer(self.model, cfg)  # checks the backbone options against the model
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.frozen: bool | None = None
        self.ddp = None
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
        collate_fn, worker_init_fn = loader_fns
        self.loader = train_loader(dataset, self.sampler, micro_batch=self.micro, num_workers=cfg.num_workers,
                                   seed=cfg.seed, rank=self.dist.rank, pin_memory=self.device.type == "cuda",
                                   collate_fn=collate_fn, worker_init_fn=worker_init_fn)
        self.global_step = self.epoch = self.step_in_epoch = self.start_step = 0
        self.epoch_sums = torch.zeros(6, dtype=torch.float64)
        self.last_metrics: dict[str, float] = {}
        self.rng = None
        self.lr = cfg.lr

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
        self.checkpoints.wait()
        wall = time.perf_counter() - t0
        done_images = self.global_step * self.cfg.batch_size - images0
        return TrainResult(model=self._kept(), steps=self.global_step, epochs=self.epoch,
                           final_metrics=dict(self.last_metrics), wall_time_s=wall,
                           images_per_second=done_images / wall if wall > 0 else 0.0,
                           resumed_from_step=self.start_step, params_hash=self.hash,
                           checkpoint=self.checkpoints.last_path, best=self.checkpoints.best_result())

    def _run_epoch(self) -> None:
        self._set_frozen(self.epoch < self.cfg.freeze_backbone_epochs)
        self._train_mode()
        self.sampler.set_position(self.epoch, self.step_in_epoch * self.per_step)
        if self.rng is not None:  # restored last, right before the first step, so nothing else draws from it
            set_rng_state(self.rng, self.device)
            self.rng = None
        window, epoch_start = LossWindow(), time.perf_counter()
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
            if self.ema is not None:
                self.ema.update(self.model)
            self.global_step += 1
            self.step_in_epoch += 1
            window.add(torch.cat([parts / self.accumulation, grad_norm.reshape(1)]), self.global_step,
                       self.epoch + 1)  # (6,)
            if self._step_boundary(window):
                window = LossWindow()
        seconds = time.perf_counter() - epoch_start
        self._end_epoch(seconds, self.step_in_epoch - epoch_steps_before)

    def _step_boundary(self, window: LossWindow) -> bool:
        """Checks, logging, step checkpoints and SIGTERM after an optimizer step; True when `window` was used."""
        epoch_end = self.step_in_epoch == self.steps_per_epoch
        log_due = self.global_step % self.cfg.log_every == 0
        save_due = self.checkpoint_every > 0 and self.global_step % self.checkpoint_every == 0
        stop = agree(self.stop.requested, self.dist)
        if not (log_due or save_due or stop or epoch_end):
            return False
        means = self._check(window)  # raises NonFiniteLossError before anything is saved
        if (save_due or stop) and not epoch_end:
            self._save()
        if log_due and self.callbacks is not None and self.dist.rank == 0:
            elapsed = time.perf_counter() - window.started
            self.callbacks.on_step(self.global_step, {
                **loss_metrics(means, self.cfg.grad_clip_norm > 0), **self._lrs(),
                "images_per_s": len(window.values) * self.cfg.batch_size / elapsed,
                "epoch": self.global_step / self.steps_per_epoch})
        if stop and not epoch_end:
            self._interrupt()
        return True

    def _end_epoch(self, seconds: float, steps: int) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        means = self.epoch_sums / self.steps_per_epoch
        metrics = {**loss_metrics(means, self.cfg.grad_clip_norm > 0), **self._lrs(), "epoch_time_s": seconds,
                   "images_per_s": steps * self.cfg.batch_size / seconds if seconds > 0 else 0.0}
        self.epoch_sums.zero_()
        self.last_metrics = metrics
        improved = False
        if self.val_fn is not None and self.cfg.val_every > 0 and self.dist.rank == 0 and (
                self.epoch % self.cfg.val_every == 0 or self.epoch == self.cfg.epochs):
            val = self._validate()
            metrics.update({f"val_{k}": v for k, v in val.items()})
            improved = self.checkpoints.note_best(val, self.epoch)
        stop = agree(self.stop.requested, self.dist)
        if self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs or stop:
            self._save()  # last.pt records the best so far, so a resumed run keeps comparing against it
        if improved:
            self.checkpoints.save_best(self._kept(), epoch=self.epoch, steps=self.global_step)
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

    def _kept(self) -> nn.Module:
        """The weights that are validated, saved as best.pt and returned: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _images(self, images: Tensor) -> Tensor:
        """Loader images (N, 3, H, W), uint8 or float, -> float32 [0, 1] on the device (uint8 crosses the bus)."""
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images_to_float(images)

    def _validate(self) -> dict[str, float]:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # validation must not shift the training RNG stream
            self.model.eval()
            try:
                return dict(self.val_fn(self._kept(), self.epoch))
            finally:
                self._train_mode()

    def _set_frozen(self, frozen: bool) -> None:
        """(Un)freeze the backbone (`yolov1.freeze`) and (re)build the DDP / compile wrappers, which a change of
        the set of trainable parameters invalidates."""
        if frozen == self.frozen:
            return
        if self.cfg.freeze_backbone_epochs > 0 and set_backbone_frozen(self.model, frozen):
            logger.info("backbone %s at epoch %d", "frozen" if frozen else "trainable", self.epoch + 1)
        first, self.frozen = self.frozen is None, frozen
        self.ddp = wrap_ddp(self.model, self.dist, self.device)
        self.forward = self.ddp if self.ddp is not None else self.model
        if self.cfg.compile and self.device.type == "cuda":
            self.forward = torch.compile(self.forward)
        elif self.cfg.compile and first:
            logger.warning("train.compile is only used on CUDA; training uncompiled on %s", self.device)

    def _train_mode(self) -> None:  # a frozen backbone's BatchNorm layers stay in eval mode
        train_mode(self.model, frozen_backbone=bool(self.frozen) and self.cfg.freeze_backbone_epochs > 0)

    def _check(self, window: LossWindow) -> Tensor:
        """Sync once: raise if any of the window's steps (on any rank) is not finite; return the means (6,)."""
        values, sums, bad_step = window.reduce(self.dist, self.total_steps)
        if bad_step is not None:
            self.checkpoints.wait()  # a write still in flight is a good state: let it land before reporting
            path = self.checkpoints.last_path
            kept = f"last good checkpoint {path} left untouched" if path.is_file() else "no checkpoint was written"
            raise window.error(bad_step, values, kept)
        self.epoch_sums += sums
        return sums / len(window.values)

    def _interrupt(self) -> None:
        self.checkpoints.wait()
        barrier(self.dist)  # no rank exits before rank 0's checkpoint is on disk
        path = self.checkpoints.last_path
        message = (f"SIGTERM: stopped after step {self.global_step}; checkpoint saved to {path}; run again with "
                   f"train.resume: auto to continue")
        logger.warning(message)
        raise TrainingInterrupted(message, step=self.global_step, checkpoint=path)

    def _save(self) -> None:
        """last.pt: every rank hands in its RNG state; rank 0 snapshots and writes in the background."""
        rng = gather_rng(self.dist, self.device)  # collective: every rank takes part
        if self.dist.rank == 0:
            self.checkpoints.save_last({
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "global_step": self.global_step, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "rng": rng, "metrics": dict(self.last_metrics),
                "epoch_sums": self.epoch_sums, **({"ema": self.ema.state_dict()} if self.ema is not None else {})})

    def _restore(self) -> None:
        state = self.checkpoints.load_last(self.cfg.resume)
        if state is None:
            torch.manual_seed(self.cfg.seed + self.dist.rank)  # each rank its own dropout stream
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:  # train.ema_decay is in the params hash: a resumed run with EMA saved it
            self.ema.load_state_dict(state["ema"])
        self.global_step = self.start_step = int(state["global_step"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.last_metrics = dict(state["metrics"])
        self.epoch_sums = state["epoch_sums"].clone()
        self.rng = self.checkpoints.rank_rng(state, self.dist.rank, self.dist.world)
        if self.epoch >= self.cfg.epochs:
            set_rng_state(self.rng, self.device)
        logger.info("resumed from %s at step %d (epoch %d, step %d of it)", self.checkpoints.last_path,
                    self.global_step, self.epoch + 1, self.step_in_epoch)
