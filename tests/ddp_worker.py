"""A tiny stand-in detector, dataset and configs for the training tests, and the worker script they launch.

Run as a script it trains the stand-in with `yolov1.train.train` and writes the final state_dict (and the
epoch metrics) to ``<out>/rank<R>.pt``. The tests launch it as a plain subprocess (exact resume after a real
SIGKILL: ``--kill-after-step``) and under ``python -m torch.distributed.run --nproc-per-node=2`` (DDP on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import yolov1 from this checkout

from yolov1.checkpoint import save_checkpoint  # noqa: E402
from yolov1.config import LossConfig, ModelConfig, TrainConfig  # noqa: E402

INPUT = 8  # pixels; the stand-in has stride 4, so S = 2
MODEL_CFG = ModelConfig(variant="fast", input_size=INPUT, grid_size=2, boxes_per_cell=2, num_classes=3,
                        batch_norm=True, width_multiplier=1.0, head="conv", head_hidden=0, dropout=0.5)


def train_config(**changes) -> TrainConfig:
    """12 steps: 16 images, batch 4 -> 4 steps per epoch x 3 epochs; everything checkpointable on CPU."""
    cfg = TrainConfig(
        seed=0, device="cpu", epochs=3, batch_size=4, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
        schedule="step", warmup_fraction=0.25, warmup_start_factor=0.1, milestones=(0.5, 0.75), gamma=0.1,
        grad_clip_norm=10.0, precision="fp32", channels_last=False, compile=False, num_workers=0,
        deterministic=False, resume="auto", checkpoint_dir="unused", log_every=1, val_every=0, val_images=0,
        loss=LossConfig(lambda_coord=5.0, lambda_noobj=0.5, confidence_target="iou"),
    )
    return dataclasses.replace(cfg, **changes)


class TinyNet(nn.Module):
    """(N, 3, 8, 8) -> (N, 2, 2, 5B + C): conv/2, BN (when cfg.batch_norm), leaky, dropout, conv/2."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        out = 5 * cfg.boxes_per_cell + cfg.num_classes
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=not cfg.batch_norm)
        self.norm = nn.BatchNorm2d(8) if cfg.batch_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(8, out, 3, stride=2, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.drop(nn.functional.leaky_relu(self.norm(self.conv1(images)), 0.1))
        return self.conv2(x).permute(0, 2, 3, 1)  # (N, S, S, 5B + C)


class TinyBackboneNet(nn.Module):
    """TinyNet's layers as ``.backbone`` (conv/2, BN, leaky) and ``.head`` (dropout, conv/2), the two submodules
    every detector of the project has: for the backbone freeze / LR multiplier tests."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        out = 5 * cfg.boxes_per_cell + cfg.num_classes
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                      nn.LeakyReLU(0.1))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Conv2d(8, out, 3, stride=2, padding=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)).permute(0, 2, 3, 1)  # (N, S, S, 5B + C)


class NoisyDataset(Dataset):
    """`n` random images with one object each; `noise` adds torch.rand jitter per access (an "augmentation"
    drawing from the global torch RNG, so exact resume must restore that stream too)."""

    def __init__(self, n: int = 16, cfg: ModelConfig = MODEL_CFG, noise: float = 0.05, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        s, c = cfg.grid_size, cfg.num_classes
        self.images = torch.rand(n, 3, cfg.input_size, cfg.input_size, generator=g)
        self.targets = torch.zeros(n, s, s, 5 + c)
        for k in range(n):
            i, j = torch.randint(0, s, (2,), generator=g).tolist()
            self.targets[k, i, j, :4] = 0.1 + 0.8 * torch.rand(4, generator=g)  # x, y cell-relative; w, h
            self.targets[k, i, j, 4] = 1.0
            self.targets[k, i, j, 5 + k % c] = 1.0
        self.noise = noise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int):
        image = self.images[k]
        if self.noise:
            image = (image + self.noise * torch.rand(image.shape)).clamp(0, 1)
        return image, self.targets[k]


class _KillAt:
    """Callbacks (rank 0) that send this process `sig` after step `step`."""

    def __init__(self, step: int | None, sig: int) -> None:
        self.step, self.sig = step, sig

    def on_step(self, step: int, metrics: dict) -> None:
        if step == self.step:
            os.kill(os.getpid(), self.sig)  # SIGKILL: a hard crash right after this step's checkpoint

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the stand-in net; write the final state_dict")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--kill-after-step", type=int, default=None)
    parser.add_argument("--kill-with", choices=["SIGKILL", "SIGTERM"], default="SIGKILL")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--no-batch-norm", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # same kernels in every process, and two ranks fit two cores

    from yolov1.train import TrainingInterrupted, train

    model_cfg = dataclasses.replace(MODEL_CFG, dropout=args.dropout, batch_norm=not args.no_batch_norm)
    try:
        result = train(model_cfg, train_config(), NoisyDataset(noise=args.noise),
                       checkpoint_dir=args.checkpoint_dir, build_fn=TinyNet,
                       callbacks=_KillAt(args.kill_after_step, getattr(signal, args.kill_with)),
                       checkpoint_every_steps=args.checkpoint_every)
    except TrainingInterrupted as err:
        print(err, file=sys.stderr)
        return 3
    rank = int(os.environ.get("RANK", "0"))
    save_checkpoint(args.out / f"rank{rank}.pt", {"state_dict": result.model.state_dict(), "steps": result.steps,
                                                   "metrics": result.final_metrics})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
