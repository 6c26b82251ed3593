"""Process-wide settings a training run holds while it runs, each restored afterwards: SIGTERM turned into a
flag, deterministic algorithms vs cuDNN autotuning; and the autocast dtype ``train.precision`` asks for.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager

import torch

__all__ = ["StopFlag", "autocast_dtype", "deterministic", "sigterm_flag"]

logger = logging.getLogger(__name__)


class StopFlag:
    """Set by the SIGTERM handler; the training loop reads it at step boundaries."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def sigterm_flag(flag: StopFlag):
    """SIGTERM sets ``flag.requested`` (the loop acts on it at the next step boundary); the old handler comes
    back on exit. Off the main thread (where Python cannot install handlers) SIGTERM keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        logger.warning("train() not on the main thread: SIGTERM will not be turned into a checkpoint")
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):  # no logging here: a signal handler must not take the logging lock
        flag.requested = True

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def deterministic(enabled: bool, device: torch.device):
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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` -> the forward's autocast dtype: bf16 for "bf16", and for "auto" on CUDA; else None."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision in ("fp32", "auto"):
        return None
    raise ValueError(f"train.precision: expected 'auto', 'fp32' or 'bf16', got {precision!r}")
