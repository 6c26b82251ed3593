"""Multi-process training plumbing: how many processes a run uses, launching them, the process group, and the
few small collectives the training loop needs (flags, RNG states) on a CPU-side gloo group.

The launcher is torch's elastic agent (what ``torchrun --standalone`` runs) started in-process, so the train
stage itself starts one process per GPU and `dvc repro`, the Prefect flow and ``make run`` all use every GPU.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from yolov1.checkpoint import get_rng_state

__all__ = ["DistInfo", "LaunchFailed", "agree", "barrier", "check_replicas_agree", "gather_rng", "init_distributed",
           "launch", "maybe_sync_batch_norm", "resolve_device", "root_failure", "world_size_for", "wrap_ddp"]

logger = logging.getLogger(__name__)


class LaunchFailed(RuntimeError):
    """One or more worker processes of a multi-process run failed; `exitcode` is the first failure's."""

    def __init__(self, message: str, exitcode: int) -> None:
        super().__init__(message)
        self.exitcode = exitcode


@dataclass
class DistInfo:
    """This process's place in the run. ``control`` is a gloo group for small CPU collectives (also under NCCL)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False
    control: Any = None

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when present else CPU; ``"cuda"`` without a GPU is an error naming train.device."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name!r} but no CUDA device is available")
    return torch.device(name)


def world_size_for(gpus: str | int, device: str | torch.device) -> int:
    """How many training processes ``train.gpus`` asks for on this machine.

    ``"auto"``: one per visible GPU when training on CUDA, else 1. An int N: N processes, one per GPU on CUDA
    (an error naming train.gpus when fewer are visible), or N gloo processes on CPU (the two-rank rehearsal).
    """
    dev = resolve_device(device)
    visible = torch.cuda.device_count() if dev.type == "cuda" else 0
    if gpus == "auto":
        return max(visible, 1)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"train.gpus: expected 'auto' or an integer >= 1, got {gpus!r}")
    if dev.type == "cuda" and gpus > visible:
        raise ValueError(f"train.gpus: {gpus} processes asked for but only {visible} CUDA device(s) are visible")
    return gpus


def launch(nprocs: int, argv: Sequence[str], *, threads_per_process: int | None = None) -> None:
    """Run ``python <argv>`` in `nprocs` processes on this machine, as ``torchrun --standalone`` would.

    Each process gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT (a c10d store on localhost, free port).
    Returns when all exit 0; raises `LaunchFailed` with the first failing rank's exit code otherwise (the
    agent stops the other ranks). No restarts: a failed run is resumed from its checkpoint by rerunning it.
    SIGTERM/SIGINT to this process are passed on to the workers (which checkpoint and exit).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:  # N processes sharing the cores: do not oversubscribe them
        threads = threads_per_process or max(1, (os.cpu_count() or 1) // nprocs)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    logger.info("launching %d training processes", nprocs)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*argv)
    except ChildFailedError as err:
        rank, exitcode = root_failure({r: f.exitcode for r, f in err.failures.items()})
        code = exitcode if exitcode not in (None, 0) else 1
        raise LaunchFailed(f"training process rank {rank} of {nprocs} failed (exit code {exitcode}); "
                           f"the others were stopped", code if code > 0 else 128 - code) from None


def root_failure(exitcodes: dict[int, int | None]) -> tuple[int, int | None]:
    """(rank, exit code) of the failure that caused the others, from every failed rank's exit code.

    When one rank fails, the agent SIGTERMs the rest, and they are reported as failed too (exit code -15); their
    timestamps have one-second resolution, so they cannot tell the order. The cause is a rank that exited with
    an error code of its own (> 0), else one killed by a signal other than SIGTERM (e.g. the OOM killer's
    SIGKILL), else any; ties go to the lowest rank.
    """
    def kind(item: tuple[int, int | None]) -> tuple[int, int]:
        rank, code = item
        return (0 if code is not None and code > 0 else 1 if code != -signal.SIGTERM else 2), rank

    return min(exitcodes.items(), key=kind)


def init_distributed(device: str | torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched with WORLD_SIZE > 1 (NCCL on CUDA, one GPU per LOCAL_RANK; gloo
    on CPU); otherwise a one-process `DistInfo`. Also returns the device this process trains on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return DistInfo(), dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    logger.info("DDP rank %d/%d on %s (%s)", rank, world, dev, dist.get_backend())
    return DistInfo(rank=rank, world=world, owns_group=owns, control=control), dev


def maybe_sync_batch_norm(model: nn.Module, enabled: bool, d: DistInfo, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers turned into SyncBatchNorm when asked and more than one process trains
    on CUDA (torch's SyncBatchNorm runs on GPUs only; on CPU the ranks keep their own statistics, logged)."""
    if not enabled or not d.enabled:
        return model
    if device.type != "cuda":
        logger.warning("train.sync_batch_norm: SyncBatchNorm needs CUDA; the %d CPU ranks keep per-rank "
                       "BatchNorm statistics", d.world)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, d: DistInfo, device: torch.device) -> DistributedDataParallel | None:
    """`model` in DistributedDataParallel when several processes train (one GPU per rank on CUDA), else None.
    DDP registers only the parameters that require grad when it is built: after (un)freezing, build a new one."""
    if not d.enabled:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def agree(flag: bool, d: DistInfo) -> bool:
    """True on every rank when it is true on any (one tiny gloo all-reduce per call with several ranks)."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.control)
    return bool(t.item())


def barrier(d: DistInfo) -> None:
    if d.enabled:
        dist.barrier(group=d.control)


def gather_rng(d: DistInfo, device: torch.device) -> list[dict[str, Tensor]]:
    """Every rank's RNG state (rank order), so a resumed DDP run continues each rank's own stream."""
    mine = get_rng_state(device)
    if not d.enabled:
        return [mine]
    out = []
    for key in mine:
        parts = [torch.empty_like(mine[key]) for _ in range(d.world)]
        dist.all_gather(parts, mine[key], group=d.control)
        out.append(parts)
    return [dict(zip(mine.keys(), states, strict=True)) for states in zip(*out, strict=True)]


def check_replicas_agree(model: nn.Module, d: DistInfo) -> None:
    """Raise when the ranks' parameters differ (DDP should keep them bit-identical): compares a float64
    checksum per parameter tensor (its sum and its sum of squares) across ranks. BatchNorm running statistics
    are buffers, per rank by design, and not compared."""
    if not d.enabled:
        return
    with torch.no_grad():
        mine = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()])
                            for p in model.parameters()]).cpu()  # (P, 2)
    everyone = [torch.empty_like(mine) for _ in range(d.world)]
    dist.all_gather(everyone, mine, group=d.control)
    differ = [r for r in range(d.world) if not torch.equal(everyone[r], everyone[0])]
    if differ:
        raise RuntimeError(f"DDP replicas diverged: the parameters of rank(s) {differ} differ from rank 0's")
    logger.info("the %d replicas hold identical parameters", d.world)
