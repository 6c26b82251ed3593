"""The resumable training sampler: DistributedSampler's shuffled shard for an epoch, started part-way in.

A mid-epoch resume must feed the exact batches the interrupted run would have seen next, so the order is a pure
function of (seed, epoch, rank, world size) and a resume only skips the indices already consumed.
"""

from __future__ import annotations

from torch.utils.data import Dataset, DistributedSampler, Sampler

__all__ = ["ResumableSampler"]


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
