"""The statistics behind the study's verdicts (lightning_guidance.stats).

Oracles: coverage over many repetitions of a case with a known answer (the mean of a normal sample; the grand mean
of a two-level normal model), held to a binomial tolerance; scipy.stats.bootstrap for the percentile and BCa
intervals; the textbook sample-size formula of a paired z-test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from lightning_guidance.stats import (
    Interval,
    bootstrap,
    effect_size,
    hierarchical_bootstrap,
    mean_statistic,
    paired_bootstrap,
    samples_needed,
    unpaired_bootstrap,
    verdict,
)


def binomial_tolerance(p: float, trials: int, sds: float = 3.0) -> float:
    return sds * math.sqrt(p * (1 - p) / trials)


@pytest.mark.parametrize("method, n", [("percentile", 100), ("bca", 60)])
def test_interval_of_a_normal_mean_covers_it_95_percent_of_the_time(method, n):
    """Repeated N(2, 3^2) samples: the 95 % interval of the mean holds the true mean in 95 % of repetitions, within
    a binomial tolerance (3 sd of a proportion over the repetitions; the percentile interval's small-n deficit at
    n = 100, ~0.3 %, sits well inside it)."""
    rng = np.random.default_rng(1)
    repetitions, hits = 300, 0
    for r in range(repetitions):
        values = rng.normal(2.0, 3.0, size=n)
        interval = bootstrap(mean_statistic(values), n, num_resamples=1000, seed=r, method=method, vectorized=True)
        hits += interval.low <= 2.0 <= interval.high
    coverage = hits / repetitions
    assert abs(coverage - 0.95) <= binomial_tolerance(0.95, repetitions), coverage


def percentile_coverage_over_seeds(num_seeds: int, level: float = 0.95) -> float:
    """What a percentile interval over S seed means covers when they are normal: its half-width is
    ``z sqrt((S-1)/S) s / sqrt(S)`` while the mean's error is ``t_{S-1} s / sqrt(S)``."""
    z = scipy.stats.norm.ppf((1 + level) / 2)
    return 2 * scipy.stats.t.cdf(z * math.sqrt((num_seeds - 1) / num_seeds), num_seeds - 1) - 1


def test_hierarchical_interval_covers_the_grand_mean_where_the_sample_bootstrap_does_not():
    """Two-level model: seed means ~ N(0, 1), samples ~ N(seed mean, 1), 3 seeds x 20 samples, the study's shape.
    The default (``seed_t``) interval covers the true grand mean 0 at least 95 % of the time (within a binomial
    tolerance; slightly more, as the within-seed resampling counts that noise twice); the plain percentile interval
    over seeds covers what theory says for 3 seeds (~75 %); pooling all samples and bootstrapping them alone ignores
    the seed-to-seed spread and covers far less often."""
    rng = np.random.default_rng(2)
    seeds, per_seed, repetitions = 3, 20, 400
    hits = {"seed_t": 0, "percentile": 0, "pooled": 0}
    for r in range(repetitions):
        data = rng.normal(0, 1, size=(seeds, 1)) + rng.normal(0, 1, size=(seeds, per_seed))
        for method in ("seed_t", "percentile"):
            h = hierarchical_bootstrap(lambda s, idx: data[s, idx].mean(axis=-1), [per_seed] * seeds,
                                       num_resamples=300, seed=r, vectorized=True, method=method)
            hits[method] += h.low <= 0 <= h.high
        p = bootstrap(mean_statistic(data.reshape(-1)), seeds * per_seed, num_resamples=300, seed=r, vectorized=True)
        hits["pooled"] += p.low <= 0 <= p.high
    coverage = {k: v / repetitions for k, v in hits.items()}
    assert 0.95 - binomial_tolerance(0.95, repetitions) <= coverage["seed_t"] <= 0.995, coverage
    expected = percentile_coverage_over_seeds(seeds)  # 0.749
    assert abs(coverage["percentile"] - expected) <= binomial_tolerance(expected, repetitions) + 0.03, coverage
    assert coverage["pooled"] < 0.6, coverage


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_interval_matches_scipy(method):
    """The same interval as scipy.stats.bootstrap on a skewed sample (different random draws: Monte Carlo
    tolerance)."""
    values = np.random.default_rng(3).exponential(1.0, size=80)
    ours = bootstrap(mean_statistic(values), len(values), num_resamples=20000, seed=0, method=method, vectorized=True)
    ref = scipy.stats.bootstrap((values,), np.mean, n_resamples=20000, method="BCa" if method == "bca" else method,
                                random_state=np.random.default_rng(0), confidence_level=0.95).confidence_interval
    width = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.03 * width)
    assert ours.high == pytest.approx(ref.high, abs=0.03 * width)
    assert ours.estimate == pytest.approx(values.mean())
    if method == "bca":  # the skew moves BCa's interval up, away from the percentile one
        pct = bootstrap(mean_statistic(values), len(values), num_resamples=20000, seed=0, vectorized=True)
        assert ours.low > pct.low and ours.high > pct.high


def test_hierarchical_paths_agree_and_one_seed_is_the_sample_bootstrap():
    data = np.random.default_rng(11).normal(size=(3, 25))
    loop = hierarchical_bootstrap(lambda s, idx: data[s, idx].mean(), [25] * 3, num_resamples=300, seed=1)
    vec = hierarchical_bootstrap(lambda s, idx: data[s, idx].mean(axis=-1), [25] * 3, num_resamples=300, seed=1,
                                 vectorized=True)
    assert loop.method == vec.method == "seed_t"
    assert loop.estimate == pytest.approx(vec.estimate) == pytest.approx(data.mean())
    assert abs(loop.low - vec.low) < 0.25 * (loop.high - loop.low)
    one = hierarchical_bootstrap(lambda s, idx: data[0, idx].mean(), [25], num_resamples=2000, seed=0)
    assert one.method == "percentile"  # one seed: no seed axis to correct for
    flat = bootstrap(lambda idx: data[0, idx].mean(), 25, num_resamples=2000, seed=5)
    assert one.estimate == flat.estimate and abs(one.low - flat.low) < 0.1 * (flat.high - flat.low)


def test_the_same_seed_gives_the_same_interval_and_the_vectorised_path_agrees():
    values = np.random.default_rng(4).normal(size=50)
    a = bootstrap(lambda idx: values[idx].mean(), 50, num_resamples=500, seed=7)
    b = bootstrap(lambda idx: values[idx].mean(), 50, num_resamples=500, seed=7)
    c = bootstrap(lambda idx: values[idx].mean(), 50, num_resamples=500, seed=8)
    v = bootstrap(mean_statistic(values), 50, num_resamples=500, seed=7, vectorized=True)
    assert a == b and a != c
    assert v.estimate == pytest.approx(a.estimate) and abs(v.low - a.low) < 0.2 * (a.high - a.low)


def test_paired_interval_is_narrower_than_unpaired_on_correlated_data():
    """Two methods scored on the same 200 sample ids share a large per-sample term: the paired interval of the
    difference is far narrower than the unpaired one, and both hold the true difference 0.3."""
    rng = np.random.default_rng(5)
    shared = rng.normal(0, 3, size=200)
    a, b = shared + 0.3 + rng.normal(0, 0.3, 200), shared + rng.normal(0, 0.3, 200)
    mean_a, mean_b = (lambda idx: a[idx].mean()), (lambda idx: b[idx].mean())
    p = paired_bootstrap(mean_a, mean_b, 200, num_resamples=1000, seed=0)
    u = unpaired_bootstrap(mean_a, 200, mean_b, 200, num_resamples=1000, seed=0)
    assert p.estimate == pytest.approx(0.3 + (a - b - 0.3).mean()) == u.estimate
    assert p.low <= 0.3 <= p.high and u.low <= 0.3 <= u.high
    assert (p.high - p.low) * 5 < u.high - u.low
    assert p.excludes(0) and not u.excludes(0)


def test_two_axis_statistic_resamples_each_axis():
    """``statistic(idx_generated, idx_real)``: both axes vary; an axis of one value gives a zero-width interval."""
    g, r = np.random.default_rng(6).normal(size=40), np.random.default_rng(7).normal(size=30)
    both = bootstrap(lambda i, j: g[i].mean() - r[j].mean(), (40, 30), num_resamples=400, seed=0)
    only_g = bootstrap(lambda i, j: g[i].mean() - r[j].mean(), (40, 1), num_resamples=400, seed=0)
    assert both.high - both.low > only_g.high - only_g.low > 0
    constant = bootstrap(lambda i: 1.0, 1, num_resamples=10)
    assert constant.low == constant.high == 1.0
    with pytest.raises(ValueError, match="BCa .* one resampled axis"):
        bootstrap(lambda i, j: 0.0, (3, 3), num_resamples=10, method="bca")
    with pytest.raises(ValueError, match="level"):
        bootstrap(lambda i: 0.0, 3, level=95)
    with pytest.raises(ValueError, match="at least one sample"):
        bootstrap(lambda i: 0.0, 0)


def _interval(low: float, high: float, estimate: float | None = None, se: float = 1.0) -> Interval:
    return Interval((low + high) / 2 if estimate is None else estimate, low, high, 0.95, se, 100, "percentile")


@pytest.mark.parametrize("low, high, sign, expected", [
    (0.1, 0.5, 1, "agree"), (0.1, 0.5, -1, "disagree"),
    (-0.5, -0.1, -1, "agree"), (-0.5, -0.1, 1, "disagree"),
    (-0.1, 0.5, 1, "inconclusive"), (-0.5, 0.1, -1, "inconclusive"),
    (0.0, 0.5, 1, "inconclusive"), (-0.5, 0.0, -1, "inconclusive"),  # touching 0 does not exclude it
])
def test_verdict_rule_on_constructed_intervals(low, high, sign, expected):
    assert verdict(_interval(low, high), sign) == expected


def test_verdict_rule_on_constructed_differences():
    """Paired differences built with a known sign: clearly positive, clearly negative, and exactly centred on 0."""
    rng = np.random.default_rng(8)
    noise = rng.normal(0, 1, 300)
    for shift, claim, expected in [(0.5, 1, "agree"), (0.5, -1, "disagree"), (-0.5, -1, "agree"),
                                   (-0.5, 1, "disagree")]:
        diff = noise + shift
        assert verdict(bootstrap(mean_statistic(diff), 300, seed=0, vectorized=True), claim) == expected
    centred = np.concatenate([noise, -noise])  # mean exactly 0, symmetric
    assert verdict(bootstrap(mean_statistic(centred), 600, seed=0, vectorized=True), 1) == "inconclusive"
    with pytest.raises(ValueError, match="expected_sign"):
        verdict(_interval(0.1, 0.2), 0)


def test_effect_size_is_cohens_dz_for_paired_differences():
    diff = np.random.default_rng(9).normal(0.4, 2.0, 400)
    interval = bootstrap(mean_statistic(diff), 400, num_resamples=4000, seed=0, vectorized=True)
    assert effect_size(interval, 400) == pytest.approx(diff.mean() / diff.std(ddof=1), rel=0.05)
    assert effect_size(_interval(-1, 1, estimate=0.0), 10) == 0.0


def test_samples_needed_follows_the_z_test_formula_and_is_about_right():
    """For a mean difference ``delta`` with per-sample sd ``sigma`` the paired z-test needs
    ``((z_.975 + z_.8) sigma / delta)^2`` samples; the bootstrap's noise gives the same n. Simulated at that n,
    about 80 % of intervals exclude 0."""
    rng = np.random.default_rng(10)
    delta, sigma = 0.2, 1.0
    diff = rng.normal(delta, sigma, 400)
    interval = bootstrap(mean_statistic(diff), 400, num_resamples=4000, seed=0, vectorized=True)
    measured_sd, measured_delta = diff.std(ddof=1), diff.mean()
    formula = ((1.959964 + 0.841621) * measured_sd / measured_delta) ** 2
    needed = samples_needed(interval, 400)
    assert needed == pytest.approx(formula, rel=0.06)
    theory = int(math.ceil(((1.959964 + 0.841621) * sigma / delta) ** 2))  # 197
    decided = sum(bootstrap(mean_statistic(rng.normal(delta, sigma, theory)), theory, num_resamples=400, seed=r,
                            vectorized=True).excludes(0) for r in range(150))
    assert abs(decided / 150 - 0.8) <= binomial_tolerance(0.8, 150) + 0.02, decided
    assert samples_needed(_interval(-1, 1, estimate=0.0), 10) == math.inf
