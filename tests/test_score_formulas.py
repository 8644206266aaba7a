"""The toy sample scores (``toy.exact_scores``) on the 1D two-class mixture, where every
score has a closed form or an oracle: scipy's normal log-density, the Bayes rule of two
equal Gaussians (the nearer mean wins), sklearn's nearest neighbours, and exact identities of the 1D Wasserstein
distance under shifts and of the spread under scaling. Fast (a second): the fractal versions in
test_exact_scores.py take a minute."""

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.neighbors import NearestNeighbors

from lightning_guidance.toy import two_class_mixture_1d
from lightning_guidance.toy import exact_scores

MU, SIGMA = 3.0, 0.5


@pytest.fixture(scope="module")
def mixture():
    return two_class_mixture_1d(mu=MU, sigma=SIGMA)


def draws(mixture, n, seed, label=None):
    labels = torch.arange(n) % 2 if label is None else torch.full((n,), label)
    x, y = mixture.sample(n, labels=labels, generator=torch.Generator().manual_seed(seed))
    return x.double(), y


def scipy_log_density(x, y):
    """log N(x; -+MU, SIGMA^2) of each sample's own class (class 0 at -MU, class 1 at +MU)."""
    means = np.where(y.numpy() == 1, MU, -MU)
    return scipy.stats.norm.logpdf(x[:, 0].numpy(), means, SIGMA)


def bayes_wrong(x, y):
    """The Bayes classifier of two equal-weight, equal-variance Gaussians picks the nearer mean: the sign of x."""
    return float(((x[:, 0] > 0).long() != y).double().mean())


@pytest.mark.parametrize("reference_per_class", [None, 150])
def test_log_density_and_wrong_class_fraction_are_the_closed_forms(mixture, reference_per_class):
    """Catches: a score that reads log p(x) instead of log p(x | y), the posterior's argmax compared with the wrong
    labels, a median/mean swap, or samples cast before scoring so that a class is mixed up."""
    x, y = draws(mixture, 200, seed=1)
    y = y.clone()
    y[:50] = 1 - y[:50]  # a quarter of the samples generated for the other class
    s = exact_scores.score_samples(mixture, x.float(), y.int(), reference_per_class=reference_per_class, seed=2,
                                   num_projections=8)
    lower_median = np.sort(scipy_log_density(x, y))[(200 - 1) // 2]  # torch's median: the lower middle value
    assert s["median_log_density"] == pytest.approx(float(lower_median), rel=1e-6)
    assert s["num_samples"] == 200
    assert s["mean_log_density"] == pytest.approx(float(scipy_log_density(x, y).mean()), rel=1e-6)
    assert s["wrong_class_fraction"] == pytest.approx(bayes_wrong(x, y), abs=1e-12)
    assert 0.2 < s["wrong_class_fraction"] < 0.3


@pytest.mark.parametrize("reference_per_class", [None, 70, 2000])
def test_sliced_wasserstein_score_moves_by_the_shift(mixture, reference_per_class):
    """In 1D, once every shifted sample's quantile lies above the reference's, W_1(x + d, ref) = mean(x) + d -
    mean(ref) exactly, so two far shifts differ by exactly their difference (the reference is the same: same seed);
    W_2^2(x + d, ref) is quadratic in d with leading coefficient 1, so its second difference at step 1 is 2.
    Catches: the sliced distance computed against the wrong class's reference, a reference reseeded per call, the
    order p not passed on, a reference of another size than asked."""
    x, y = draws(mixture, 100, seed=3, label=1)

    def sw(shift, p):
        return exact_scores.score_samples(mixture, x + shift, y, reference_per_class=reference_per_class, seed=4,
                                          num_projections=4, p=p)["sliced_wasserstein"]
    assert sw(20.0, 1) - sw(10.0, 1) == pytest.approx(10.0, rel=1e-9)
    f0, f1, f2 = (sw(d, 2) ** 2 for d in (0.0, 1.0, 2.0))
    assert f2 - 2 * f1 + f0 == pytest.approx(2.0, rel=1e-9)
    assert sw(0.0, 1) < 0.3 * SIGMA  # samples of the class itself: close to its exact reference
    assert sw(0.0, 2) == exact_scores.score_samples(mixture, x, y, reference_per_class=reference_per_class, seed=4,
                                                    num_projections=4)["sliced_wasserstein"]  # p = 2 by default


def test_spread_scales_with_the_samples_and_recall_sees_collapse(mixture):
    """spread = sqrt(tr Cov(samples) / tr Cov(exact)): shrinking the samples about their class means by a multiplies
    it by exactly a (the reference is the same for the same seed). Recall of exact samples is high, of samples
    collapsed onto a point near zero. Catches: variance for std (a^2), the ratio inverted, recall's radius taken from
    the reference instead of the generated samples."""
    x, y = draws(mixture, 300, seed=5)
    centre = torch.where(y == 1, MU, -MU).double().view(-1, 1)
    base = exact_scores.score_samples(mixture, x, y, seed=6, num_projections=4)
    half = exact_scores.score_samples(mixture, centre + 0.5 * (x - centre), y, seed=6, num_projections=4)
    collapsed = exact_scores.score_samples(mixture, centre + 1e-3 * (x - centre), y, seed=6, num_projections=4)
    assert half["spread"] == pytest.approx(0.5 * base["spread"], rel=1e-9)
    assert base["spread"] == pytest.approx(1.0, abs=0.15)
    assert base["recall"] > 0.9
    assert collapsed["recall"] < 0.05


def test_knn_recall_equals_sklearn_nearest_neighbours():
    """Improved recall (Kynkäänniemi et al. 2019): a reference point counts when it is inside some generated point's
    ball of radius = distance to that point's k-th nearest generated neighbour (itself excluded). Oracle: sklearn's
    NearestNeighbors. Catches: k-th neighbour off by one (the point itself counted), balls around the reference."""
    g = torch.Generator().manual_seed(7)
    gen, ref = torch.randn(60, 2, generator=g, dtype=torch.float64), 1.5 * torch.randn(80, 2, generator=g,
                                                                                         dtype=torch.float64)
    for k in (1, 3, 5):
        radius = NearestNeighbors(n_neighbors=k + 1).fit(gen.numpy()).kneighbors(gen.numpy())[0][:, k]
        dist = np.linalg.norm(ref.numpy()[:, None, :] - gen.numpy()[None, :, :], axis=2)
        expected = float((dist <= radius[None, :]).any(axis=1).mean())
        assert float(exact_scores.knn_recall(gen, ref, k=k)) == pytest.approx(expected, abs=1e-12)
    assert float(exact_scores.knn_recall(gen, ref)) == pytest.approx(  # k = 3 by default
        float(exact_scores.knn_recall(gen, ref, k=3)), abs=0)
    with pytest.raises(ValueError, match="recall with k=3 needs more than 3 generated samples, got 3"):
        exact_scores.knn_recall(gen[:3], ref)


def test_sliced_wasserstein_of_a_2d_shift_with_few_directions():
    """Shifting a 2D set by v moves each projection by <v, theta>: SW_1 = mean |<v, theta>| -> 2|v|/pi over uniform
    directions (64 directions: within 15 %); the same generator state gives the same directions. Catches:
    unnormalised directions, a shift projected on one axis only, the generator not used."""
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    v = torch.tensor([3.0, -4.0], dtype=torch.float64)
    got = exact_scores.sliced_wasserstein(x, x + v, num_projections=64, p=1,
                                          generator=torch.Generator().manual_seed(1))
    assert float(got) == pytest.approx(2 * 5.0 / np.pi, rel=0.15)
    y = torch.randn(70, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)

    def sw(seed):
        g = torch.Generator().manual_seed(seed)
        return float(exact_scores.sliced_wasserstein(x, y, num_projections=8, generator=g))
    assert sw(1) == sw(1) and sw(1) != sw(2)


def test_sliced_wasserstein_is_scipys_w1_averaged_over_256_default_directions():
    """With the default number of directions (256, documented) and p = 1, SW is the mean over the generator's first
    256 normalised Gaussian directions of scipy's 1D Wasserstein-1 between the projections. Catches: another default
    count, directions not normalised, W_p of sorted projections misaligned for unequal set sizes."""
    a = torch.randn(40, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b = torch.randn(55, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1.3 + 0.2
    theta = torch.randn(3, 256, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    theta = (theta / theta.norm(dim=0)).numpy()
    pa, pb = a.numpy() @ theta, b.numpy() @ theta
    expected = np.mean([scipy.stats.wasserstein_distance(pa[:, j], pb[:, j]) for j in range(256)])
    got = exact_scores.sliced_wasserstein(a, b, p=1, generator=torch.Generator().manual_seed(5))
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_sliced_wasserstein_refuses_mismatched_point_sets():
    module = exact_scores
    with pytest.raises(ValueError, match=r"sliced_wasserstein needs .*\(5, 2\) and \(5, 3\)"):
        module.sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(5,\) and \(5, 1\)"):
        module.sliced_wasserstein(torch.zeros(5), torch.zeros(5, 1))
