"""The 1D two-class mixture of the calibration study (docs/math.md §6).

Class 0 ``N(-mu, sigma^2)``, class 1 ``N(+mu, sigma^2)``, equal weights.
"""

from __future__ import annotations

import torch

from .gaussian_mixture import GaussianMixture


def two_class_mixture_1d(mu: float = 1.0, sigma: float = 0.05) -> GaussianMixture:
    """Equal-weight classes at ``-mu`` and ``+mu`` with standard deviation ``sigma``; small ``mu`` entangles them."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    means = torch.tensor([[-mu], [mu]], dtype=torch.float64)
    covs = torch.full((2, 1, 1), float(sigma) ** 2, dtype=torch.float64)
    return GaussianMixture(means, covs, torch.ones(2, dtype=torch.float64), torch.tensor([0, 1]))
