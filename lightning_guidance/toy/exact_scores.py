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

import numpy as np
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


class ExactScores:
    """The scores of :func:`score_samples` as functions of resampled sample ids, for bootstrap intervals (``stats``).

    :meth:`statistic` gives, per score, a vectorised statistic of one ``(B, n_c)`` index array per class (positions
    among that class's samples, classes in sorted order; a stratified resample keeps each class's count), returning
    ``(B,)`` values; on the identity ids it is :func:`score_samples`' value. The per-sample scores, the exact
    reference and the projections are computed once. ``recall`` resamples the *reference* points instead (its k-NN
    balls are those of all the samples: a resample with repeated samples has no k-th distinct neighbour), so its
    interval covers the reference's draw, not the samples'; :meth:`sizes` gives each score's axes. Two sets of
    samples with the same ids and labels, scored with the same seed, can be compared paired.
    """

    KEYS = ("mean_log_density", "median_log_density", "wrong_class_fraction", "sliced_wasserstein", "spread",
            "recall")

    def __init__(self, mixture: GaussianMixture, samples: Tensor, labels: Tensor,
                 reference_per_class: int | None = None, seed: int = 0, num_projections: int = 256, p: int = 2,
                 k: int = 3):
        x = samples.detach().cpu().to(torch.float64).reshape(len(samples), -1)
        y = labels.detach().cpu().to(torch.long)
        per_sample = per_sample_scores(mixture, x, y)
        self.p, self.num_samples = p, len(x)
        self.classes = sorted(set(y.tolist()))
        where = [torch.nonzero(y == c)[:, 0] for c in self.classes]
        self.log_density = [per_sample["log_density"][w].numpy() for w in where]
        self.wrong = [per_sample["wrong_class"][w].numpy() for w in where]
        g = torch.Generator().manual_seed(seed)
        self.points, self.projected, self.reference, self.cells, self.reference_var, self.covered = ([] for _ in
                                                                                                      range(6))
        for c, w in zip(self.classes, where):
            mine = x[w]
            n_ref = len(mine) if reference_per_class is None else int(reference_per_class)
            exact = mixture.sample(n_ref, labels=torch.full((n_ref,), c), generator=g)[0].to(torch.float64)
            theta = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)  # as sliced_wasserstein
            theta = theta / theta.norm(dim=0, keepdim=True)
            self.points.append(mine.numpy())
            self.projected.append((mine @ theta).numpy())
            self.reference.append((exact @ theta).sort(dim=0).values.numpy())
            self.cells.append(tuple(t.numpy() for t in _quantile_cells(len(mine), n_ref)))
            self.reference_var.append(float(exact.var(dim=0).sum()))
            if len(mine) <= k:
                raise ValueError(f"recall with k={k} needs more than {k} samples per class, got {len(mine)}")
            radius = torch.cdist(mine, mine).kthvalue(k + 1, dim=1).values
            self.covered.append((torch.cdist(exact, mine) <= radius[None, :]).any(dim=1).to(torch.float64).numpy())

    def sizes(self, key: str) -> tuple[int, ...]:
        """The resampled axes of ``key``'s statistic: the reference points per class for ``recall``, else the
        samples per class."""
        return tuple(len(v) for v in (self.covered if key == "recall" else self.log_density))

    def statistic(self, key: str):
        """``key``'s vectorised statistic: ``(B, n_c)`` index arrays, one per class -> ``(B,)`` values."""
        if key not in self.KEYS:
            raise ValueError(f"unknown exact score {key!r}; choose one of {self.KEYS}")
        return getattr(self, f"_{key}")

    def values(self) -> dict[str, float]:
        """Every score on all the samples (what :func:`score_samples` returns)."""
        out = {}
        for key in self.KEYS:
            out[key] = float(self.statistic(key)(*(np.arange(n)[None] for n in self.sizes(key)))[0])
        return {**out, "num_samples": self.num_samples}

    def _pooled(self, per_class: list[np.ndarray], idx) -> np.ndarray:
        return np.concatenate([v[i] for v, i in zip(per_class, idx)], axis=-1)

    def _mean_log_density(self, *idx) -> np.ndarray:
        return self._pooled(self.log_density, idx).mean(axis=-1)

    def _median_log_density(self, *idx) -> np.ndarray:
        pooled = self._pooled(self.log_density, idx)
        middle = (pooled.shape[-1] - 1) // 2  # the lower median, as torch.median
        return np.partition(pooled, middle, axis=-1)[..., middle]

    def _wrong_class_fraction(self, *idx) -> np.ndarray:
        return self._pooled(self.wrong, idx).mean(axis=-1)

    def _sliced_wasserstein(self, *idx, chunk: int = 64) -> np.ndarray:
        per_class = []
        for proj, ref, (widths, ia, ib), i in zip(self.projected, self.reference, self.cells, idx):
            parts = []
            for start in range(0, len(i), chunk):
                pa = np.sort(proj[i[start:start + chunk]], axis=1)  # (b, n, P)
                cost = (widths[None, :, None] * np.abs(pa[:, ia] - ref[ib][None]) ** self.p).sum(axis=1)
                parts.append(cost.mean(axis=-1) ** (1.0 / self.p))
            per_class.append(np.concatenate(parts))
        return np.mean(per_class, axis=0)

    def _spread(self, *idx) -> np.ndarray:
        return np.mean([np.sqrt(pts[i].var(axis=1, ddof=1).sum(axis=-1) / ref_var)
                        for pts, ref_var, i in zip(self.points, self.reference_var, idx)], axis=0)

    def _recall(self, *idx) -> np.ndarray:
        return np.mean([cov[i].mean(axis=-1) for cov, i in zip(self.covered, idx)], axis=0)


def score_samples(mixture: GaussianMixture, samples: Tensor, labels: Tensor, reference_per_class: int | None = None,
                  seed: int = 0, num_projections: int = 256, p: int = 2) -> dict[str, float]:
    """The exact scores of ``samples`` (N, D) generated for ``labels`` (N,) (see the module docstring).

    Each class is compared with ``reference_per_class`` exact samples (None: as many as it has samples), on
    ``num_projections`` directions, with the sliced ``p``-Wasserstein distance. The exact reference samples and the
    projections come from ``seed``, so two sets of samples scored with the same seed meet the same reference.
    """
    return ExactScores(mixture, samples, labels, reference_per_class, seed, num_projections, p).values()


def density_deciles(log_density: torch.Tensor) -> torch.Tensor:
    """Each sample's decile (0: lowest) of exact log-density among its set."""
    edges = torch.quantile(log_density, torch.linspace(0, 1, 11, dtype=log_density.dtype))
    return (torch.searchsorted(edges, log_density, right=True) - 1).clamp(0, 9)


def move_by_density_decile(log_density: torch.Tensor, moves: torch.Tensor) -> list[float]:
    """Median move of the samples in each decile of exact log-density before the flow (lowest density first): the
    classifier-centric study's claim is that the first deciles move much more than the last."""
    bins = density_deciles(log_density)
    return [float(moves[bins == d].median()) if (bins == d).any() else float("nan") for d in range(10)]


def best_at_equal_wrong_class_rate(scores: dict[str, dict], budget: float) -> list[tuple[str, str, dict]]:
    """Per method, its scale with the highest mean log-density among those whose wrong-class rate is <= ``budget``;
    ``(method, scale, scores)`` sorted best first (the variants' comparison at equal class separation)."""
    best: dict[str, tuple[str, dict]] = {}
    for method, by_scale in scores.items():
        for scale, sc in by_scale.items():
            if sc["wrong_class_fraction"] > budget:
                continue
            if method not in best or sc["mean_log_density"] > best[method][1]["mean_log_density"]:
                best[method] = (scale, sc)
    return sorted(((m, s, sc) for m, (s, sc) in best.items()), key=lambda r: -r[2]["mean_log_density"])
