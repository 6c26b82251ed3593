"""Backbone freezing for the first ``train.freeze_backbone_epochs`` epochs: the backbone's parameters get no
gradients and its BatchNorm layers stay in eval mode (running statistics frozen too). Models expose the part to
freeze as a ``.backbone`` submodule (`yolov1.model`, `yolov1.backbones`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["set_backbone_frozen", "train_mode"]


def set_backbone_frozen(model: nn.Module, frozen: bool) -> bool:
    """requires_grad False (frozen) or True on every parameter of ``model.backbone``; False (nothing done) when
    the model has no backbone submodule. The optimizer keeps the parameters: one without a gradient is skipped
    by its step (`yolov1.step.build_optimizer`)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return False
    for p in backbone.parameters():
        p.requires_grad_(not frozen)
    return True


def train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """``model.train()``, except the BatchNorm layers of a frozen backbone: eval (running statistics fixed)."""
    model.train()
    if frozen_backbone:
        for module in model.backbone.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
