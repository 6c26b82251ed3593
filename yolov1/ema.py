"""An exponential moving average (EMA) of a model's weights, the copy that validation and the saved model use.

After every optimizer step each floating-point tensor of the state dict (parameters and BatchNorm running
statistics) moves towards the live model's: ``ema = d * ema + (1 - d) * live``; integer buffers (BatchNorm's
batch counter) are copied. The decay ramps up as ``d_t = min(decay, (1 + t) / (10 + t))`` after ``t`` updates
(TensorFlow's ExponentialMovingAverage ``num_updates`` rule), so the first steps' random weights fade fast.
Averaging over the last ~1 / (1 - decay) steps smooths the noise of a short, high-learning-rate run (what
Ultralytics' ModelEMA does for every YOLO it trains); it is not in the YOLOv1 paper.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """The averaged copy of `model` (same architecture and device, eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The decay used by update number `updates` (1-based)."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards `model`'s current weights (call after each optimizer step)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        live = model.state_dict()
        for name, tensor in self.module.state_dict().items():
            if tensor.is_floating_point():
                tensor.lerp_(live[name].detach(), weight)
            else:
                tensor.copy_(live[name])

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
