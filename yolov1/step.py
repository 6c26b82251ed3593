"""One optimizer step: the param groups (weight decay, backbone learning rate), a micro-batch's forward and
backward with gradient accumulation, clipping, and the batch arithmetic that ties them to ``train.batch_size``.

Used by `yolov1.train`'s loop and by benchmarks/bench_train.py.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from yolov1.config import TrainConfig

__all__ = ["backward_micro_batch", "build_optimizer", "micro_batch_size", "optimizer_step", "training_step"]

LOSS_KEYS = ("total", "coord", "obj", "noobj", "class")


def micro_batch_size(batch_size: int, world_size: int, grad_accumulation: int) -> int:
    """Images per rank per forward pass: ``batch_size / (world_size x grad_accumulation)``, which must divide
    exactly (a ValueError naming the keys otherwise). batch_size is the global batch of one optimizer step."""
    if grad_accumulation < 1:
        raise ValueError(f"train.grad_accumulation: must be >= 1, got {grad_accumulation}")
    parts = world_size * grad_accumulation
    if batch_size % parts:
        raise ValueError(f"train.batch_size: {batch_size} is not divisible by {world_size} process(es) x "
                         f"train.grad_accumulation {grad_accumulation} (= {parts}); batch_size is the global "
                         f"batch of one optimizer step")
    return batch_size // parts


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (paper) or AdamW, at ``cfg.lr``. Weight decay applies to conv/linear weights only.

    Tensors with >= 2 dims (conv and linear weights) get ``cfg.weight_decay``; biases and BatchNorm
    scales/shifts get none. That is what Darknet does (it decays ``l.weights`` only), and decaying BN scales
    would only fight the normalisation. A model with a ``.backbone`` submodule gets its backbone in groups of
    their own at ``lr x cfg.backbone_lr_multiplier``; the schedule scales every group by the same factor, so the
    ratio holds all run. Group order: [decay, no_decay] (the rest of the model: the head), then [backbone decay,
    backbone no_decay] when there is a backbone; each group has a "name". Every parameter is included, frozen or
    not: a parameter without a gradient (frozen) is skipped by the optimizer's step, momentum and decay alike.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        backbone = None
        for key, default in (("backbone_lr_multiplier", 1.0), ("freeze_backbone_epochs", 0)):
            if getattr(cfg, key) != default:
                raise ValueError(f"train.{key}: {getattr(cfg, key)} needs a model with a .backbone submodule; "
                                 f"{type(model).__name__} has none")
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    rest = [p for p in model.parameters() if id(p) not in in_backbone]
    groups = _decay_groups(rest, cfg, 1.0, "")
    if backbone is not None:
        groups += _decay_groups(list(backbone.parameters()), cfg, cfg.backbone_lr_multiplier, "backbone_")
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"train.optimizer: expected 'sgd' or 'adamw', got {cfg.optimizer!r}")


def _decay_groups(params: list[nn.Parameter], cfg: TrainConfig, multiplier: float, prefix: str) -> list[dict]:
    common = {"lr": cfg.lr * multiplier, "lr_multiplier": multiplier}
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay,
             "name": f"{prefix}decay", **common},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "name": f"{prefix}no_decay",
             **common}]


def backward_micro_batch(model: nn.Module, loss_fn: nn.Module, images: Tensor, targets: Tensor, *,
                         scale: float = 1.0, autocast_dtype: torch.dtype | None = None) -> Tensor:
    """Forward, loss and backward of one micro-batch, adding ``scale x`` its gradient to the ``.grad``s.

    images (N, 3, H, W) float [0, 1]; targets (N, S, S, 5 + C) in the layout of `yolov1.encode`. Returns the
    detached, unscaled (5,) float32 loss parts [total, coord, obj, noobj, class] without syncing the device.
    The forward runs under autocast when `autocast_dtype` is set; the loss is computed in float32 either way.
    """
    autocast = nullcontext() if autocast_dtype is None else torch.autocast(images.device.type, dtype=autocast_dtype)
    with autocast:
        predictions = model(images)  # (N, S, S, 5B + C)
    parts = loss_fn(predictions, targets)
    (parts["total"] * scale if scale != 1.0 else parts["total"]).backward()
    return torch.stack([parts[k].detach().float() for k in LOSS_KEYS])


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip_norm: float = 0.0) -> Tensor:
    """Clip (when ``grad_clip_norm > 0``) and step; returns the pre-clip gradient norm as a 0-dim float32
    tensor (0 when clipping is off), without syncing the device."""
    if grad_clip_norm > 0:
        grads = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(grads, grad_clip_norm)
    else:
        grad_norm = torch.zeros((), device=next(model.parameters()).device)
    optimizer.step()
    return grad_norm.detach().float()


def training_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
                  targets: Tensor, *, autocast_dtype: torch.dtype | None = None,
                  grad_clip_norm: float = 0.0) -> Tensor:
    """One optimizer step on one batch (no accumulation); returns the detached (6,) float32 tensor [total,
    coord, obj, noobj, class, grad_norm] (grad_norm 0 when clipping is off) without synchronising the device.

    images (N, 3, H, W) float [0, 1]; targets (N, S, S, 5 + C). See `backward_micro_batch`.
    """
    optimizer.zero_grad(set_to_none=True)
    parts = backward_micro_batch(model, loss_fn, images, targets, autocast_dtype=autocast_dtype)
    return torch.cat([parts, optimizer_step(model, optimizer, grad_clip_norm).reshape(1)])
