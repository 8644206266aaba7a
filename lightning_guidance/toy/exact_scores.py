"""Scores of generated samples against a toy distribution whose density is exact (the fractal, the 1D mixture).

For samples ``x_i`` generated for classes ``y_i``:

- ``mean_log_density``: ``mean_i log p(x_i | y_i)``, the exact class-conditional log-density (higher = the samples
  sit where the requested class has mass; guidance raises it by concentrating samples); on the fractal's thin
  branches a few stray samples dominate the mean, so ``median_log_density`` is given too;
- ``wrong_class_fraction``: the fraction of samples whose exact posterior ``p(y | x_i)`` (the Bayes classifier)
  prefers another class than the one requested;
- ``sliced_wasserstein``: per class, the sliced p-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015)
  between the samples and exact samples of that class (as many as the samples, or ``reference_per_class``),
  averaged over the classes present (lower = closer to the true conditional distribution: it grows both when
  samples leave the data and when they lose variety);
- ``spread``: per class, ``sqrt(trace Cov(samples) / trace Cov(exact))``, averaged (1 = the true dispersion,
  < 1 = samples pulled together, > 1 = pushed apart);
- ``recall``: per class, the share of exact samples inside the union of the generated samples' k-nearest-neighbour
  balls (Kynkäänniemi et al. 2019, improved recall, k = 3), averaged: the variety of the true distribution that the
  samples cover (1 = all of it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian_mixture import GaussianMixture


def _quantile_cells(n: int, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """The cells of (0, 1] on which the empirical quantile functions of n and of m points are both constant: their
    widths and, per cell, the index of the sorted point each function takes there."""
    ends = torch.unique(torch.cat([torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]))  # cell ends, x 1/(nm)
    widths = torch.diff(ends, prepend=ends.new_zeros(1)).to(torch.float64) / (n * m)
    # on ((i - 1)/n, i/n] the quantile function of n sorted points is the i-th; a cell ending at e/(nm) has i = ceil(e/m)
    return widths, (ends + m - 1) // m - 1, (ends + n - 1) // n - 1


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 256, p: int = 2,
                       generator: torch.Generator | None = None) -> Tensor:
    """``(mean_theta W_p^p(<a, theta>, <b, theta>))^(1/p)`` over ``num_projections`` random unit directions ``theta``.

    ``a`` (N, D) and ``b`` (M, D). In 1D, ``W_p^p = int_0^1 |F_a^-1(u) - F_b^-1(u)|^p du`` between the two empirical
    laws, computed exactly on the cells where both quantile functions are constant (any N and M).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein needs two (N, D) point sets of one dimension, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.to(torch.float64), b.to(torch.float64)
    theta = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(dim=0).values, (b @ theta).sort(dim=0).values
    widths, ia, ib = _quantile_cells(len(pa), len(pb))
    return ((widths[:, None] * (pa[ia] - pb[ib]).abs() ** p).sum(dim=0).mean()) ** (1.0 / p)


def knn_recall(generated: Tensor, reference: Tensor, k: int = 3) -> Tensor:
    """Share of ``reference`` points within ``||r - g_j|| <= radius_j`` of some generated ``g_j``, ``radius_j`` its
    distance to its k-th nearest generated neighbour (Kynkäänniemi et al. 2019, improved recall)."""
    if len(generated) <= k:
        raise ValueError(f"recall with k={k} needs more than {k} generated samples, got {len(generated)}")
    radius = torch.cdist(generated, generated).kthvalue(k + 1, dim=1).values  # k+1: the point itself is at 0
    return (torch.cdist(reference, generated) <= radius[None, :]).any(dim=1).to(torch.float64).mean()


def per_sample_scores(mixture: GaussianMixture, samples: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per sample (for paired bootstraps over sample ids): ``log_density`` = ``log p(x_i | y_i)`` and
    ``wrong_class`` = 1.0 where the exact posterior prefers another class than ``y_i`` (float64, (N,))."""
    x = samples.detach().cpu().to(torch.float64).reshape(len(samples), -1)
    y = labels.detach().cpu().to(torch.long)
    return {"log_density": mixture.log_prob(x, y),
            "wrong_class": (mixture.class_posterior(x).argmax(dim=1) != y).to(torch.float64)}


def score_samples(mixture: GaussianMixture, samples: Tensor, labels: Tensor, reference_per_class: int | None = None,
                  seed: int = 0, num_projections: int = 256, p: int = 2) -> dict[str, float]:
    """The exact scores of ``samples`` (N, D) generated for ``labels`` (N,) (see the module docstring).

    Each class is compared with ``reference_per_class`` exact samples (None: as many as it has samples), on
    ``num_projections`` directions, with the sliced ``p``-Wasserstein distance. The exact reference samples and the
    projections come from ``seed``, so two sets of samples scored with the same seed meet the same reference.
    """
    x = samples.detach().cpu().to(torch.float64).reshape(len(samples), -1)
    y = labels.detach().cpu().to(torch.long)
    per_sample = per_sample_scores(mixture, x, y)
    log_density, wrong = per_sample["log_density"], per_sample["wrong_class"]
    g = torch.Generator().manual_seed(seed)
    sw, spread, recall = [], [], []
    for k in sorted(set(y.tolist())):
        mine = x[y == k]
        n_ref = len(mine) if reference_per_class is None else int(reference_per_class)
        exact = mixture.sample(n_ref, labels=torch.full((n_ref,), k), generator=g)[0].to(torch.float64)
        sw.append(sliced_wasserstein(mine, exact, num_projections, p=p, generator=g))
        spread.append((mine.var(dim=0).sum() / exact.var(dim=0).sum()).sqrt())  # trace of the covariance, also in 1D
        recall.append(knn_recall(mine, exact))
    return {"mean_log_density": float(log_density.mean()), "median_log_density": float(log_density.median()),
            "wrong_class_fraction": float(wrong.mean()),
            "sliced_wasserstein": float(torch.stack(sw).mean()), "spread": float(torch.stack(spread).mean()),
            "recall": float(torch.stack(recall).mean()),
            "num_samples": int(len(x))}
