"""The 1D two-class mixture of the calibration study (docs/math.md §6).

Class 0 ``N(-mu, sigma^2)``, class 1 ``N(+mu, sigma^2)``, equal weights.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from .gaussian_mixture import GaussianMixture


def two_class_mixture_1d(mu: float = 1.0, sigma: float = 0.05) -> GaussianMixture:
    """Equal-weight classes at ``-mu`` and ``+mu`` with standard deviation ``sigma``; small ``mu`` entangles them."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    means = torch.tensor([[-mu], [mu]], dtype=torch.float64)
    covs = torch.full((2, 1, 1), float(sigma) ** 2, dtype=torch.float64)
    return GaussianMixture(means, covs, torch.ones(2, dtype=torch.float64), torch.tensor([0, 1]))


def exact_conditional_scores(mu: float, sigma: float) -> dict[str, float]:
    """The exact conditional sampler's own rows of :func:`~lightning_guidance.toy.exact_scores.score_samples`
    (the limit of many samples drawn from ``p(x | y)`` itself), in closed form.

    - ``wrong_class_fraction = Phi(-|mu| / sigma)``: the Bayes classifier's boundary is 0 (equal weights and widths),
      and a class-1 sample falls below it with probability ``Phi(-mu / sigma)`` (class 0 by symmetry);
    - ``mean_log_density = E log N(x; mu, sigma^2) = -log(sigma sqrt(2 pi)) - 1/2``;
    - ``median_log_density = -log(sigma sqrt(2 pi)) - q^2 / 2``, ``q = Phi^-1(3/4)`` the median of ``|x - mu| / sigma``.

    At ``mu = 0.1, sigma = 0.05``: 0.0228 of exact samples are on the other class's side.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    normal = NormalDist()
    log_norm = -math.log(sigma * math.sqrt(2 * math.pi))
    return {"mean_log_density": log_norm - 0.5, "median_log_density": log_norm - 0.5 * normal.inv_cdf(0.75) ** 2,
            "wrong_class_fraction": normal.cdf(-abs(mu) / sigma)}


def boundary_path_distance(trajectory: torch.Tensor, labels: torch.Tensor, mu: float) -> torch.Tensor:
    """Per sample, the signed distance from the exact decision boundary averaged over the whole sampling path, in
    units of ``mu``: ``d_i = (1 / (K + 1)) sum_{k=0..K} (2 y_i - 1) x_{k,i} / mu`` for the K + 1 states
    ``x_{k,i}`` (VP coordinates) of a ``(K + 1, N, 1)`` trajectory (the sampler's start to its samples).

    On two classes of equal weight and width the Bayes boundary of the noised mixture is ``x = 0`` at every noise
    level, so ``|x_k|`` is the distance to it at each step; positive: on the requested class's side. 1 at the end
    of a path means the class's mean.
    """
    if trajectory.ndim != 3 or trajectory.shape[-1] != 1 or trajectory.shape[1] != len(labels):
        raise ValueError(f"a 1D trajectory of (steps + 1, N, 1) for N = {len(labels)} labels is needed, got "
                         f"{tuple(trajectory.shape)}")
    side = (2 * labels.to(torch.float64) - 1)
    return (trajectory[..., 0].to(torch.float64) * side).mean(dim=0) / float(mu)
