"""A shuffling sampler whose order depends only on (seed, epoch) and that resumes mid-epoch.

Lightning does not checkpoint RNG or sampler states, and it builds (and prefetches from) the first iterator of a
resumed run before it calls ``set_epoch``. So the order is decided lazily, at the first index drawn, from the
trainer's own progress counters: the epoch, and how many batches of it were already trained (skipped on a
resume). Without a trainer (plain use) the ``set_epoch`` value is used and nothing is skipped.
Under DDP, Lightning wraps this sampler and splits its order by rank; the skip then counts all ranks' batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, num_items: int, seed: int = 0, batch_size: int = 1,
                 position: Callable[[], tuple[int, int] | None] | None = None):
        if num_items < 1:
            raise ValueError(f"cannot shuffle an empty dataset (num_items={num_items})")
        self.num_items, self.seed, self.batch_size, self.epoch = num_items, seed, batch_size, 0
        self.position = position

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_items / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self):
        where = self.position() if self.position is not None else None
        epoch, done_batches = where if where is not None else (self.epoch, 0)
        if done_batches >= self.batches_per_epoch:  # the checkpoint closed the epoch: start the next one whole
            done_batches = 0
        yield from self.order(epoch)[done_batches * self.batch_size:]

    def __len__(self) -> int:
        return self.num_items


def trainer_position(datamodule) -> tuple[int, int] | None:
    """(epoch, batches of it already trained by all ranks) from a datamodule's trainer, or None outside fit."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None or not trainer.training:
        return None
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return trainer.current_epoch, done * trainer.world_size
