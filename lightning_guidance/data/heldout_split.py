"""A calibration split: another datamodule's held-out (validation) split, cut in two.

Calibration must be fitted on data the classifier did not train on: a classifier that fits its training set is
calibrated there (confident and right), so fine-tuning its calibration on that set has nothing to correct — the
reason temperature scaling uses a validation set (Guo et al. 2017, §4). ``HeldOutSplit(data)`` trains on one part of
``data``'s validation split (the *calibration* part) and validates on the other (the *evaluation* part); the
classifier's training split is never used.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from .base import LabeledDataModule


class HeldOutSplit(LabeledDataModule):
    """``train`` = a random ``calibration_fraction`` of ``data``'s validation split (seeded by ``seed``), ``val`` (and
    ``test``) = the rest. ``data`` must be configured exactly as for the classifier's training, so that its
    validation split is the data the classifier never saw. ``batch_size`` defaults to ``data``'s.

    Args:
        data: the classifier's own data module, configured as for its training.
        calibration_fraction: the share of its validation split to train on, in (0, 1); the rest validates.
        seed: seed of the split and of the training order.
        batch_size: samples per batch and process (default: ``data``'s).
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(self, data: LabeledDataModule, calibration_fraction: float = 0.5, seed: int = 0,
                 batch_size: int | None = None, num_workers: int = 0):
        super().__init__(batch_size=batch_size or data.batch_size, seed=seed, num_workers=num_workers)
        if not 0.0 < calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must lie in (0, 1), got {calibration_fraction}")
        self.data = data
        self.calibration_fraction = float(calibration_fraction)
        self.num_classes = data.num_classes
        self.data_shape = tuple(data.data_shape)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.data.setup("fit")
        held_out = self.data.val_set
        if held_out is None or len(held_out) < 2:
            raise ValueError(f"{type(self.data).__name__} has no validation split to calibrate on")
        order = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(self.seed)).tolist()
        cut = min(max(1, round(self.calibration_fraction * len(order))), len(order) - 1)
        self.train_set = _subset(held_out, sorted(order[:cut]))
        self.val_set = _subset(held_out, sorted(order[cut:]))


def _subset(dataset: Dataset, indices: list[int]) -> Dataset:
    """Items ``indices`` of ``dataset``; an in-memory tensor dataset stays one (of its own class, batched loading)."""
    if isinstance(dataset, TensorDataset):
        index = torch.as_tensor(indices, dtype=torch.long)
        return type(dataset)(*(t[index] for t in dataset.tensors))
    return Subset(dataset, indices)
