"""The exact-distribution scores: sliced Wasserstein against scipy's 1D Wasserstein distance, the other scores on
exact samples of the fractal (where they must show a perfect sampler) and on deliberately wrong ones."""

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_guidance.toy import fractal_2d
from lightning_guidance.toy.exact_scores import score_samples, sliced_wasserstein


@pytest.mark.parametrize("n, m", [(200, 200), (100, 300), (300, 150), (100, 301), (7, 13)])
def test_sliced_wasserstein_in_one_dimension_is_scipys_wasserstein(n, m):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, 1, generator=g), 0.5 + 2 * torch.rand(m, 1, generator=g)
    got = sliced_wasserstein(a, b, num_projections=3, p=1)  # every 1D direction is +-1: W1 is the same
    assert float(got) == pytest.approx(scipy.stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy()), rel=1e-9)


def test_reference_size_is_a_setting(fractal):
    """The study's settings (2000 exact samples per class, sliced W1): a sample set that is the reference law scores
    close to it, one shrunk to a point per class far from it; the reference size changes the reference only."""
    x, y = fractal.sample(300, labels=torch.arange(300) % 2, generator=torch.Generator().manual_seed(8))
    s = score_samples(fractal, x, y, reference_per_class=2000, num_projections=64, p=1)
    means = torch.stack([x[y == k].mean(0) for k in (0, 1)])[y]
    shrunk = score_samples(fractal, means + 0.01 * (x - means), y, reference_per_class=2000, num_projections=64, p=1)
    assert s["sliced_wasserstein"] < 0.1 < shrunk["sliced_wasserstein"]
    assert s["num_samples"] == 300 and s["mean_log_density"] == score_samples(fractal, x, y)["mean_log_density"]


def test_sliced_wasserstein_of_a_shift_is_the_projected_shift():
    """Moving a point set by v moves every projection by <v, theta>: SW_2 = sqrt(mean <v, theta>^2) = |v| / sqrt(D)
    (for many directions)."""
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    v = torch.tensor([3.0, -4.0])
    got = sliced_wasserstein(x, x + v, num_projections=20000, generator=torch.Generator().manual_seed(2))
    assert float(got) == pytest.approx(5.0 / np.sqrt(2), rel=0.02)


@pytest.fixture(scope="module")
def fractal():
    return fractal_2d()


def test_exact_samples_score_as_the_true_distribution(fractal):
    x, y = fractal.sample(4000, labels=torch.arange(4000) % 2, generator=torch.Generator().manual_seed(3))
    s = score_samples(fractal, x, y, seed=4)
    bayes_error = float((1 - fractal.class_posterior(x.double()).max(dim=1).values).mean())
    assert s["wrong_class_fraction"] < 0.05 and s["wrong_class_fraction"] == pytest.approx(bayes_error, abs=0.02)
    assert s["spread"] == pytest.approx(1.0, abs=0.05)
    assert s["recall"] > 0.9  # a fresh draw of the same law is covered by the k-NN balls of another
    assert s["sliced_wasserstein"] < 0.05
    assert s["mean_log_density"] == pytest.approx(float(fractal.log_prob(x.double(), y).mean()))


def test_wrong_and_collapsed_samples_are_caught(fractal):
    x, y = fractal.sample(2000, labels=torch.arange(2000) % 2, generator=torch.Generator().manual_seed(5))
    exact = score_samples(fractal, x, y, seed=6)
    swapped = score_samples(fractal, x, 1 - y, seed=6)
    assert swapped["wrong_class_fraction"] > 0.95 and swapped["mean_log_density"] < exact["mean_log_density"] - 5
    means = torch.stack([x[y == k].mean(0) for k in (0, 1)])[y]
    collapsed = score_samples(fractal, means + 0.2 * (x - means), y, seed=6)  # shrunk towards each class mean
    assert collapsed["spread"] == pytest.approx(0.2, abs=0.02)
    assert collapsed["sliced_wasserstein"] > 3 * exact["sliced_wasserstein"]
    assert collapsed["recall"] < 0.6 * exact["recall"]
    one_branch = x[y == 0][:1], torch.zeros(1, dtype=torch.long)  # every sample of class 0 at one point
    assert score_samples(fractal, one_branch[0].repeat(8, 1), one_branch[1].repeat(8), seed=6)["recall"] < 0.01


def test_knn_recall_by_hand():
    from lightning_guidance.toy.exact_scores import knn_recall

    generated = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    # k = 1 radii: 1, 1, 2; reference points at 0.5 (inside), 4.9 (inside the ball of 3 of radius 2), 5.5 (outside)
    reference = torch.tensor([[0.5, 0.0], [4.9, 0.0], [5.5, 0.0]])
    assert float(knn_recall(generated, reference, k=1)) == pytest.approx(2 / 3)


def test_best_at_equal_wrong_class_rate_keeps_each_methods_best_scale_within_the_budget():
    """The study's variant comparison (section 3, the fractal benchmark): per method, among its scales whose wrong-class
    rate is within the budget, the one with the highest mean log-density; methods with no scale inside are left out."""
    from lightning_guidance.toy.exact_scores import best_at_equal_wrong_class_rate

    def sc(log_p, wrong):
        return {"mean_log_density": log_p, "wrong_class_fraction": wrong}

    scores = {"cfg": {"1": sc(-3.0, 0.2), "2": sc(-2.0, 0.1), "4": sc(-1.0, 0.05)},
              "apg": {"2": sc(-0.5, 0.3), "4": sc(-1.5, 0.1)},
              "rescale": {"2": sc(0.0, 0.5)}}
    ranked = best_at_equal_wrong_class_rate(scores, budget=0.1)
    assert [(m, s) for m, s, _ in ranked] == [("cfg", "4"), ("apg", "4")]
    assert [m for m, _, _ in best_at_equal_wrong_class_rate(scores, budget=1.0)] == ["rescale", "apg", "cfg"]


@pytest.mark.parametrize("mu, sigma", [(0.1, 0.05), (1.0, 0.05), (0.5, 0.3)])
def test_exact_conditional_rows_of_the_1d_mixture_in_closed_form(mu, sigma):
    """The closed forms against scipy (the normal law's cdf and entropy) and against score_samples on 200 000 exact
    samples (Monte Carlo, within 4 standard errors)."""
    from lightning_guidance.toy import exact_conditional_scores, two_class_mixture_1d

    exact = exact_conditional_scores(mu, sigma)
    assert exact["wrong_class_fraction"] == pytest.approx(scipy.stats.norm.cdf(-mu / sigma), rel=1e-12)
    assert exact["mean_log_density"] == pytest.approx(-scipy.stats.norm(mu, sigma).entropy(), rel=1e-12)
    mixture = two_class_mixture_1d(mu, sigma)
    n = 200_000
    x, y = mixture.sample(n, labels=torch.arange(n) % 2, generator=torch.Generator().manual_seed(0))
    log_p = mixture.log_prob(x, y)  # what score_samples averages, on all 200 000 (its recall would need n^2 memory)
    wrong = (mixture.class_posterior(x).argmax(dim=1) != y).double()
    p = exact["wrong_class_fraction"]
    assert abs(float(wrong.mean()) - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12
    assert abs(float(log_p.mean()) - exact["mean_log_density"]) <= 4 * np.sqrt(0.5 / n)  # var of log N: 1/2
    assert float(log_p.median()) == pytest.approx(exact["median_log_density"], abs=0.01)
    few = score_samples(mixture, x[:4000], y[:4000], reference_per_class=100, num_projections=1)
    assert abs(few["wrong_class_fraction"] - p) <= 4 * np.sqrt(p * (1 - p) / 4000) + 1e-12


def test_exact_wrong_class_share_at_mu_0_1_is_0_023():
    from lightning_guidance.toy import exact_conditional_scores

    assert round(exact_conditional_scores(0.1, 0.05)["wrong_class_fraction"], 3) == 0.023


def test_per_sample_scores_average_to_the_table(fractal):
    from lightning_guidance.toy.exact_scores import per_sample_scores

    x, y = fractal.sample(200, labels=torch.arange(200) % 2, generator=torch.Generator().manual_seed(3))
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    rows, table = per_sample_scores(fractal, x, y), score_samples(fractal, x, y)
    assert float(rows["log_density"].mean()) == table["mean_log_density"]
    assert float(rows["log_density"].median()) == table["median_log_density"]
    assert float(rows["wrong_class"].mean()) == table["wrong_class_fraction"] > 0


def direct_scores(mixture, x, y, reference_per_class, seed, num_projections, p):
    """The scores computed directly on a point set with torch (sliced_wasserstein, knn_recall, torch's median and
    variance), drawing the exact reference and the directions in score_samples' order."""
    from lightning_guidance.toy.exact_scores import knn_recall, per_sample_scores

    rows, g = per_sample_scores(mixture, x, y), torch.Generator().manual_seed(seed)
    sw, spread, recall = [], [], []
    for k in (0, 1):
        mine = x[y == k].double()
        m = reference_per_class
        exact = mixture.sample(m, labels=torch.full((m,), k), generator=g)[0].double()
        sw.append(float(sliced_wasserstein(mine, exact, num_projections, p=p, generator=g)))
        spread.append(float((mine.var(dim=0).sum() / exact.var(dim=0).sum()).sqrt()))
        recall.append(float(knn_recall(mine, exact)))
    return {"mean_log_density": float(rows["log_density"].mean()), "median_log_density":
            float(rows["log_density"].median()), "wrong_class_fraction": float(rows["wrong_class"].mean()),
            "sliced_wasserstein": np.mean(sw), "spread": np.mean(spread), "recall": np.mean(recall)}


def test_a_resampled_score_is_the_score_of_the_resampled_set(fractal):
    """ExactScores' statistics (the bootstrap's view of the scores) on resampled ids equal the scores computed
    directly on the resampled points (same seed: same reference and directions), class by class."""
    from lightning_guidance.toy.exact_scores import ExactScores

    n = 60
    x, y = fractal.sample(2 * n, labels=torch.arange(2 * n) % 2, generator=torch.Generator().manual_seed(5))
    x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    settings = {"reference_per_class": 90, "seed": 3, "num_projections": 16, "p": 1}
    scores = ExactScores(fractal, x, y, **settings)
    assert scores.values() == pytest.approx({**direct_scores(fractal, x, y, **settings), "num_samples": 2 * n})
    rng = np.random.default_rng(0)
    idx = [rng.integers(0, n, size=(1, n)) for _ in (0, 1)]
    by_class = [torch.nonzero(y == c)[:, 0][torch.from_numpy(i[0])] for c, i in zip((0, 1), idx)]
    resampled = torch.cat(by_class)
    direct = direct_scores(fractal, x[resampled], y[resampled], **settings)
    for key in ("mean_log_density", "median_log_density", "wrong_class_fraction", "sliced_wasserstein", "spread"):
        assert float(scores.statistic(key)(*idx)[0]) == pytest.approx(direct[key], rel=1e-12, abs=1e-12), key
    assert scores.sizes("recall") == (90, 90) and scores.sizes("spread") == (n, n)


def test_boundary_path_distance_by_hand():
    """Two constructed 1D paths of three states: the mean over the states of the signed distance, in units of mu."""
    from lightning_guidance.toy.mixture1d import boundary_path_distance

    trajectory = torch.tensor([[[0.5], [0.2]], [[-0.1], [0.4]], [[-0.6], [1.0]]])  # (steps + 1, N = 2, 1)
    labels = torch.tensor([0, 1])  # sample 0 asks for class 0 (x < 0), sample 1 for class 1
    got = boundary_path_distance(trajectory, labels, mu=0.5)
    assert got.tolist() == pytest.approx([(-0.5 + 0.1 + 0.6) / 3 / 0.5, (0.2 + 0.4 + 1.0) / 3 / 0.5])
    with pytest.raises(ValueError, match="trajectory"):
        boundary_path_distance(trajectory[:, :1], labels, mu=0.5)
