"""The training loader: a resumable sampler (DistributedSampler's shuffled shard for an epoch, started part-way
in) under a DataLoader seeded per rank.

A mid-epoch resume must feed the exact batches the interrupted run would have seen next, so the order is a pure
function of (seed, epoch, rank, world size) and a resume only skips the indices already consumed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["PREFETCH_FACTOR", "ResumableSampler", "train_loader"]

PREFETCH_FACTOR = 4  # batches each loader worker keeps ready (README: the shared memory this takes)


class ResumableSampler(Sampler[int]):
    """DistributedSampler's order for an epoch (a permutation seeded with seed + epoch, sharded rank::world, the
    tail dropped so ranks get equal shares), cut to the first `limit` indices and minus the first `skip`.

    `limit` (default: the whole shard) lets the training loop drop a partial optimizer step at the end of an
    epoch (fewer than ``micro_batch x grad_accumulation`` samples left), so the DataLoader never yields batches
    that would be thrown away. One process is ``rank=0, world=1``.
    """

    def __init__(self, dataset: Dataset, *, rank: int, world: int, seed: int, limit: int | None = None) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.shard_size = self.inner.num_samples  # per rank, whole epoch
        self.num_samples = self.shard_size if limit is None else min(limit, self.shard_size)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Start `epoch` (0-based) after its first `skip` indices (a resume mid-epoch)."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip {skip} is outside [0, {self.num_samples}]")
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:self.num_samples])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def train_loader(dataset: Dataset, sampler: ResumableSampler, *, micro_batch: int, num_workers: int, seed: int,
                 rank: int, pin_memory: bool, collate_fn: Callable | None = None,
                 worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """The DataLoader of one rank: `micro_batch` samples per batch in `sampler`'s order, persistent workers that
    keep `PREFETCH_FACTOR` batches each in flight (so ``micro_batch x 3 x H x W`` uint8 bytes x workers x 4 of
    shared memory), incomplete batches dropped.

    The loader's own generator (seeded with seed and rank) seeds the worker processes, so starting an epoch
    never draws from the global RNG (which a resume restores), and each rank's augmentation stream differs.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    return DataLoader(dataset, batch_size=micro_batch, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=True, generator=generator,
                      worker_init_fn=worker_init_fn, persistent_workers=num_workers > 0,
                      prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None)
