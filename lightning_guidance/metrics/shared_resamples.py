"""Bootstrap replicates of the sample-quality figures of several sets that share their sample ids, computed fast.

``quality_from_products`` recomputes a figure from the judge's per-sample features on given index arrays; a bootstrap
calls it once per resample, set and figure, and its kernel distance (100 subsets) alone costs about a quarter of a
second a call. Here the pairwise matrices of each set (distances and kernels among its samples and against the real
ones) are computed once, and a resample only reweights or indexes them:

- ``fd_*``: the Fréchet distance of the count-weighted means and covariances (``_moments`` of the drawn rows);
- ``kd_*``: the unbiased ``MMD^2`` with KID's cubic kernel over *all* pairs of the drawn rows (the estimator that
  ``kernel_distance`` averages over random subsets, here on the whole resample: same expectation, no subset noise);
- ``precision`` / ``recall``: the union of the k-NN balls of the *distinct* drawn points, as ``quality_from_products``;
- ``judge_accuracy``: the share of drawn samples the judge assigns to their label; ``judge_score``: the classifier
  score ``exp(E KL(p(y|x) || p(y)))`` of the drawn rows (``products.classifier_score``).

One draw of (generated ids, real ids) serves every set, so the difference of two sets is paired (same ids); the
draws are ``stats.bootstrap``'s for the same seed, and :meth:`SharedResamples.interval` gives, through it, the interval
of any function of the figures: one set's value, a difference, a maximum over scales.

A draw with replacement repeats samples, and the set-level figures of a set with repeats are shifted (a repeated
feature row shrinks the covariance and pairs with itself in the kernel sum; fewer distinct points widen the k-NN
balls): one set's Fréchet or kernel distance sits at the low end of, or below, its percentile interval. Every interval
here is therefore the normal one, ``estimate ± z SE`` with SE the replicates' spread (``stats.normal_interval``, as
for every figure and contrast of the report).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..stats import Estimate, Interval, bootstrap, normal_interval, resample


def _f64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's polynomial kernel ``(a.b / d + 1)^3``."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _weighted_moments(features: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Means (B, D) and (n - 1)-normalised covariances (B, D, D) of the rows drawn ``counts[b]`` times each."""
    n = counts.sum(1, keepdim=True)
    mu = counts @ features / n
    second = (features.T[None] * counts[:, None, :]) @ features
    return mu, (second - n[:, :, None] * mu[:, :, None] * mu[:, None, :]) / (n[:, :, None] - 1)


def _root(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of (batched) covariances."""
    w, v = torch.linalg.eigh(sigma)
    return v @ (w.clamp_min(0).sqrt()[..., None] * v.mT)


def _frechet(mu_r, sigma_r, root, mu_g, sigma_g) -> torch.Tensor:
    """Batched ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})``, the trace term as the sum of the square roots
    of the eigenvalues of ``S_r^{1/2} S_g S_r^{1/2}`` (symmetric, similar to ``S_r S_g``; ``root`` = ``S_r^{1/2}``)."""
    middle = torch.linalg.eigvalsh(root @ sigma_g @ root).clamp_min(0).sqrt().sum(-1)
    trace = sigma_r.diagonal(dim1=-2, dim2=-1).sum(-1) + sigma_g.diagonal(dim1=-2, dim2=-1).sum(-1)
    return ((mu_r - mu_g) ** 2).sum(-1) + trace - 2 * middle


def _radii(distances: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Distance from each of ``rows`` to its k-th nearest other row among ``rows`` (itself comes first)."""
    if len(rows) <= k:
        raise ValueError(f"precision/recall need more than k = {k} distinct samples in a resample, got {len(rows)}")
    return np.partition(distances[np.ix_(rows, rows)], k, axis=1)[:, k]


def _classifier_score(counts: torch.Tensor, probs: torch.Tensor, p_log_p: torch.Tensor) -> torch.Tensor:
    """``exp(E KL(p(y|x) || p(y)))`` of the rows drawn ``counts[b]`` times (``products.classifier_score``)."""
    n = counts.sum(1)
    marginal = counts @ probs / n[:, None]
    mean_kl = -torch.special.xlogy(marginal, marginal).sum(1) + counts @ p_log_p / n
    return mean_kl.clamp_min(0).exp()


@dataclass
class SharedResamples:
    """Figures of each set on all ids (``estimates[set][figure]``) and on each shared resample (``replicates``)."""

    estimates: dict[str, dict[str, float]]
    replicates: dict[str, dict[str, np.ndarray]]
    sizes: tuple[int, int]
    seed: int
    level: float

    @property
    def num_resamples(self) -> int:
        return len(next(iter(next(iter(self.replicates.values())).values())))

    def interval(self, statistic: Callable[[dict], float | np.ndarray]) -> Interval:
        """The interval of ``statistic(figures)``, where ``figures[set][figure]`` is a float (all ids) or an array
        (the resamples): e.g. ``lambda f: f["after"]["fd_digits"] - f["before"]["fd_digits"]``."""
        estimate, replicates = float(statistic(self.estimates)), np.asarray(statistic(self.replicates), np.float64)

        def lookup(*idx: np.ndarray) -> np.ndarray:  # stats.bootstrap draws the resamples these were computed on
            return np.array([estimate]) if idx[0].shape[0] == 1 else replicates

        return normal_interval(bootstrap(lookup, self.sizes, num_resamples=self.num_resamples, level=self.level,
                                         seed=self.seed, vectorized=True))

    def estimate(self, statistic: Callable[[dict], float | np.ndarray]) -> dict:
        """:meth:`interval` as an Estimate's JSON, n the generated sets' sample count."""
        return Estimate.from_interval(self.interval(statistic), self.sizes[0]).as_json()

    def figures(self, name: str, metrics: tuple[str, ...]) -> dict[str, dict]:
        """Set ``name``'s figures, each with its interval: ``{figure: Estimate JSON}``."""
        return {m: self.estimate(lambda f, m=m: f[name][m]) for m in metrics}

    def difference(self, a: str, b: str, metrics: tuple[str, ...]) -> dict[str, dict]:
        """Set ``a`` minus set ``b``, paired over the shared draws: ``{figure: Estimate JSON}``."""
        return {m: self.estimate(lambda f, m=m: f[a][m] - f[b][m]) for m in metrics}

    def largest_difference(self, pairs: list[tuple[str, str]], metric: str) -> dict:
        """The largest of ``a − b`` over ``pairs`` of sets, per draw (its interval is the maximum's): an Estimate's
        JSON."""
        return self.estimate(lambda f: np.max(np.stack([np.asarray(f[a][metric] - f[b][metric], dtype=np.float64)
                                                        for a, b in pairs]), axis=0))


def shared_resamples(sets: dict[str, dict], real: dict, *, fd_name: str = "fd_judge", k: int = 3,
                     num_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> SharedResamples:
    """The figures (``fd_name``, its ``kd_`` twin, precision, recall, judge accuracy and score) of every set of ``sets``
    (per-sample products with ``ids``, ``labels``, ``features``, ``logits``; all with the same ids and labels) against
    ``real``, on all ids and on ``num_resamples`` resamples of (generated ids, real ids) shared by every set."""
    from .kernel_distance import kd_name

    first = next(iter(sets.values()))
    for name, s in sets.items():
        if not (np.array_equal(s["ids"], first["ids"]) and np.array_equal(s["labels"], first["labels"])):
            raise ValueError(f"set {name} has other sample ids or labels than {next(iter(sets))}: the shared "
                             "resamples pair sets sampled with the same ids")
    n, m = len(first["ids"]), len(real["labels"])
    g_idx, r_idx = resample(np.random.default_rng(seed), (n, m), num_resamples)  # as stats.bootstrap draws them
    g_counts = torch.stack([torch.bincount(torch.from_numpy(i), minlength=n) for i in g_idx]).double()
    r_counts = torch.stack([torch.bincount(torch.from_numpy(i), minlength=m) for i in r_idx]).double()
    full_g, full_r = torch.ones(1, n, dtype=torch.float64), torch.ones(1, m, dtype=torch.float64)
    r_feat = _f64(real["features"])
    r_dist, r_kern = torch.cdist(r_feat, r_feat).numpy(), _kernel(r_feat, r_feat)
    r_unique = [np.arange(m)] + [np.unique(i) for i in r_idx]
    r_radii = [_radii(r_dist, u, k) for u in r_unique]
    r_counts_all = torch.cat([full_r, r_counts])
    r_moments = _weighted_moments(r_feat, r_counts_all)
    r_moments = (*r_moments, _root(r_moments[1]))
    m_b = r_counts_all.sum(1)
    r_term = (((r_counts_all @ r_kern) * r_counts_all).sum(1) - r_counts_all @ r_kern.diagonal()) / (m_b * (m_b - 1))
    kd = kd_name(fd_name)
    estimates, replicates = {}, {}
    for name, s in sets.items():
        g_feat = _f64(s["features"])
        g_dist, gr_dist = torch.cdist(g_feat, g_feat).numpy(), torch.cdist(g_feat, r_feat).numpy()
        g_kern, gr_kern = _kernel(g_feat, g_feat), _kernel(g_feat, r_feat)
        correct = torch.from_numpy((np.asarray(s["logits"]).argmax(1) == np.asarray(s["labels"])).astype(np.float64))
        log_p = torch.log_softmax(_f64(s["logits"]), dim=1)
        p_log_p = (log_p.exp() * log_p).sum(1)
        counts = torch.cat([full_g, g_counts])
        n_b = counts.sum(1)
        g_term = (((counts @ g_kern) * counts).sum(1) - counts @ g_kern.diagonal()) / (n_b * (n_b - 1))
        cross = ((counts @ gr_kern) * r_counts_all).sum(1) / (n_b * m_b)
        counts_np, r_counts_np = counts.numpy(), r_counts_all.numpy()
        fd = _frechet(*r_moments, *_weighted_moments(g_feat, counts))
        precision, recall = [], []
        for b, u in enumerate([np.arange(n)] + [np.unique(i) for i in g_idx]):
            ru = r_unique[b]
            precision.append(counts_np[b] @ (gr_dist[:, ru] <= r_radii[b]).any(1) / counts_np[b].sum())
            recall.append(r_counts_np[b] @ (gr_dist[u] <= _radii(g_dist, u, k)[:, None]).any(0) / r_counts_np[b].sum())
        figures = {fd_name: fd.numpy(), kd: (g_term + r_term - 2 * cross).numpy(), "precision": np.array(precision),
                   "recall": np.array(recall), "judge_accuracy": (counts @ correct / n_b).numpy(),
                   "judge_score": _classifier_score(counts, log_p.exp(), p_log_p).numpy()}
        estimates[name] = {key: float(v[0]) for key, v in figures.items()}
        replicates[name] = {key: v[1:] for key, v in figures.items()}
    return SharedResamples(estimates, replicates, (n, m), seed, level)
