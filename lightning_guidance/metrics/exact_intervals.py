"""Intervals of the toy sections' exact figures: per-sample figures (a path's distance from the boundary, the exact
log-density, the wrong-class indicator) and the set scores of ``toy.exact_scores.ExactScores``.

Each is bootstrapped over sample ids and, with several training seeds, over seeds then ids
(``stats.hierarchical_bootstrap``, ``seed_t``); a difference of two settings sampled with the same ids (same
per-sample seeds) is bootstrapped on the difference itself, each resample drawing one set of ids for both (paired).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..stats import Estimate, hierarchical_bootstrap
from ..toy.exact_scores import ExactScores

#: resamples per interval; the sliced Wasserstein distance re-sorts every projection per resample: fewer
RESAMPLES = 1000
SLOW_RESAMPLES = {"sliced_wasserstein": 200}


def _reduce(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    if kind == "mean":
        return lambda v: v.mean(axis=-1)
    if kind == "median":  # the lower median, as torch.median
        return lambda v: np.partition(v, (v.shape[-1] - 1) // 2, axis=-1)[..., (v.shape[-1] - 1) // 2]
    raise ValueError(f"unknown reduction {kind!r}; choose mean or median")


def seeds_estimate(statistics: Sequence[Callable[..., np.ndarray]], sizes: Sequence[tuple[int, ...]],
                   num_resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """``statistics[s]``: training seed s's vectorised statistic of its resampled ids (one ``(B, n)`` array per axis
    of ``sizes[s]``) -> ``(B,)``; the estimate is their mean over seeds (one seed: the bootstrap over ids)."""
    interval = hierarchical_bootstrap(lambda s, *idx: statistics[s](*idx), list(sizes), vectorized=True,
                                      num_resamples=num_resamples, seed=seed)
    return Estimate.from_interval(interval, n=sum(sizes[0]), seeds=len(sizes))


def per_sample_estimate(values: Sequence[np.ndarray], baseline: Sequence[np.ndarray] | None = None,
                        reduce: str = "mean", **options) -> Estimate:
    """The ``reduce`` (mean or median) of a per-sample figure, ``values[s]`` (N,) per training seed; with
    ``baseline`` (same ids), of the paired difference ``reduce(values) - reduce(baseline)``."""
    of = _reduce(reduce)
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    base = None if baseline is None else [np.asarray(b, dtype=np.float64) for b in baseline]
    if base is not None and any(a.shape != b.shape for a, b in zip(arrays, base)):
        raise ValueError("a paired difference needs the same sample ids in both settings; their sizes differ")
    stats = [(lambda idx, a=a, b=b: of(a[idx]) - (0.0 if b is None else of(b[idx])))
             for a, b in zip(arrays, base or [None] * len(arrays))]
    return seeds_estimate(stats, [(len(a),) for a in arrays], **options)


def score_estimate(scores: Sequence[ExactScores], key: str, baseline: Sequence[ExactScores] | None = None,
                   **options) -> Estimate:
    """``key`` of :class:`ExactScores` (one per training seed); with ``baseline`` (the same ids and scoring seed),
    the paired difference ``key(scores) - key(baseline)``."""
    options.setdefault("num_resamples", SLOW_RESAMPLES.get(key, RESAMPLES))
    stats = []
    for s, a in enumerate(scores):
        b = None if baseline is None else baseline[s]
        if b is not None and a.sizes(key) != b.sizes(key):
            raise ValueError(f"a paired {key} needs the same ids in both sets: sizes {a.sizes(key)} and "
                             f"{b.sizes(key)}")
        stats.append(lambda *idx, a=a, b=b: a.statistic(key)(*idx) - (0.0 if b is None else b.statistic(key)(*idx)))
    return seeds_estimate(stats, [a.sizes(key) for a in scores], **options)
