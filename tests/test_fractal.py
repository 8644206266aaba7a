"""The 2D fractal (docs/math.md §6, after Karras et al. 2024's toy example): structure, hand-derived components, oracles.

The expected component values below are derived in the test from the formulas and the draw order of
``numpy.random.RandomState(2)`` (one dist draw per branch, then one angle draw per child just before that child
grows, depth first, class 0's 127 branches before class 1's), not read from the implementation.
"""

import math

import numpy as np
import pytest
import torch

from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.toy import ExactMixtureClassifier, ExactMixtureDenoiser, fractal_2d

ORIGIN = np.array([0.0030, 0.0325])
SCALE = np.array([1.3136, 1.3844])
BRANCHES_PER_CLASS = 2 ** 7 - 1  # depths 0..6
DRAWS_PER_CLASS = 3 * BRANCHES_PER_CLASS  # each branch: its length, then the angles of its two children
U = np.linspace(0.07, 0.93, 8)


@pytest.fixture(scope="module")
def fractal():
    return fractal_2d()


@pytest.fixture(scope="module")
def draws():
    return np.random.RandomState(2).randn(2 * DRAWS_PER_CLASS)


def _branch(pos, angle, depth, dist_draw):
    """Means (8, 2), covariance (2, 2) and unnormalised weight of one branch, written out from docs/math.md §6."""
    d = np.array([math.cos(angle), math.sin(angle)])
    dist = 0.292 * 0.8 ** depth * (0.2 * dist_draw + 1)
    thick = 0.2 * 0.8 ** depth / dist
    size = SCALE * dist * 0.06
    cov = (np.outer(d, d) + (np.eye(2) - np.outer(d, d)) * thick ** 2) * np.outer(size, size)
    means = np.stack([(pos + d * dist * u) * SCALE for u in U])
    return means, cov, dist * 0.5 ** depth, pos + d * dist


def test_component_count_labels_and_weights(fractal):
    assert fractal.num_components == 2 * BRANCHES_PER_CLASS * 8 == 2032
    assert fractal.num_classes == 2
    assert (fractal.component_labels[:1016] == 0).all() and (fractal.component_labels[1016:] == 1).all()
    assert fractal.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (fractal.weights > 0).all()


def test_covariances_symmetric_positive_definite(fractal):
    torch.testing.assert_close(fractal.covs, fractal.covs.transpose(1, 2), rtol=0, atol=0)
    assert (torch.linalg.eigvalsh(fractal.covs) > 0).all()


def test_class_means_point_along_their_root_angles(fractal):
    for cls, sign in ((0, 1), (1, -1)):
        keep = fractal.component_labels == cls
        w = fractal.weights[keep] / fractal.weights[keep].sum()
        m = w @ fractal.means[keep]
        assert (sign * m > 0.1).all(), f"class {cls} mean {m.tolist()}"  # pi/4: up-right; 5pi/4: down-left


def test_root_branch_of_class_0_by_hand(fractal, draws):
    means, cov, weight, _ = _branch(ORIGIN, math.pi / 4, 0, draws[0])
    np.testing.assert_allclose(fractal.means[:8].numpy(), means, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fractal.covs[:8].numpy(), np.broadcast_to(cov, (8, 2, 2)), rtol=1e-12, atol=1e-18)
    assert fractal.weights[:8].std().item() == pytest.approx(0.0, abs=1e-15)  # one weight per branch
    # first draw of RandomState(2).randn(), a well-known value: fixes the seed independently of numpy's code path
    assert draws[0] == pytest.approx(-0.4167578474054706, abs=1e-15)
    assert fractal.means[0].tolist() == pytest.approx(((ORIGIN + np.array([1, 1]) / math.sqrt(2) * 0.292
                                                        * (0.2 * draws[0] + 1) * 0.07) * SCALE).tolist(), abs=1e-15)


def test_depth_first_order_of_draws(fractal, draws):
    root_means, _, root_w, tip = _branch(ORIGIN, math.pi / 4, 0, draws[0])
    # first child (sign +1): angle from draw 1, length from draw 2, components 8..15
    angle_plus = math.pi / 4 + (0.2 * draws[1] + 1)
    means, cov, w, _ = _branch(tip, angle_plus, 1, draws[2])
    np.testing.assert_allclose(fractal.means[8:16].numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(fractal.covs[8].numpy(), cov, rtol=1e-12)
    assert (fractal.weights[8] / fractal.weights[0]).item() == pytest.approx(w / root_w, rel=1e-12)
    # second child (sign -1): its angle is drawn only after the whole +1 subtree (63 branches, 189 draws)
    after_subtree = 2 + 3 * 63
    angle_minus = math.pi / 4 - (0.2 * draws[after_subtree] + 1)
    means, _, w, _ = _branch(tip, angle_minus, 1, draws[after_subtree + 1])
    first = 8 * (1 + 63)
    np.testing.assert_allclose(fractal.means[first:first + 8].numpy(), means, rtol=1e-12)
    assert (fractal.weights[first] / fractal.weights[0]).item() == pytest.approx(w / root_w, rel=1e-12)


def test_class_1_root_follows_all_of_class_0(fractal, draws):
    means, cov, w, _ = _branch(ORIGIN, 5 * math.pi / 4, 0, draws[DRAWS_PER_CLASS])
    np.testing.assert_allclose(fractal.means[1016:1024].numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(fractal.covs[1016].numpy(), cov, rtol=1e-12)
    _, _, root_w, _ = _branch(ORIGIN, math.pi / 4, 0, draws[0])
    assert (fractal.weights[1016] / fractal.weights[0]).item() == pytest.approx(w / root_w, rel=1e-12)


def test_reference_normalisation_centres_the_data_at_std_half(fractal):
    """origin/scale in the reference make the two-class distribution zero-mean with per-axis std 0.5 (sigma_data)."""
    assert fractal.mean().abs().max().item() < 2e-3
    np.testing.assert_allclose(fractal.covariance().diagonal().numpy(), [0.25, 0.25], atol=2e-3)


def test_single_class_keeps_ids_and_renormalises(fractal):
    only1 = fractal_2d(classes=(1,))
    assert only1.num_components == 1016 and only1.num_classes == 2
    assert (only1.component_labels == 1).all()
    assert only1.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(only1.means, fractal.means[1016:])
    torch.testing.assert_close(only1.weights, fractal.weights[1016:] / fractal.weights[1016:].sum())
    with pytest.raises(ValueError, match="subset"):
        fractal_2d(classes=(2,))
    with pytest.raises(ValueError, match="no mixture component"):
        only1.log_prob(torch.zeros(1, 2), torch.tensor([0]))


def _oracle_log_density(x, mix, abar, cls=None):
    """torch.distributions oracle for log p_t(x [| cls]) of the fractal (independent of GaussianMixture's math)."""
    keep = torch.ones(mix.num_components, dtype=torch.bool) if cls is None else mix.component_labels == cls
    w = mix.weights[keep] / mix.weights[keep].sum()
    eye = torch.eye(2, dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(mix.means[keep] * math.sqrt(abar),
                                                  mix.covs[keep] * abar + (1 - abar) * eye)
    return torch.logsumexp(comp.log_prob(x[:, None, :]) + w.log(), dim=1)


@pytest.mark.parametrize("abar", [0.999, 0.7, 0.1])
def test_exact_denoiser_on_fractal_matches_autograd(fractal, abar):
    x = (torch.randn(8, 2, dtype=torch.float64) * 0.5).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # 2 = null
    out = ExactMixtureDenoiser(fractal)(x.detach(), torch.zeros(8), torch.full((8,), abar, dtype=torch.float64), y)
    for cls in (0, 1, None):
        rows = y == (2 if cls is None else cls)
        (g,) = torch.autograd.grad(_oracle_log_density(x[rows], fractal, abar, cls).sum(), x)
        torch.testing.assert_close(out.eps[rows], -math.sqrt(1 - abar) * g[rows], rtol=1e-7, atol=1e-8)


def test_exact_classifier_on_fractal_matches_bayes(fractal):
    sched = VPSchedule.linear(1000)
    x = torch.randn(16, 2, dtype=torch.float64) * 0.6
    t = torch.linspace(0, 1, 16, dtype=torch.float64)
    post = ExactMixtureClassifier(fractal, sched)(x, t).softmax(-1)
    for i in range(0, 16, 5):
        a = float(sched.abar(t[i] * 999))
        lp = torch.stack([_oracle_log_density(x[i:i + 1], fractal, a, k) for k in (0, 1)], dim=1)
        prior = torch.stack([fractal.weights[fractal.component_labels == k].sum() for k in (0, 1)])
        expected = (lp + prior.log()).softmax(-1)
        torch.testing.assert_close(post[i:i + 1], expected, rtol=1e-8, atol=1e-12)


def test_every_component_by_hand(fractal, draws):
    """All 2032 components (means, covariances, normalised weights) from docs/math.md §6 and the draw order of the
    module docstring: per branch its length draw, then for each child (+1 first) its angle draw just before it
    grows; children turn by 0.7^depth (0.2 z + 1); depth 0..6; class 0's tree, then class 1's at 5 pi / 4.
    Catches: any geometry constant (0.292, 0.8, 0.7, 0.2, 0.06, the 0.07..0.93 spacing, the 0.5^depth weights) or
    the depth limit changed where the three hand-checked branches above do not look."""
    stream = iter(draws)
    means, covs, weights = [], [], []

    def grow(pos, angle, depth):
        if depth >= 7:
            return
        m, c, w, tip = _branch(pos, angle, depth, next(stream))
        means.append(m)
        covs.extend([c] * 8)
        weights.extend([w] * 8)
        for sign in (1, -1):
            grow(tip, angle + sign * 0.7 ** depth * (0.2 * next(stream) + 1), depth + 1)

    grow(ORIGIN, math.pi / 4, 0)
    grow(ORIGIN, 5 * math.pi / 4, 0)
    assert next(stream, None) is None  # every draw used, none left over
    np.testing.assert_allclose(fractal.means.numpy(), np.concatenate(means), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fractal.covs.numpy(), np.stack(covs), rtol=1e-12, atol=1e-18)
    weights = np.array(weights)
    np.testing.assert_allclose(fractal.weights.numpy(), weights / weights.sum(), rtol=1e-12, atol=0)
