"""DataModules for the exact toy distributions (docs/math.md §6): samples drawn once from the exact mixture."""

from __future__ import annotations

import torch

from ..toy.fractal2d import fractal_2d
from ..toy.gaussian_mixture import GaussianMixture
from ..toy.mixture1d import two_class_mixture_1d
from .base import InMemoryDataset, LabeledDataModule


class MixtureDataModule(LabeledDataModule):
    """``n_train`` then ``n_val`` joint draws ``(x, y) ~ p(x, y)`` from one generator seeded by ``seed``.

    ``.mixture`` is the exact distribution, for oracles (exact denoiser/classifier) next to the trained models.

    Args:
        mixture: the exact distribution (a lightning_guidance.toy.GaussianMixture).
        n_train: training draws (>= 1).
        n_val: validation (and test) draws (>= 1).
        batch_size: samples per batch and process (>= 1).
        seed: seed of the draws and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(self, mixture: GaussianMixture, n_train: int, n_val: int, batch_size: int, seed: int,
                 num_workers: int):
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if int(n_train) < 1 or int(n_val) < 1:
            raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
        self.mixture = mixture
        self.n_train, self.n_val = int(n_train), int(n_val)
        self.num_classes = mixture.num_classes
        self.data_shape = (mixture.dim,)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:  # drawn once; Lightning may call setup for several stages
            return
        gen = torch.Generator().manual_seed(self.seed)
        self.train_set = InMemoryDataset(*self.mixture.sample(self.n_train, generator=gen))
        self.val_set = InMemoryDataset(*self.mixture.sample(self.n_val, generator=gen))


class Mixture1DDataModule(MixtureDataModule):
    """1D two-class mixture ``N(-mu, sigma^2)`` / ``N(+mu, sigma^2)``, equal weights; x (B, 1), y (B,).

    Args:
        mu: the classes' means are -mu (class 0) and +mu (class 1); small mu entangles them.
        sigma: each class's standard deviation (> 0).
        n_train: training draws (>= 1).
        n_val: validation (and test) draws (>= 1).
        batch_size: samples per batch and process (>= 1).
        seed: seed of the draws and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(self, mu: float = 1.0, sigma: float = 0.05, n_train: int = 20000, n_val: int = 2000,
                 batch_size: int = 512, seed: int = 0, num_workers: int = 0):
        super().__init__(two_class_mixture_1d(mu=mu, sigma=sigma), n_train, n_val, batch_size, seed, num_workers)
        self.save_hyperparameters()


class Fractal2DDataModule(MixtureDataModule):
    """2D fractal of Karras et al. 2024 restricted to ``classes``; x (B, 2), y (B,), 2 class ids whatever the subset.

    Args:
        classes: which of the fractal's two classes to draw, a subset of [0, 1] (ids keep their meaning).
        n_train: training draws (>= 1).
        n_val: validation (and test) draws (>= 1).
        batch_size: samples per batch and process (>= 1).
        seed: seed of the draws and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(self, classes: tuple[int, ...] = (0, 1), n_train: int = 50000, n_val: int = 5000,
                 batch_size: int = 512, seed: int = 0, num_workers: int = 0):
        super().__init__(fractal_2d(tuple(classes)), n_train, n_val, batch_size, seed, num_workers)
        self.save_hyperparameters()
