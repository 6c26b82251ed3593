"""The learning-rate schedule as a function of training progress, so a short run keeps the paper's shape.

Paper (section 2.2): warm up "from 1e-3 to 1e-2" over the first epochs, then 1e-2 until epoch 75, 1e-3 until
epoch 105 and 1e-4 until 135. Here every boundary is a fraction of the run's optimizer steps (params.yaml:
``warmup_fraction`` 5/135, ``milestones`` 75/135 and 105/135), with a cosine alternative after the warm-up.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from yolov1.config import TrainConfig

__all__ = ["build_scheduler", "lr_at", "warmup_steps"]


def warmup_steps(total_steps: int, cfg: TrainConfig) -> int:
    """Number of warm-up steps: ``round(warmup_fraction * total_steps)`` (0 disables the warm-up)."""
    return int(round(cfg.warmup_fraction * total_steps))


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based, the step about to run) in a run of `total_steps`.

    - Warm-up, ``step < W`` with ``W = warmup_steps(total_steps, cfg)``: linear from
      ``lr * warmup_start_factor`` at step 0 towards ``lr`` (reached at step W).
    - ``schedule == "step"``: ``lr * gamma ** k`` where k counts the milestones already passed; milestone m
      is passed from step ``round(m * total_steps)`` on (rounding, so 75/135 written as 0.5555556 still lands
      exactly on epoch 75).
    - ``schedule == "cosine"``: ``lr * (1 + cos(pi * t)) / 2`` with t going from 0 at step W to 1 at
      ``total_steps`` (the rate after the last step would be 0).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps: must be > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step: must be >= 0, got {step}")
    warmup = warmup_steps(total_steps, cfg)
    if step < warmup:
        start = cfg.warmup_start_factor
        return cfg.lr * (start + (1.0 - start) * step / warmup)
    if cfg.schedule == "step":
        passed = sum(step >= round(m * total_steps) for m in cfg.milestones)
        return cfg.lr * cfg.gamma**passed
    if cfg.schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"train.schedule: expected 'step' or 'cosine', got {cfg.schedule!r}")


def build_scheduler(optimizer: Optimizer, total_steps: int, cfg: TrainConfig) -> LambdaLR:
    """A per-step `LambdaLR` following `lr_at`; call ``.step()`` after every optimizer step.

    Every param group's initial ``lr`` must be ``cfg.lr x group.get("lr_multiplier", 1)`` (the factor
    ``lr_at / cfg.lr`` scales every group alike, so a backbone group keeps its ratio to the head all run). Its
    ``state_dict`` holds only numbers (the lambda itself is not saved), so it round-trips through
    ``torch.load(weights_only=True)``; rebuild with the same arguments before ``load_state_dict``.
    """
    for i, group in enumerate(optimizer.param_groups):
        expected = cfg.lr * group.get("lr_multiplier", 1.0)
        if group["lr"] != expected:
            raise ValueError(f"optimizer param group {i}: lr {group['lr']} != train.lr {cfg.lr} x "
                             f"lr_multiplier {group.get('lr_multiplier', 1.0)}")
    return LambdaLR(optimizer, lambda step: lr_at(step, total_steps, cfg) / cfg.lr)
