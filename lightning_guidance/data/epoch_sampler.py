"""A shuffling sampler whose order depends only on (seed, epoch) and that resumes mid-epoch, also under DDP.

Lightning does not checkpoint RNG or sampler states, and it builds (and prefetches from) the first iterator of a
resumed run before it calls ``set_epoch``. So the order is decided lazily, at the first index drawn, from the
trainer's own progress counters: the epoch, and how many batches of it this rank already trained (skipped on a
resume). Without a trainer (plain use) the ``set_epoch`` value is used and nothing is skipped.
Under DDP the sampler splits the order itself, as torch's DistributedSampler does (pad to a multiple of the world
size, rank r takes items r, r + W, ...), and skips this rank's trained batches; being a DistributedSampler, Lightning
does not wrap it (its wrapper would split an order that the skip has already shortened).
So with per-rank batch b, step k's batches of all W ranks together are items [kWb, (k+1)Wb) of the one order: the batch
one process with batch Wb trains on, rank r holding its rows r, r + W, ... (the rows whose random draws it keeps,
``diffusion.noise.GlobalBatchDraws``). If ``num_items`` is not a multiple of W, the padding repeats the order's first
items in the epoch's last global batch: only then does a W-process epoch differ from the one-process epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    def __init__(self, num_items: int, seed: int = 0, batch_size: int = 1,
                 position: Callable[[], tuple[int, int] | None] | None = None, num_replicas: int = 1, rank: int = 0):
        if num_items < 1:
            raise ValueError(f"cannot shuffle an empty dataset (num_items={num_items})")
        super().__init__(range(num_items), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_items, self.seed, self.batch_size = num_items, seed, batch_size
        self.position = position

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self):
        where = self.position() if self.position is not None else None
        epoch, done_batches = where if where is not None else (self.epoch, 0)
        if done_batches >= self.batches_per_epoch:  # resumed at the end of this epoch: nothing left to train in it
            return
        order = self.order(epoch)
        order += order[: self.total_size - len(order)]  # pad to a multiple of the world size, as DistributedSampler
        mine = order[self.rank:self.total_size:self.num_replicas]
        yield from mine[done_batches * self.batch_size:]


def trainer_position(datamodule) -> tuple[int, int] | None:
    """(epoch, batches of it this rank already trained) from a datamodule's trainer, or None outside fit."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None or not trainer.training:
        return None
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


class ResumableDataLoader(DataLoader):
    """The train DataLoader, stateful for Lightning: its position is (epoch, batches of it this rank trained), which
    the trainer's own progress counters restore; the :class:`EpochShuffleSampler` skips those batches. Lightning
    saves ``state_dict()`` in the checkpoint and so knows the resume is exact (no "not resumable" warning)."""

    def state_dict(self) -> dict:
        sampler = self.sampler
        where = sampler.position() if isinstance(sampler, EpochShuffleSampler) and sampler.position else None
        epoch, done = where if where is not None else (getattr(sampler, "epoch", 0), 0)
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        self.restored_position = (int(state.get("epoch", 0)), int(state.get("batches_done", 0)))
