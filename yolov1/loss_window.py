"""The training loop's non-finite guard: per-step loss vectors kept on the device between checks, so checking a
window of steps costs one device sync (and, with several ranks, two small CPU all-reduces).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from yolov1.distributed import DistInfo
from yolov1.step import LOSS_KEYS

__all__ = ["LossWindow", "NonFiniteLossError", "loss_metrics"]

WINDOW_KEYS = (*LOSS_KEYS, "grad_norm")  # the (6,) vector of one step
METRIC_NAMES = ("loss", "loss_coord", "loss_obj", "loss_noobj", "loss_class", "grad_norm")  # as callbacks see it


def loss_metrics(means: Tensor, with_grad_norm: bool) -> dict[str, float]:
    """(6,) means of the window layout -> named floats for the callbacks; grad_norm only when clipping computes
    it (`with_grad_norm`)."""
    count = 6 if with_grad_norm else 5
    return {name: float(v) for name, v in zip(METRIC_NAMES[:count], means.tolist()[:count], strict=True)}


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; the last good checkpoint on disk was left untouched."""

    def __init__(self, message: str, *, step: int, epoch: int, components: dict[str, float]) -> None:
        super().__init__(message)
        self.step, self.epoch, self.components = step, epoch, components


@dataclass
class LossWindow:
    """Per-step (6,) vectors [total, coord, obj, noobj, class, grad_norm] since the last check, on the device."""

    values: list[Tensor] = field(default_factory=list)
    steps: list[tuple[int, int]] = field(default_factory=list)  # (global step, epoch), 1-based
    started: float = field(default_factory=time.perf_counter)

    def add(self, vector: Tensor, step: int, epoch: int) -> None:
        self.values.append(vector)
        self.steps.append((step, epoch))

    def reduce(self, d: DistInfo, total_steps: int) -> tuple[Tensor, Tensor, int | None]:
        """Sync once. Returns this rank's values (steps, 6) float64 on the CPU, the sums (6,) averaged over the
        ranks, and the first step (on any rank) whose vector is not finite, or None."""
        values = torch.stack(self.values).double().cpu()  # (steps, 6)
        finite = torch.isfinite(values).all(dim=1)  # (steps,)
        bad = len(self.steps) if bool(finite.all()) else int((~finite).nonzero()[0])
        first_bad = self.steps[bad][0] if bad < len(self.steps) else total_steps + 1
        sums = values.sum(dim=0)  # (6,)
        if d.enabled:
            flags = torch.tensor([first_bad], dtype=torch.float64)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=d.control)
            dist.all_reduce(sums, group=d.control)
            sums /= d.world
            first_bad = int(flags.item())
        return values, sums, (first_bad if first_bad <= total_steps else None)

    def error(self, step: int, values: Tensor, kept: str) -> NonFiniteLossError:
        """The error for non-finite `step` (a step of this window), showing its loss parts; `kept` says what
        became of the checkpoint."""
        row = [i for i, (s, _) in enumerate(self.steps) if s == step][0]
        epoch = self.steps[row][1]
        parts = {k: float(v) for k, v in zip(WINDOW_KEYS, values[row].tolist(), strict=True)}
        shown = " ".join(f"{k}={v:.4g}" for k, v in parts.items())
        return NonFiniteLossError(f"non-finite loss at step {step} (epoch {epoch}): {shown}; {kept}",
                                  step=step, epoch=epoch, components=parts)
