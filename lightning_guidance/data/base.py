"""The one thing every datamodule of the suite shares: labelled batches ``(x, y)`` and seeded loaders."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .epoch_sampler import EpochShuffleSampler, ResumableDataLoader, trainer_position


class InMemoryDataset(TensorDataset):
    """A TensorDataset that hands the DataLoader a whole batch in one indexing op (``__getitems__``) instead of
    B single-item lookups and a stack: the per-item path cost more than the training step on toy data."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def _batched(batch):
    """collate_fn for InMemoryDataset: the batch arrives already stacked."""
    return list(batch)


class LabeledDataModule(L.LightningDataModule):
    """Base class: subclasses set ``num_classes``, ``data_shape`` and fill ``train_set`` / ``val_set`` in ``setup``.

    The train loader shuffles in an order fixed by ``(seed, epoch)`` (``EpochShuffleSampler``, so a resumed run
    sees the same batches); val/test keep order and keep the last partial batch. ``test`` uses the validation split unless a subclass sets ``test_set``.

    Args:
        batch_size: samples per batch and process (>= 1).
        seed: seed of the split and of the training order (fixed per epoch: a resume sees the same batches).
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    num_classes: int
    data_shape: tuple[int, ...]

    def __init__(self, batch_size: int, seed: int, num_workers: int):
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        return (ResumableDataLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            collate_fn=_batched if isinstance(dataset, InMemoryDataset) else None,
            sampler=EpochShuffleSampler(len(dataset), self.seed, self.batch_size, partial(trainer_position, self),
                                        **self._replicas()) if train else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def _replicas(self) -> dict[str, int]:
        """This process's share of the data under DDP (the trainer knows it by the time it asks for loaders)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set if self.test_set is not None else self.val_set, train=False)
