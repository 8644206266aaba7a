"""Intervals of the toy sections' exact figures (metrics/exact_intervals.py) against the bootstrap computed directly:
a paired difference is the bootstrap of the per-sample differences (same ids), narrower than the two figures' own
intervals when the settings share their noise; with several training seeds the estimate is the mean over seeds."""

import numpy as np
import pytest
import torch

from lightning_guidance.metrics.exact_intervals import per_sample_estimate, score_estimate
from lightning_guidance.stats import bootstrap, mean_statistic


def test_a_paired_difference_is_the_bootstrap_of_the_per_sample_differences():
    rng = np.random.default_rng(0)
    shared = rng.normal(0.0, 1.0, 400)  # the per-sample noise both settings share (same ids, same seeds)
    a, b = shared + 0.1 + rng.normal(0.0, 0.05, 400), shared + rng.normal(0.0, 0.05, 400)
    got = per_sample_estimate([a], baseline=[b], num_resamples=500, seed=3)
    direct = bootstrap(mean_statistic(a - b), 400, num_resamples=500, seed=3, vectorized=True)
    assert (got.value, got.n, got.seeds) == (pytest.approx(0.1, abs=0.02), 400, 1)
    assert got.value == pytest.approx(float(np.mean(a - b)), rel=1e-12) and got.lo > 0
    assert (got.lo, got.hi) == pytest.approx((direct.low, direct.high), rel=0.2)
    own = per_sample_estimate([a], num_resamples=500, seed=3)
    assert got.hi - got.lo < 0.2 * (own.hi - own.lo)
    with pytest.raises(ValueError, match="same sample ids"):
        per_sample_estimate([a], baseline=[b[:10]])


def test_several_seeds_average_and_widen():
    rng = np.random.default_rng(1)
    seeds = [rng.normal(m, 1.0, 300) for m in (0.0, 0.5, 1.0)]
    got = per_sample_estimate(seeds, num_resamples=400)
    assert got.value == pytest.approx(np.mean([s.mean() for s in seeds])) and got.seeds == 3
    assert got.method == "seed_t" and got.hi - got.lo > 2 * (per_sample_estimate(seeds[:1]).hi - per_sample_estimate(
        seeds[:1]).lo)
    median = per_sample_estimate(seeds[:1], reduce="median")
    assert median.value == float(torch.from_numpy(seeds[0]).median())


def test_a_score_difference_of_two_sets_with_the_same_ids():
    from lightning_guidance.toy import fractal_2d
    from lightning_guidance.toy.exact_scores import ExactScores

    fractal = fractal_2d()
    x, y = fractal.sample(120, labels=torch.arange(120) % 2, generator=torch.Generator().manual_seed(0))
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    settings = {"reference_per_class": 100, "num_projections": 8, "p": 1}
    a, b = ExactScores(fractal, noisy, y, **settings), ExactScores(fractal, x, y, **settings)
    for key in ("mean_log_density", "wrong_class_fraction", "sliced_wasserstein", "recall"):
        got = score_estimate([a], key, baseline=[b], num_resamples=100)
        assert got.value == pytest.approx(a.values()[key] - b.values()[key], abs=1e-12), key
    assert score_estimate([a], "mean_log_density", baseline=[b], num_resamples=100).hi < 0  # noise leaves the data
