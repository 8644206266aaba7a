"""Which samples a rank evaluates, with no padded duplicate ever entering a metric.

Two sources of samples, two rules:

- Sample ids we choose (generated samples ``0..N-1``): rank ``r`` of ``W`` owns the contiguous block
  ``[floor(r N / W), floor((r + 1) N / W))``; blocks are disjoint and cover every id once, and each is non-empty
  when ``N >= W`` (metrics with concatenated states need every rank to update at least once).
- Batches from Lightning's evaluation loaders: under DDP Lightning uses ``DistributedSampler``, which pads the
  index list with repeats so that every rank gets the same number of items. Rank ``r``'s ``p``-th item sits at
  position ``p W + r`` of the padded list, and it is a repeat exactly when that position is ``>= len(dataset)``
  (whether or not the sampler shuffles). :class:`LoaderBatchIds` turns ``(batch_idx, batch length)`` into the
  dataset indices of a batch and a mask that drops the repeats.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler


def owned_block(num_items: int, rank: int, world_size: int) -> range:
    """The contiguous block of ids ``0..num_items-1`` that ``rank`` of ``world_size`` owns (see module doc)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} of world size {world_size}")
    return range(num_items * rank // world_size, num_items * (rank + 1) // world_size)


def check_enough_per_rank(num_items: int, world_size: int, what: str) -> None:
    """Every rank must own at least one item (concatenated metric states are gathered from every rank)."""
    if num_items < world_size:
        raise ValueError(f"{what}: {num_items} samples cannot be split over {world_size} processes (each must "
                         f"evaluate at least one); use at least {world_size} samples or fewer devices")


def _loader_of(trainer, dataloader_idx: int):
    loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        return loaders[dataloader_idx]
    if isinstance(loaders, dict):
        return list(loaders.values())[dataloader_idx]
    return loaders


class LoaderBatchIds:
    """Dataset indices of the items of a validation/test batch, and which of them are not padded repeats.

    ``ids, keep = batch_ids(trainer, batch_idx, len(batch))``. The loader must batch a plain sampler with a fixed
    batch size (what ``LabeledDataModule`` and Lightning's distributed wrapping give). The sampler's order is read
    once per loader pass; call :meth:`reset` at the start of each epoch.
    """

    def __init__(self):
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def reset(self) -> None:
        self._cache.clear()

    @staticmethod
    def _order(loader) -> tuple[Tensor, Tensor]:
        batch_sampler = getattr(loader, "batch_sampler", None)
        if type(batch_sampler) is not BatchSampler or loader.batch_size is None or batch_sampler.drop_last:
            raise ValueError("evaluation needs a DataLoader with a fixed batch_size over a plain sampler (no custom "
                             "batch sampler, drop_last=False) to know which sample each batch holds")
        sampler = loader.sampler
        inner = getattr(sampler, "sampler", None)  # Lightning's DistributedSamplerWrapper keeps the wrapped one
        if isinstance(sampler, RandomSampler) or isinstance(inner, RandomSampler):
            raise TypeError("evaluation loaders must not shuffle with a RandomSampler (the order cannot be replayed)")
        ids = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        if isinstance(sampler, DistributedSampler):
            position = torch.arange(len(ids)) * sampler.num_replicas + sampler.rank
            keep = position < len(sampler.dataset)
        else:
            keep = torch.ones(len(ids), dtype=torch.bool)
        return ids, keep

    def __call__(self, trainer, batch_idx: int, batch_len: int, dataloader_idx: int = 0) -> tuple[Tensor, Tensor]:
        if dataloader_idx not in self._cache:
            self._cache[dataloader_idx] = self._order(_loader_of(trainer, dataloader_idx))
        ids, keep = self._cache[dataloader_idx]
        start = batch_idx * _loader_of(trainer, dataloader_idx).batch_size
        if start + batch_len > len(ids):
            raise RuntimeError(f"batch {batch_idx} of {batch_len} items runs past the loader's {len(ids)} items")
        return ids[start:start + batch_len], keep[start:start + batch_len]
