"""A rank correlation over a few units (e.g. guides) with its bootstrap interval over those units."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats

from .bootstrap import Interval, bootstrap


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant (no ranking to
    correlate)."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(np.unique(xs)) < 2 or len(np.unique(ys)) < 2:
        return 0.0
    return float(scipy.stats.spearmanr(xs, ys)[0])


def spearman_interval(xs: Sequence[float], ys: Sequence[float], num_resamples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> Interval:
    """Spearman's rho of the pairs ``(xs[i], ys[i])`` with the percentile interval of resampling the pairs (the
    units) with replacement (Efron & Tibshirani 1993, §6.5: the bootstrap of a correlation over its cases)."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(xs) != len(ys) or len(xs) < 3:
        raise ValueError(f"a rank correlation needs at least 3 pairs of equal length, got {len(xs)} and {len(ys)}")
    return bootstrap(lambda i: spearman(xs[i], ys[i]), len(xs), num_resamples=num_resamples, seed=seed, level=level)
