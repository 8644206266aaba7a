"""Best against best over a sweep, without the optimism of choosing and grading on the same samples.

A method's quality over a scale sweep is that of its best scale; picking the minimum of noisy figures and reporting
it favours the method with more (or noisier) scales. Here the choice is *cross-fitted*: the sample ids of a set are
cut into two halves holding half of each class (:func:`halves`); the best candidate of a method (a scale, or a
(method, scale) pair) is chosen on one half and graded on the other, and the two gradings are averaged. Every
candidate was sampled with the same ids and seeds, so two methods are compared *paired*: each bootstrap resample
draws one set of ids per half (and one of real ids) for both. The bootstrap holds the choices fixed (they were made
on the other half, so they carry no optimism; their own variability is not in the interval).

Intervals are centred on the estimate, ``estimate ± z SE`` with ``SE`` the spread of the bootstrap replicates
(:func:`centred`; with several training seeds, ``stats.hierarchical_bootstrap``'s ``seed_t``, also centred). The
percentile interval of a Fréchet distance is not usable here: a resample repeats samples, and a set with fewer
distinct samples is farther from the real one, so the replicates sit above the estimate (at 100 samples in 64
features, by more than their spread). On simulated Gaussian features the percentile interval of a paired difference
covered its mean 23 % of the time at 100 samples in 64 features, that of one set's distance never; the centred one
covered both, conservatively (the replicates' spread overstates the noise a little; tests/test_best_of_sweep.py).

The Fréchet distance of many resamples at once (:class:`Frechet`) is the closed form of ``metrics.frechet``
(Heusel et al. 2017, eq. 6) batched over resamples: ``|mu_r - mu_g|^2 + tr S_r + tr S_g - 2 tr (S_r^1/2 S_g
S_r^1/2)^1/2`` with a symmetric eigendecomposition, equal to torchmetrics' to float precision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..stats import Interval, bootstrap, hierarchical_bootstrap
from ..stats.bootstrap import normal_quantile

CHUNK = 250  # resamples per batched eigendecomposition (memory: CHUNK x n x d doubles)
_INSTANCES: dict[str, Frechet] = {}


def centred(interval: Interval) -> Interval:
    """``estimate ± z SE`` of a bootstrap interval (a ``seed_t`` interval is centred already)."""
    if interval.method == "seed_t":
        return interval
    half = normal_quantile((1 + interval.level) / 2) * interval.standard_error
    return Interval(interval.estimate, interval.estimate - half, interval.estimate + half, interval.level,
                    interval.standard_error, interval.num_resamples, "normal")


def halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of positions, each with half of every class (alternating within each class in order)."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.nonzero(labels == c)[0]
        rank[where] = np.arange(len(where))
    return np.nonzero(rank % 2 == 0)[0], np.nonzero(rank % 2 == 1)[0]


class Frechet:
    """Fréchet distances of resampled generated sets against resampled real sets, many resamples at once.

    A resample is a (B, n) array of row indices; the moments are those of the drawn rows (a repeat counts as often
    as drawn), from per-row draw counts: ``mu = W x / n``, ``S = (W (x x^T) - n mu mu^T) / (n - 1)``. With the real
    covariance ``S_r = L L^T`` (Cholesky; a singular one through its symmetric square root), ``tr (S_r S_g)^1/2`` is the
    sum of the square roots of the eigenvalues of the symmetric ``L^T S_g L``."""

    def __init__(self, real_features: np.ndarray):
        self.real = self._prepared(real_features)
        self._sets: dict[int, tuple] = {}
        self._sides: dict[bytes, tuple] = {}  # the bootstraps of one report draw the same real resamples

    @classmethod
    def of(cls, real_features: np.ndarray) -> Frechet:
        """One instance per real set (its prepared moments and real resamples shared by every comparison)."""
        features = np.ascontiguousarray(real_features)
        key = hashlib.sha1(features.tobytes()).hexdigest() + str(features.shape)
        if key not in _INSTANCES:
            if len(_INSTANCES) > 8:
                _INSTANCES.pop(next(iter(_INSTANCES)))
            _INSTANCES[key] = cls(features)
        return _INSTANCES[key]

    @staticmethod
    def _prepared(features) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
        return x, (x.unsqueeze(2) * x.unsqueeze(1)).reshape(len(x), -1)

    @staticmethod
    def moments(prepared, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, outer = prepared
        idx = torch.as_tensor(np.atleast_2d(idx))
        counts = torch.zeros(len(idx), len(x), dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(idx.shape, dtype=torch.float64))
        n, d = idx.shape[1], x.shape[1]
        mu = counts @ x / n
        cov = ((counts @ outer).reshape(-1, d, d) - n * mu.unsqueeze(2) * mu.unsqueeze(1)) / (n - 1)
        return mu, cov

    def real_side(self, real_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, a factor F with F F^T = S, tr S) of the real resamples."""
        key = np.ascontiguousarray(real_idx).tobytes()
        if key not in self._sides:
            if len(self._sides) > 16:
                self._sides.pop(next(iter(self._sides)))
            self._sides[key] = self._real_side(real_idx)
        return self._sides[key]

    def _real_side(self, real_idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, cov = self.moments(self.real, real_idx)
        factor, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            w, v = torch.linalg.eigh(cov)
            factor = (v * w.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)
        return mu, factor, cov.diagonal(dim1=-2, dim2=-1).sum(-1)

    def distance(self, real_side, features: np.ndarray, idx: np.ndarray) -> np.ndarray:
        key = id(features)
        if key not in self._sets:  # the generated sets of a comparison are prepared once
            self._sets[key] = (features, self._prepared(features))
        mu_r, factor, trace_r = real_side
        mu_g, cov_g = self.moments(self._sets[key][1], idx)
        cross = torch.linalg.eigvalsh(factor.transpose(-1, -2) @ cov_g @ factor).clamp_min(0).sqrt().sum(-1)
        fd = (mu_r - mu_g).square().sum(-1) + trace_r + cov_g.diagonal(dim1=-2, dim2=-1).sum(-1) - 2 * cross
        return fd.numpy()


def frechet_of(features: np.ndarray, real_features: np.ndarray, idx=None, real_idx=None) -> float:
    """The Fréchet distance of one generated set (rows ``idx``) against the real set (rows ``real_idx``)."""
    fd = Frechet(real_features)
    idx = np.arange(len(features)) if idx is None else np.asarray(idx)
    real_idx = np.arange(len(real_features)) if real_idx is None else np.asarray(real_idx)
    return float(fd.distance(fd.real_side(real_idx), features, idx)[0])


@dataclass
class Sweep:
    """One method's candidates on one training seed: ``{key: per-sample products}`` (each with ``features`` and
    ``labels`` over the same sample ids) and the real set's products."""

    candidates: Mapping[Hashable, dict]
    real: dict

    def check(self) -> np.ndarray:
        sets = list(self.candidates.values())
        if not sets:
            raise ValueError("a sweep needs at least one candidate")
        for s in sets[1:]:
            if not np.array_equal(s["ids"], sets[0]["ids"]) or not np.array_equal(s["labels"], sets[0]["labels"]):
                raise ValueError("the candidates of a best-of-sweep comparison must share their sample ids and labels "
                                 "(sampled with the same ids and seeds)")
        return np.asarray(sets[0]["labels"])


def best_key(sweep: Sweep, idx: np.ndarray, real_idx: np.ndarray | None = None) -> Hashable:
    """The candidate with the lowest Fréchet distance on the rows ``idx`` (ties: the first)."""
    fd = Frechet.of(sweep.real["features"])
    side = fd.real_side(np.arange(len(sweep.real["features"])) if real_idx is None else real_idx)
    values = {k: float(fd.distance(side, c["features"], idx)[0]) for k, c in sweep.candidates.items()}
    return min(values, key=values.get)


@dataclass
class CrossFit:
    """The cross-fitted comparison: its interval, and per seed the keys chosen for each half (``chosen[s] =
    {'a': (key graded on half 0, key graded on half 1), 'b': ...}``)."""

    interval: Interval
    chosen: list[dict]
    num_samples: int


def crossfit(per_seed: Sequence[tuple[Sweep, Sweep | None]], num_resamples: int = 1000, seed: int = 0,
             level: float = 0.95) -> CrossFit:
    """``fd(a at its best) - fd(b at its best)`` (``b`` None: ``fd(a at its best)``), each best chosen on the other
    half of the sample ids, the two halves' values averaged; ``per_seed[s] = (a, b)`` of training seed s (one seed: a
    bootstrap over sample and real ids; several: over seeds, then ids)."""
    stats, sizes, chosen = [], [], []
    for a, b in per_seed:
        labels = a.check()
        if b is not None and (not np.array_equal(b.check(), labels) or not np.array_equal(
                next(iter(b.candidates.values()))["ids"], next(iter(a.candidates.values()))["ids"])):
            raise ValueError("a paired best-of-sweep comparison needs the same sample ids in both methods")
        parts = halves(labels)
        if min(len(h) for h in parts) < 2:
            raise ValueError(f"{len(labels)} samples are too few to choose on one half and grade on the other (each "
                             "half needs two)")
        picks = {name: tuple(best_key(sw, parts[1 - h]) for h in (0, 1))
                 for name, sw in (("a", a), ("b", b)) if sw is not None}
        chosen.append(picks)
        stats.append(_statistic(a, b, parts, picks))
        sizes.append((len(parts[0]), len(parts[1]), len(a.real["features"])))
    options = {"num_resamples": num_resamples, "seed": seed, "level": level, "vectorized": True}
    if len(stats) == 1:
        interval = bootstrap(stats[0], sizes[0], **options)
    else:
        interval = hierarchical_bootstrap(lambda s, *idx: stats[s](*idx), sizes, **options)
    return CrossFit(centred(interval), chosen, int(sum(len(p) for p in halves(per_seed[0][0].check()))))


def _statistic(a: Sweep, b: Sweep | None, parts, picks):
    """``(i0 (B, n0), i1 (B, n1), ir (B, m)) -> (B,)``: the mean over halves of the paired difference."""
    fd = Frechet.of(a.real["features"])

    def value(i0, i1, ir):
        out = []
        for start in range(0, len(ir), CHUNK):
            rows = slice(start, start + CHUNK)
            side = fd.real_side(ir[rows])
            total = 0.0
            for h, ih in enumerate((i0[rows], i1[rows])):
                ids = parts[h][ih]
                total = total + fd.distance(side, a.candidates[picks["a"][h]]["features"], ids)
                if b is not None:
                    total = total - fd.distance(side, b.candidates[picks["b"][h]]["features"], ids)
            out.append(total / 2)
        return np.concatenate(out)

    return value


def fd_interval(per_seed: Sequence[tuple[dict, dict | None, dict]], num_resamples: int = 1000, seed: int = 0,
                level: float = 0.95) -> Interval:
    """The Fréchet distance of set ``a`` on all its ids, or the paired difference ``a - b`` (same ids): ``per_seed[s]
    = (a, b or None, real)``; what ``metrics.intervals.hierarchical_metric_interval`` gives for ``fd``, batched."""
    stats, sizes = [], []
    for a, b, real in per_seed:
        if b is not None and not np.array_equal(a["ids"], b["ids"]):
            raise ValueError("a paired comparison needs the same sample ids in both sets")
        fd = Frechet.of(real["features"])

        def value(gi, ri, a=a, b=b, fd=fd):
            out = []
            for start in range(0, len(ri), CHUNK):
                side = fd.real_side(ri[start:start + CHUNK])
                v = fd.distance(side, a["features"], gi[start:start + CHUNK])
                out.append(v - fd.distance(side, b["features"], gi[start:start + CHUNK]) if b is not None else v)
            return np.concatenate(out)

        stats.append(value)
        sizes.append((len(a["features"]), len(real["features"])))
    options = {"num_resamples": num_resamples, "seed": seed, "level": level, "vectorized": True}
    if len(stats) == 1:
        return centred(bootstrap(stats[0], sizes[0], **options))
    return hierarchical_bootstrap(lambda s, *idx: stats[s](*idx), sizes, **options)
