"""The training loop: SGD (or AdamW) on the YOLOv1 loss with the paper's per-step LR schedule, checkpointing,
exact resume, SIGTERM handling, a non-finite-loss guard and DistributedDataParallel under ``torchrun``.

Progress goes to a `TrainCallbacks` object the caller supplies (rank 0 only); the library holds no tracking
client and only logs. Steps and epochs are counted 1-based in callbacks, messages and checkpoints ("step 3" is
the third optimizer step; a checkpoint at step 3 holds the state after it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from yolov1.checkpoint import get_rng_state, load_checkpoint, params_hash, save_checkpoint, set_rng_state
from yolov1.config import ModelConfig, TrainConfig
from yolov1.loss import YoloLoss
from yolov1.model import build_model
from yolov1.schedule import build_scheduler

__all__ = [
    "CHECKPOINT_NAME", "NonFiniteLossError", "ResumeError", "TrainCallbacks", "TrainResult", "TrainingInterrupted",
    "build_optimizer", "resolve_device", "train", "training_step",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
# TrainConfig keys that change how fast or where a run goes, or what it reports, but not the weights it
# produces: a checkpoint stays resumable when only these change.
_NOT_HASHED = ("device", "channels_last", "compile", "num_workers", "deterministic", "resume", "checkpoint_dir",
               "log_every", "val_every", "val_images")
_LOSS_KEYS = ("total", "coord", "obj", "noobj", "class")


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

    @property
    def final_loss(self) -> float | None:
        return self.final_metrics.get("loss")


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when present else CPU; ``"cuda"`` without a GPU is an error naming train.device."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name!r} but no CUDA device is available")
    return torch.device(name)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (paper) or AdamW, at ``cfg.lr``. Weight decay applies to conv/linear weights only.

    Two param groups: tensors with >= 2 dims (conv and linear weights) get ``cfg.weight_decay``; biases and
    BatchNorm scales/shifts get none. That is what Darknet does (it decays ``l.weights`` only), and decaying BN
    scales would only fight the normalisation.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"train.optimizer: expected 'sgd' or 'adamw', got {cfg.optimizer!r}")


def training_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
                  targets: Tensor, *, autocast_dtype: torch.dtype | None = None,
                  grad_clip_norm: float = 0.0) -> Tensor:
    """One optimizer step on a batch; returns the detached (6,) float32 tensor [total, coord, obj, noobj,
    class, grad_norm] (grad_norm 0 when clipping is off) without synchronising the device.

    images (N, 3, H, W) float [0, 1]; targets (N, S, S, 5 + C) in the layout of `yolov1.encode`. The forward
    runs under autocast when `autocast_dtype` is set; the loss is computed in float32 either way.
    """
    autocast = nullcontext() if autocast_dtype is None else torch.autocast(images.device.type, dtype=autocast_dtype)
    with autocast:
        predictions = model(images)  # (N, S, S, 5B + C)
    parts = loss_fn(predictions, targets)
    optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    if grad_clip_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    else:
        grad_norm = parts["total"].new_zeros(())
    optimizer.step()
    return torch.stack([parts[k].detach().float() for k in _LOSS_KEYS] + [grad_norm.detach().float()])


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, dataset: Dataset, *,
          checkpoint_dir: str | os.PathLike | None = None, callbacks: TrainCallbacks | None = None,
          val_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
          collate_fn: Callable | None = None, worker_init_fn: Callable[[int], None] | None = None,
          build_fn: Callable[[ModelConfig], nn.Module] | None = None,
          checkpoint_every_steps: int = 0, hash_extra: dict[str, Any] | None = None,
          device: str | torch.device | None = None, num_classes: int | None = None) -> TrainResult:
    """Train a fresh (or resumed) model on `dataset` for ``train_cfg.epochs`` epochs.

    `dataset` yields (image (3, H, W) float32 in [0, 1], target (S, S, 5 + C)); batches are
    ``train_cfg.batch_size`` images in total (split evenly across DDP ranks), the last partial batch of an
    epoch is dropped. The model is ``build_fn(model_cfg)`` (default `yolov1.model.build_model`), initialised
    under ``torch.manual_seed(train_cfg.seed)``; the loss is `YoloLoss(train_cfg.loss)`.

    Checkpoints go to ``checkpoint_dir / "last.pt"`` (default ``train_cfg.checkpoint_dir``) after every epoch,
    every `checkpoint_every_steps` steps (0: off) and on SIGTERM (then `TrainingInterrupted` is raised). With
    ``resume: auto`` an existing checkpoint is resumed from its exact step when its params hash (model config,
    train config minus bookkeeping keys, dataset length, `hash_extra`) matches, else `ResumeError`. On CPU with
    ``num_workers: 0`` a resumed run ends bit-identical to an uninterrupted one. A NaN/inf loss raises
    `NonFiniteLossError` without writing a checkpoint after the bad step.

    `collate_fn` / `worker_init_fn` go to the DataLoader (`yolov1.data.collate_train` / `worker_init_fn`).
    `val_fn(model, epoch)` runs on rank 0 every ``val_every`` epochs and after the last one (model in eval
    mode, torch RNG state preserved); its keys reach ``on_epoch_end`` prefixed with ``val_``.

    Under ``torchrun`` (WORLD_SIZE > 1 in the environment) it trains with DDP: NCCL on CUDA (one GPU per
    LOCAL_RANK), gloo on CPU; each rank takes ``batch_size / world_size`` images of a DistributedSampler shard
    (seeded by seed and epoch), gradients are averaged by DDP, BatchNorm statistics stay per rank. Callbacks,
    validation and checkpoint writes happen on rank 0 (the others wait at a barrier); a checkpoint holds every
    rank's RNG state. On CUDA: bf16 autocast (``precision: auto``), channels_last, optional torch.compile,
    pinned memory and non-blocking copies. `device` overrides ``train_cfg.device``.
    """
    if num_classes is not None and num_classes != model_cfg.num_classes:
        raise ValueError(f"num_classes {num_classes} != model.num_classes {model_cfg.num_classes}")
    build_fn = build_fn or build_model
    dist_info, dev = _init_distributed(device if device is not None else train_cfg.device)
    try:
        with _deterministic(train_cfg.deterministic, dev):
            run = _Run(model_cfg, train_cfg, dataset, Path(checkpoint_dir or train_cfg.checkpoint_dir), callbacks,
                       val_fn, (collate_fn, worker_init_fn), build_fn, checkpoint_every_steps, hash_extra,
                       dist_info, dev)
            with run.sigterm_flag():
                return run.fit()
    finally:
        if dist_info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owns_group: bool = False
    control: Any = None  # a gloo group for small CPU collectives (flags, loss sums), also under NCCL

    @property
    def enabled(self) -> bool:
        return self.world > 1


@dataclass
class _Window:
    """Per-step loss vectors since the last check, kept on the device so checking them costs one sync."""

    values: list[Tensor] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)  # (global step, epoch), 1-based
    started: float = field(default_factory=time.perf_counter)


class _Run:
    def __init__(self, model_cfg, cfg: TrainConfig, dataset, checkpoint_dir: Path, callbacks, val_fn, loader_fns,
                 build_fn, checkpoint_every_steps: int, hash_extra, dist_info: _Dist, device: torch.device) -> None:
        self.cfg, self.model_cfg, self.dataset = cfg, model_cfg, dataset
        self.callbacks, self.val_fn = callbacks, val_fn
        self.checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
        self.checkpoint_every = checkpoint_every_steps
        self.dist, self.device = dist_info, device
        if cfg.batch_size % self.dist.world:
            raise ValueError(f"train.batch_size: {cfg.batch_size} is not divisible by the {self.dist.world} ranks")
        self.batch = cfg.batch_size // self.dist.world
        self.hash = params_hash({"model": model_cfg, "train": _hashed(cfg), "dataset_len": len(dataset),
                                 "extra": hash_extra or {}})
        self.autocast = _autocast_dtype(cfg.precision, self.device)
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.stop_requested = False

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = build_fn(model_cfg).to(self.device, memory_format=memory_format).train()
        self.forward = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True)
        if cfg.compile and self.device.type == "cuda":
            self.forward = torch.compile(self.forward)
        elif cfg.compile:
            logger.warning("train.compile is only used on CUDA; training uncompiled on %s", self.device)
        self.loss_fn = YoloLoss(cfg.loss, boxes_per_cell=model_cfg.boxes_per_cell, num_classes=model_cfg.num_classes)
        self.optimizer = build_optimizer(self.model, cfg)
        self.sampler = _ResumableSampler(dataset, self.dist, cfg.seed)
        self.steps_per_epoch = self.sampler.num_samples // self.batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"dataset: {len(dataset)} images make no full batch of train.batch_size "
                             f"{cfg.batch_size} ({self.dist.world} ranks)")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg)
        self.loader = self._make_loader(*loader_fns)
        self.global_step = self.epoch = self.step_in_epoch = self.start_step = 0
        self.epoch_sums = torch.zeros(6, dtype=torch.float64)
        self.last_metrics: dict[str, float] = {}
        self.rng = None
        self.lr = cfg.lr

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self._restore()
        t0, images0 = time.perf_counter(), self.global_step * self.cfg.batch_size
        logger.info("training %d epochs x %d steps of %d images on %s (%d rank%s), from step %d", self.cfg.epochs,
                    self.steps_per_epoch, self.cfg.batch_size, self.device, self.dist.world,
                    "s" if self.dist.world > 1 else "", self.global_step)
        while self.epoch < self.cfg.epochs:
            self._run_epoch()
        wall = time.perf_counter() - t0
        done_images = self.global_step * self.cfg.batch_size - images0
        return TrainResult(model=self.model, steps=self.global_step, epochs=self.epoch,
                           final_metrics=dict(self.last_metrics), wall_time_s=wall,
                           images_per_second=done_images / wall if wall > 0 else 0.0,
                           resumed_from_step=self.start_step, params_hash=self.hash,
                           checkpoint=self.checkpoint_path)

    def _run_epoch(self) -> None:
        self.sampler.set_position(self.epoch, self.step_in_epoch * self.batch)
        if self.rng is not None:  # restored last, right before the first step, so nothing else draws from it
            set_rng_state(self.rng, self.device)
            self.rng = None
        window, epoch_start = _Window(), time.perf_counter()
        epoch_steps_before = self.step_in_epoch
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        for images, targets in self.loader:
            images = images.to(self.device, non_blocking=True, memory_format=memory_format)
            targets = targets.to(self.device, non_blocking=True)
            self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this step runs with
            values = training_step(self.forward, self.loss_fn, self.optimizer, images, targets,
                                   autocast_dtype=self.autocast, grad_clip_norm=self.cfg.grad_clip_norm)
            self.scheduler.step()
            self.global_step += 1
            self.step_in_epoch += 1
            window.values.append(values)
            window.steps.append((self.global_step, self.epoch + 1))
            epoch_end = self.step_in_epoch == self.steps_per_epoch
            log_due = self.global_step % self.cfg.log_every == 0
            save_due = self.checkpoint_every > 0 and self.global_step % self.checkpoint_every == 0
            stop = self._agree(self.stop_requested)
            if not (log_due or save_due or stop or epoch_end):
                continue
            means = self._check(window)  # raises NonFiniteLossError before anything is saved
            if (save_due or stop) and not epoch_end:
                self._save()
            if log_due and self.callbacks is not None and self.dist.rank == 0:
                elapsed = time.perf_counter() - window.started
                self.callbacks.on_step(self.global_step, {**self._loss_metrics(means), "lr": self.lr,
                                       "images_per_s": len(window.values) * self.cfg.batch_size / elapsed,
                                       "epoch": self.global_step / self.steps_per_epoch})
            window = _Window()
            if stop and not epoch_end:
                self._interrupt()
        seconds = time.perf_counter() - epoch_start
        self._end_epoch(seconds, self.step_in_epoch - epoch_steps_before)

    def _end_epoch(self, seconds: float, steps: int) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        metrics = {**self._loss_metrics(self.epoch_sums / self.steps_per_epoch),
                   "lr": self.lr, "epoch_time_s": seconds,
                   "images_per_s": steps * self.cfg.batch_size / seconds if seconds > 0 else 0.0}
        self.epoch_sums.zero_()
        self.last_metrics = metrics
        self._save()
        if self.val_fn is not None and self.cfg.val_every > 0 and self.dist.rank == 0 and (
                self.epoch % self.cfg.val_every == 0 or self.epoch == self.cfg.epochs):
            metrics.update({f"val_{k}": v for k, v in self._validate().items()})
        logger.info("epoch %d/%d (step %d): loss %.4f, lr %.3g, %.1f images/s", self.epoch, self.cfg.epochs,
                    self.global_step, metrics["loss"], metrics["lr"], metrics["images_per_s"])
        if self.callbacks is not None and self.dist.rank == 0:
            self.callbacks.on_epoch_end(self.epoch, metrics)
        self._barrier()
        if self._agree(self.stop_requested):
            self._interrupt()

    def _loss_metrics(self, means: Tensor) -> dict[str, float]:
        """(6,) means -> named floats; grad_norm only when clipping computes it."""
        names = ("loss", "loss_coord", "loss_obj", "loss_noobj", "loss_class", "grad_norm")
        count = 6 if self.cfg.grad_clip_norm > 0 else 5
        return {name: float(v) for name, v in zip(names[:count], means.tolist()[:count], strict=True)}

    def _validate(self) -> dict[str, float]:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # validation must not shift the training RNG stream
            self.model.eval()
            try:
                return dict(self.val_fn(self.model, self.epoch))
            finally:
                self.model.train()

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
        kept = (f"last good checkpoint {self.checkpoint_path} left untouched" if self.checkpoint_path.is_file()
                else "no checkpoint was written")
        raise NonFiniteLossError(f"non-finite loss at step {step} (epoch {epoch}): {shown}; {kept}",
                                 step=step, epoch=epoch, components=parts)

    def _interrupt(self) -> None:
        message = (f"SIGTERM: stopped after step {self.global_step}; checkpoint saved to "
                   f"{self.checkpoint_path}; run again with train.resume: auto to continue")
        logger.warning(message)
        raise TrainingInterrupted(message, step=self.global_step, checkpoint=self.checkpoint_path)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _save(self) -> None:
        rng = self._gather_rng()
        if self.dist.rank == 0:
            save_checkpoint(self.checkpoint_path, {
                "format": 1, "params_hash": self.hash, "model_config": dataclasses.asdict(self.model_cfg),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "global_step": self.global_step, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "rng": rng, "metrics": dict(self.last_metrics),
                "epoch_sums": self.epoch_sums.clone(),
            })
        self._barrier()  # no rank runs ahead (or exits on SIGTERM) while rank 0 is still writing

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
        ranks = state["rng"]
        self.rng = ranks[self.dist.rank] if len(ranks) == self.dist.world else ranks[0]
        if self.epoch >= self.cfg.epochs:
            set_rng_state(self.rng, self.device)
        logger.info("resumed from %s at step %d (epoch %d, step %d of it)", path, self.global_step,
                    self.epoch + 1, self.step_in_epoch)

    def _gather_rng(self) -> list[dict[str, Tensor]]:
        """Every rank's RNG state (rank order), so a resumed DDP run continues each rank's own stream."""
        mine = get_rng_state(self.device)
        if not self.dist.enabled:
            return [mine]
        out = []
        for key in mine:
            parts = [torch.empty_like(mine[key]) for _ in range(self.dist.world)]
            dist.all_gather(parts, mine[key], group=self.dist.control)
            out.append(parts)
        return [dict(zip(mine.keys(), states, strict=True)) for states in zip(*out, strict=True)]

    # -- plumbing -------------------------------------------------------------------------------------------
    def _make_loader(self, collate_fn, worker_init_fn) -> DataLoader:
        workers = self.cfg.num_workers
        cuda = self.device.type == "cuda"
        # The loader's own generator seeds the worker processes, so starting an epoch never draws from the
        # global RNG (which a resume restores); the rank makes each rank's augmentation stream differ.
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.dist.rank)
        return DataLoader(self.dataset, batch_size=self.batch, sampler=self.sampler, num_workers=workers,
                          collate_fn=collate_fn, pin_memory=cuda, drop_last=True, generator=generator,
                          worker_init_fn=worker_init_fn, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)

    def _agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any (one tiny gloo all-reduce per call under DDP)."""
        if not self.dist.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.dist.control)
        return bool(t.item())

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier(group=self.dist.control)

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


class _ResumableSampler(Sampler[int]):
    """DistributedSampler's order for an epoch (permutation seeded with seed + epoch, shard rank::world, the
    tail dropped so ranks get equal shares), minus the first `skip` indices: a mid-epoch resume picks up the
    exact batches the interrupted run would have seen next."""

    def __init__(self, dataset: Dataset, d: _Dist, seed: int) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.num_samples = self.inner.num_samples
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def _init_distributed(device: str | torch.device) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(device)
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    logger.info("DDP rank %d/%d on %s (%s)", rank, world, dev, dist.get_backend())
    return _Dist(rank=rank, world=world, owns_group=owns, control=control), dev


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


