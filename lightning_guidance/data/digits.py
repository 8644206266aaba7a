"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the default image data, no download needed."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .base import InMemoryDataset, LabeledDataModule

DIGITS_MAX_VALUE = 16.0  # pixel values are integers 0..16


class DigitsDataModule(LabeledDataModule):
    """x (B, 1, 8, 8) float32 in [-1, 1] (``v / 8 - 1``), y (B,) int64; stratified split seeded by ``seed``.

    ``test_dataloader`` returns the validation split (the dataset is too small for a third one).

    Args:
        batch_size: samples per batch and process (>= 1).
        val_fraction: the share of the 1,797 images held out for validation and test, in (0, 1).
        seed: seed of the stratified split and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    num_classes = 10
    data_shape = (1, 8, 8)

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_digits(return_X_y=True)
        x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, *self.data_shape)
        x = x * (2.0 / DIGITS_MAX_VALUE) - 1.0
        y = torch.as_tensor(labels, dtype=torch.int64)
        train_idx, val_idx = train_test_split(torch.arange(len(y)).numpy(), test_size=self.val_fraction,
                                              stratify=labels, random_state=self.seed)
        self.train_set = InMemoryDataset(x[train_idx], y[train_idx])
        self.val_set = InMemoryDataset(x[val_idx], y[val_idx])
