"""Score generated samples of a toy mixture against the exact class-conditional distribution.

For samples ``x_i`` generated for class ``y_i``:
- ``mean_log_density``: ``mean_i log p(x_i | y_i)`` under the exact mixture (higher: closer to the class's mass);
- ``wrong_class_fraction``: the share with ``argmax_k p(k | x_i) != y_i`` under the exact posterior;
- ``sliced_wasserstein``: per class, the sliced 1-Wasserstein distance (Bonneel et al. 2015)
  ``SW_1 = E_theta W_1(theta^T x, theta^T x_ref)`` over ``num_projections`` fixed random unit directions, against
  exact samples ``x_ref ~ p(x | y)``; averaged over the classes present. Each 1D ``W_1`` is scipy's
  ``wasserstein_distance`` of the two projected samples.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from torch import Tensor

from .gaussian_mixture import GaussianMixture


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 64, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between point sets ``a`` (N, D) and ``b`` (M, D); fixed directions per seed."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein needs (N, D) and (M, D) point sets, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((num_projections, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    pa, pb = a.double().numpy() @ dirs.T, b.double().numpy() @ dirs.T
    return float(np.mean([wasserstein_distance(pa[:, k], pb[:, k]) for k in range(num_projections)]))


def exact_sample_scores(mixture: GaussianMixture, x: Tensor, y: Tensor, reference_per_class: int = 2000,
                        seed: int = 0, num_projections: int = 64) -> dict[str, float]:
    """The three scores of the module docstring for samples ``x`` (N, D) generated for classes ``y`` (N,)."""
    x64, y = x.detach().cpu().to(torch.float64), y.detach().cpu().to(torch.int64)
    log_p = mixture.log_prob(x64, y)
    wrong = mixture.log_class_posterior(x64).argmax(dim=1) != y
    gen = torch.Generator().manual_seed(seed)
    sw = []
    for k in sorted(set(y.tolist())):
        ref, _ = mixture.sample(reference_per_class, torch.full((reference_per_class,), k), generator=gen)
        sw.append(sliced_wasserstein(x64[y == k], ref.double(), num_projections, seed))
    return {"mean_log_density": float(log_p.mean()), "wrong_class_fraction": float(wrong.double().mean()),
            "sliced_wasserstein": float(np.mean(sw))}
