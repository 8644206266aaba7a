"""Best against best without selection bias (metrics.best_of_sweep), a guide's calibration from its logits
(metrics.calibration_intervals) and a rank correlation over guides (stats.correlation).

Oracles: torchmetrics' Fréchet distance (``metrics.frechet.frechet_distance`` on numpy moments), torchmetrics'
``MulticlassCalibrationError`` and scipy's ``spearmanr``; the cross-fitted value recomputed by hand from the halves;
a simulated Gaussian case for the intervals' coverage.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torchmetrics.classification import MulticlassCalibrationError

from lightning_guidance.metrics.best_of_sweep import Sweep, crossfit, fd_interval, halves
from lightning_guidance.metrics.intervals import hierarchical_metric_interval
from lightning_guidance.metrics.calibration_intervals import calibration_interval, integral_ece_of_logits
from lightning_guidance.metrics.frechet import frechet_distance
from lightning_guidance.stats.correlation import spearman, spearman_interval


def oracle_fd(gen: np.ndarray, real: np.ndarray) -> float:
    def moments(x):
        x = torch.as_tensor(x, dtype=torch.float64)
        return x.mean(0), torch.as_tensor(np.cov(x.numpy(), rowvar=False))
    return float(frechet_distance(*moments(real), *moments(gen)))


SETTINGS = {"fd_name": "fd_judge"}


def products(features: np.ndarray, labels: np.ndarray) -> dict:
    return {"ids": np.arange(len(labels)), "labels": labels, "features": features.astype(np.float32)}


def test_halves_split_every_class_in_two():
    labels = np.arange(60) % 10
    a, b = halves(labels)
    assert not set(a) & set(b) and sorted([*a, *b]) == list(range(60))
    assert all((labels[a] == c).sum() == (labels[b] == c).sum() == 3 for c in range(10))


def test_the_best_is_chosen_on_one_half_and_graded_on_the_other():
    """Candidate x fits the real data on half 0 of the ids and not on half 1, candidate y the reverse: the minimum over
    all ids flatters both, the cross-fitted value grades y on half 0 (where it is bad) and x on half 1."""
    rng = np.random.default_rng(1)
    labels = np.arange(200) % 10
    h0, h1 = halves(labels)
    real = rng.normal(size=(400, 8))
    good, bad = rng.normal(size=(200, 8)), rng.normal(2.0, 1.0, size=(200, 8))
    x, y = good.copy(), good.copy()
    x[h1], y[h0] = bad[h1], bad[h0]
    x[h0] += 0.05  # on half 0, x is slightly better than... y is bad there; on half 1 y is the good one
    sweep = Sweep({"x": products(x, labels), "y": products(y, labels)}, products(real, labels[:1].repeat(400)))
    fit = crossfit([(sweep, None)], num_resamples=50)
    assert fit.chosen[0]["a"] == ("y", "x")  # half 0 graded with the choice made on half 1, and vice versa
    want = (oracle_fd(y[h0], real) + oracle_fd(x[h1], real)) / 2
    assert fit.interval.estimate == pytest.approx(want, rel=1e-7)
    naive = min(oracle_fd(x[h0], real), oracle_fd(y[h1], real))  # chosen and graded on the same half
    assert fit.interval.estimate > naive + 1.0


def test_a_paired_comparison_of_a_method_with_itself_is_exactly_zero_and_seeds_give_a_seed_t_interval():
    rng = np.random.default_rng(2)
    labels = np.arange(100) % 10
    real = products(rng.normal(size=(200, 6)), np.arange(200) % 10)
    sweeps = [Sweep({s: products(rng.normal(s / 4, 1, size=(100, 6)), labels) for s in (1.0, 2.0, 4.0)}, real)
              for _ in range(3)]
    same = crossfit([(s, s) for s in sweeps], num_resamples=100)
    assert same.interval.estimate == same.interval.low == same.interval.high == 0.0
    assert same.interval.method == "seed_t" and same.num_samples == 100
    alone = fd_interval([(sweeps[0].candidates[1.0], None, real)], SETTINGS, num_resamples=100)
    assert alone.estimate == pytest.approx(oracle_fd(sweeps[0].candidates[1.0]["features"], real["features"]))
    with pytest.raises(ValueError, match="same sample ids"):
        other = Sweep({1.0: {**sweeps[0].candidates[1.0], "ids": np.arange(100) + 1}}, real)
        crossfit([(sweeps[0], other)])


def tempered_ece(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """torchmetrics' ECE of softmax(logits / T) per bucket, averaged over buckets."""
    out = []
    for k in range(logits.shape[1]):
        probs = (torch.as_tensor(logits[:, k]) / temperature).softmax(-1)
        out.append(float(MulticlassCalibrationError(num_classes=logits.shape[2], n_bins=10, norm="l1")(
            probs, torch.as_tensor(labels))))
    return float(np.mean(out))


def test_the_integral_ece_of_logits_matches_torchmetrics_at_any_temperature_and_on_resamples():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 150)
    logits = (rng.normal(size=(150, 3, 10)) + 3 * np.eye(10)[labels][:, None]).astype(np.float32)
    guide = {"ids": np.arange(150), "labels": labels, "logits": logits}
    for t in (0.5, 1.0, 3.0):
        assert integral_ece_of_logits(guide, t) == pytest.approx(tempered_ece(logits, labels, t), abs=1e-6)
    assert integral_ece_of_logits(guide, 1.0, figure="acc") == pytest.approx(
        (logits.argmax(-1) == labels[:, None]).mean())
    # the bootstrap's resamples, given as draw counts, are the figure of the drawn images (repeats included)
    interval = calibration_interval([(guide, None)], "ece", (2.0, 1.0), num_resamples=20, seed=5)
    draws = np.random.default_rng(5).integers(0, 150, size=(20, 150))
    replicates = [tempered_ece(logits[d], labels[d], 2.0) for d in draws]
    assert interval.standard_error == pytest.approx(np.std(replicates, ddof=1), rel=1e-5)
    paired = calibration_interval([(guide, guide)], "ece", (2.0, 2.0), num_resamples=20)
    assert paired.estimate == paired.low == paired.high == 0.0


def test_spearman_over_units_with_its_bootstrap_interval():
    rng = np.random.default_rng(6)
    x = rng.normal(size=20)
    y = x + rng.normal(0, 0.5, size=20)
    got = spearman_interval(x, y, num_resamples=500)
    assert got.estimate == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    assert 0 < got.low < got.estimate < got.high <= 1
    unrelated = spearman_interval(x, rng.normal(size=20), num_resamples=500)
    assert unrelated.low < 0 < unrelated.high
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError, match="at least 3"):
        spearman_interval([1, 2], [2, 1])


def test_the_centred_interval_covers_where_the_percentile_interval_of_a_frechet_distance_does_not():
    """Known answer: Gaussian features, the mean of the statistic over 300 fresh draws of (real, a, b). At 40 samples
    in 32 features a resample's repeats push its Fréchet distance up: the percentile interval of one set's distance
    misses the mean almost always; ``estimate ± z SE`` (what ``crossfit`` and ``fd_interval`` report) covers it, and
    covers the paired difference too."""
    rng = np.random.default_rng(7)
    d, n, m = 32, 40, 120
    root = np.linalg.cholesky(np.cov(rng.normal(size=(3 * d, d)), rowvar=False) + 0.1 * np.eye(d))

    def data():
        real, z = rng.normal(size=(m, d)) @ root.T, rng.normal(size=(n, d)) @ root.T
        return (products(real, np.arange(m) % 10), products(z + 0.15, np.arange(n) % 10),
                products(0.9 * z + 0.2 * rng.normal(size=(n, d)) @ root.T, np.arange(n) % 10))

    truth = np.mean([[oracle_fd(a["features"], real["features"]),
                      oracle_fd(a["features"], real["features"]) - oracle_fd(b["features"], real["features"])]
                     for real, a, b in (data() for _ in range(300))], axis=0)
    covered, percentile = np.zeros(2), 0
    for k in range(50):
        real, a, b = data()
        one, diff = (fd_interval([(a, other, real)], SETTINGS, num_resamples=200, seed=k) for other in (None, b))
        covered += [one.low <= truth[0] <= one.high, diff.low <= truth[1] <= diff.high]
        half = 1.959964 * one.standard_error  # the percentile interval of the same replicates, recovered below
        assert one.high - one.low == pytest.approx(2 * half)
        raw = hierarchical_metric_interval([(a, None, real)], "fd_judge", num_resamples=200, seed=k, **SETTINGS)
        percentile += raw.low <= truth[0] <= raw.high
    assert covered.min() / 50 >= 0.88, covered
    assert percentile / 50 <= 0.2, percentile
