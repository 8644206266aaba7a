"""GaussianMixture and the exact denoiser/classifier against scipy, torch.distributions, quadrature and autograd."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.toy import ExactMixtureClassifier, ExactMixtureDenoiser, GaussianMixture, two_class_mixture_1d

D = 2


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T * 0.3 + 0.05 * np.eye(d)


@pytest.fixture
def params():
    """Three 2-D components, class 0 owns one, class 1 owns two; unnormalised weights."""
    rng = np.random.default_rng(3)
    means = rng.normal(size=(3, D)) * 1.5
    covs = np.stack([_random_spd(rng, D) for _ in range(3)])
    weights = np.array([2.0, 1.0, 3.0])
    labels = np.array([0, 1, 1])
    return means, covs, weights, labels


@pytest.fixture
def mix(params):
    means, covs, weights, labels = params
    return GaussianMixture(torch.tensor(means), torch.tensor(covs), torch.tensor(weights), torch.tensor(labels))


def _scipy_component_pdfs(x, means, covs, abar=1.0):
    """N(x; sqrt(abar) mu_m, abar Sigma_m + (1 - abar) I) for each m, shape (N, M)."""
    eye = np.eye(means.shape[1])
    return np.stack([stats.multivariate_normal(math.sqrt(abar) * m, abar * c + (1 - abar) * eye).pdf(x)
                     for m, c in zip(means, covs)], axis=-1).reshape(len(x), -1)


def _torch_log_density(x, params, abar, cls=None):
    """Independent oracle built from torch.distributions: log p_t(x [| cls]) at a scalar abar (differentiable)."""
    means, covs, weights, labels = (torch.as_tensor(p) for p in params)
    keep = torch.ones(len(weights), dtype=torch.bool) if cls is None else labels == cls
    w = weights[keep] / weights[keep].sum()
    eye = torch.eye(means.shape[1], dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(means[keep].double() * math.sqrt(abar),
                                                  covs[keep].double() * abar + (1 - abar) * eye)
    return torch.logsumexp(comp.log_prob(x[:, None, :]) + w.log(), dim=1)


def _autograd_score(x, params, abar, cls=None):
    x = x.detach().double().requires_grad_(True)
    (g,) = torch.autograd.grad(_torch_log_density(x, params, abar, cls).sum(), x)
    return g


# ---- clean mixture ---------------------------------------------------------------------------------


def test_log_prob_matches_scipy_mixture(mix, params):
    means, covs, weights, labels = params
    x = np.random.default_rng(0).normal(size=(50, D)) * 2
    pdfs = _scipy_component_pdfs(x, means, covs)
    expected = np.log(pdfs @ (weights / weights.sum()))
    np.testing.assert_allclose(mix.log_prob(torch.tensor(x)).numpy(), expected, rtol=1e-10)
    # conditional density p(x | y), per-sample class
    y = np.random.default_rng(1).integers(0, 2, size=50)
    cond = np.array([pdfs[i, labels == y[i]] @ (weights[labels == y[i]] / weights[labels == y[i]].sum())
                     for i in range(50)])
    np.testing.assert_allclose(mix.log_prob(torch.tensor(x), torch.tensor(y)).numpy(), np.log(cond), rtol=1e-10)


def test_score_matches_autograd(mix, params):
    x = torch.randn(40, D, dtype=torch.float64) * 2
    torch.testing.assert_close(mix.score(x), _autograd_score(x, params, 1.0), rtol=1e-9, atol=1e-10)
    y = torch.tensor([0, 1] * 20)
    for cls in (0, 1):
        rows = y == cls
        torch.testing.assert_close(mix.score(x, y)[rows], _autograd_score(x[rows], params, 1.0, cls),
                                   rtol=1e-9, atol=1e-10)


def test_null_class_id_means_unconditional(mix):
    x = torch.randn(10, D, dtype=torch.float64)
    null = torch.full((10,), mix.num_classes)
    torch.testing.assert_close(mix.score(x, null), mix.score(x))
    torch.testing.assert_close(mix.log_prob(x, null), mix.log_prob(x))


def test_class_posterior_matches_bayes_with_scipy(mix, params):
    means, covs, weights, labels = params
    x = np.random.default_rng(2).normal(size=(30, D)) * 2
    joint = _scipy_component_pdfs(x, means, covs) * weights / weights.sum()
    per_class = np.stack([joint[:, labels == k].sum(1) for k in (0, 1)], axis=1)
    expected = per_class / per_class.sum(1, keepdims=True)
    post = mix.class_posterior(torch.tensor(x))
    np.testing.assert_allclose(post.numpy(), expected, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(mix.log_class_posterior(torch.tensor(x)).exp().numpy(), expected, rtol=1e-9)


def test_float32_in_float32_out(mix):
    x = torch.randn(5, D)
    assert mix.score(x).dtype == torch.float32 and mix.log_prob(x).dtype == torch.float32


def test_rejects_out_of_range_labels_and_bad_shapes(mix):
    x = torch.randn(3, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="class ids"):
        mix.log_prob(x, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="shape"):
        mix.log_prob(torch.randn(3, D + 1))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.zeros(1, 2), -torch.eye(2)[None], torch.ones(1), torch.zeros(1, dtype=torch.int64))


# ---- noising ---------------------------------------------------------------------------------------


def test_noised_density_matches_convolution_by_quadrature():
    """p_t(x_t) = ∫ p_0(x0) N(x_t; sqrt(abar) x0, 1 - abar) dx0, integrated numerically (1-D mixture)."""
    mu, sigma, abar = 0.7, 0.2, 0.6
    mix = two_class_mixture_1d(mu=mu, sigma=sigma)
    p0 = lambda x0: 0.5 * stats.norm.pdf(x0, -mu, sigma) + 0.5 * stats.norm.pdf(x0, mu, sigma)  # noqa: E731
    for xt in (-1.3, -0.2, 0.0, 0.45, 1.1):
        conv, _ = integrate.quad(lambda x0: p0(x0) * stats.norm.pdf(xt, math.sqrt(abar) * x0, math.sqrt(1 - abar)),
                                 -5, 5, points=[-mu, mu], epsabs=1e-13)
        got = mix.noised(abar).log_prob(torch.tensor([[xt]], dtype=torch.float64)).exp().item()
        assert got == pytest.approx(conv, rel=1e-7)
        got_rows = mix.noised_log_prob(torch.tensor([[xt]], dtype=torch.float64), torch.tensor([abar])).exp().item()
        assert got_rows == pytest.approx(conv, rel=1e-7)


def test_noised_matches_monte_carlo_forward_process(mix):
    abar, n = 0.3, 200_000
    gen = torch.Generator().manual_seed(0)
    x0, _ = mix.sample(n, generator=gen)
    xt = math.sqrt(abar) * x0.double() + math.sqrt(1 - abar) * torch.randn(n, D, dtype=torch.float64, generator=gen)
    noisy = mix.noised(abar)
    emp_mean, emp_cov = xt.mean(0), torch.cov(xt.T)
    sd = noisy.covariance().diagonal().sqrt()
    assert ((emp_mean - noisy.mean()).abs() < 5 * sd / math.sqrt(n)).all()
    torch.testing.assert_close(emp_cov, noisy.covariance(), rtol=0, atol=0.02)
    # moments of the forward process written out: mean sqrt(a) m0, cov a C0 + (1 - a) I
    torch.testing.assert_close(noisy.mean(), math.sqrt(abar) * mix.mean())
    torch.testing.assert_close(noisy.covariance(), abar * mix.covariance() + (1 - abar) * torch.eye(D))


def test_noised_score_with_per_row_abar_matches_autograd(mix, params):
    x = torch.randn(6, D, dtype=torch.float64) * 1.5
    abar = torch.tensor([0.999, 0.9, 0.5, 0.2, 0.05, 0.5], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])  # 2 = null id: unconditional
    got = mix.noised_score(x, abar, y)
    for i in range(6):
        cls = None if y[i] == 2 else int(y[i])
        torch.testing.assert_close(got[i:i + 1], _autograd_score(x[i:i + 1], params, float(abar[i]), cls),
                                   rtol=1e-9, atol=1e-10)


def test_noised_log_posterior_per_row_matches_scipy(mix, params):
    means, covs, weights, labels = params
    x = np.random.default_rng(4).normal(size=(4, D))
    abar = [0.95, 0.6, 0.3, 0.01]
    got = mix.noised_log_posterior(torch.tensor(x), torch.tensor(abar, dtype=torch.float64)).exp().numpy()
    for i, a in enumerate(abar):
        joint = _scipy_component_pdfs(x[i:i + 1], means, covs, a)[0] * weights
        expected = np.array([joint[labels == k].sum() for k in (0, 1)]) / joint.sum()
        np.testing.assert_allclose(got[i], expected, rtol=1e-9)


# ---- sampling --------------------------------------------------------------------------------------


def test_joint_sampling_moments_and_class_frequencies(mix, params):
    means, covs, weights, labels = params
    n = 200_000
    x, y = mix.sample(n, generator=torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32 and x.shape == (n, D) and y.dtype == torch.int64
    w = weights / weights.sum()
    mean = w @ means
    cov = np.einsum("m,mij->ij", w, covs + means[:, :, None] * means[:, None, :]) - np.outer(mean, mean)
    x64 = x.double().numpy()
    assert np.all(np.abs(x64.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / n))
    np.testing.assert_allclose(np.cov(x64.T), cov, atol=0.03)
    p1 = w[labels == 1].sum()
    assert abs(y.double().mean().item() - p1) < 5 * math.sqrt(p1 * (1 - p1) / n)


def test_conditional_sampling_draws_from_the_requested_class(mix, params):
    means, covs, weights, labels = params
    n = 100_000
    y_req = torch.tensor([0, 1]).repeat(n // 2)
    x, y = mix.sample(n, labels=y_req, generator=torch.Generator().manual_seed(2))
    assert torch.equal(y, y_req)
    # class 0 owns exactly one component: its samples are that Gaussian
    x0 = x[y == 0].double().numpy()
    np.testing.assert_allclose(x0.mean(0), means[0], atol=5 * np.sqrt(covs[0].diagonal().max() / len(x0)))
    np.testing.assert_allclose(np.cov(x0.T), covs[0], atol=0.02)
    w1 = weights[1:] / weights[1:].sum()
    np.testing.assert_allclose(x[y == 1].double().numpy().mean(0), w1 @ means[1:], atol=0.03)


def test_sampling_is_deterministic_given_the_generator(mix):
    a = mix.sample(100, generator=torch.Generator().manual_seed(7))
    b = mix.sample(100, generator=torch.Generator().manual_seed(7))
    c = mix.sample(100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_two_class_mixture_1d_values():
    mix = two_class_mixture_1d(mu=1.0, sigma=0.05)
    assert mix.num_classes == 2 and mix.means.flatten().tolist() == [-1.0, 1.0]
    assert mix.covs.flatten().tolist() == pytest.approx([0.0025, 0.0025])
    x = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    expected = np.log(0.5 * stats.norm.pdf(x.numpy()[:, 0], -1, 0.05) + 0.5 * stats.norm.pdf(x.numpy()[:, 0], 1, 0.05))
    np.testing.assert_allclose(mix.log_prob(x).numpy(), expected, rtol=1e-12)
    # by symmetry the posterior at 0 is 1/2, and at +-1 it is (numerically) certain
    post = mix.class_posterior(x)
    assert post[1].tolist() == pytest.approx([0.5, 0.5])
    assert post[0, 0] > 1 - 1e-12 and post[2, 1] > 1 - 1e-12


# ---- exact denoiser and classifier -----------------------------------------------------------------


def test_exact_denoiser_eps_is_scaled_autograd_score(mix, params):
    den = ExactMixtureDenoiser(mix)
    x = torch.randn(4, D, dtype=torch.float64)
    abar = torch.tensor([0.9, 0.4, 0.4, 0.05], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])  # 2 = null
    out = den(x, torch.zeros(4), abar, y)
    for i in range(4):
        cls = None if y[i] == 2 else int(y[i])
        expected = -math.sqrt(1 - abar[i]) * _autograd_score(x[i:i + 1], params, float(abar[i]), cls)
        torch.testing.assert_close(out.eps[i:i + 1], expected, rtol=1e-9, atol=1e-11)
    assert out.eps_cond is None and den.num_classes == 2


def test_exact_denoiser_x0_is_the_posterior_mean(mix, params):
    """Tweedie: E[x0 | x_t] = sum_m r_m(x_t) (mu_m + sqrt(a) Sigma_m S_m^{-1} (x_t - sqrt(a) mu_m)),
    with S_m = a Sigma_m + (1 - a) I the noised covariance and r_m the noised responsibilities."""
    means, covs, weights, labels = params
    a = 0.5
    x = np.random.default_rng(5).normal(size=(3, D))
    out = ExactMixtureDenoiser(mix)(torch.tensor(x), torch.zeros(3), torch.full((3,), a), torch.full((3,), 2))
    for i in range(3):
        r = _scipy_component_pdfs(x[i:i + 1], means, covs, a)[0] * weights
        r /= r.sum()
        s_inv = [np.linalg.inv(a * c + (1 - a) * np.eye(D)) for c in covs]
        post_means = [m + math.sqrt(a) * c @ si @ (x[i] - math.sqrt(a) * m) for m, c, si in zip(means, covs, s_inv)]
        np.testing.assert_allclose(out.x0[i].numpy(), r @ np.stack(post_means), rtol=1e-9, atol=1e-12)


def test_exact_denoiser_cfg_combines_cond_and_uncond(mix, params):
    x = torch.randn(3, D)
    abar = torch.tensor([0.7, 0.3, 0.1])
    y = torch.tensor([0, 1, 0])
    out = ExactMixtureDenoiser(mix, cfg_scale=3.0)(x, torch.zeros(3), abar, y)
    assert out.eps.dtype == torch.float32
    for i in range(3):
        b = math.sqrt(1 - abar[i].item())
        e_c = -b * _autograd_score(x[i:i + 1], params, float(abar[i]), int(y[i]))
        e_u = -b * _autograd_score(x[i:i + 1], params, float(abar[i]))
        torch.testing.assert_close(out.eps[i:i + 1].double(), e_u + 3.0 * (e_c - e_u), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.eps_uncond[i:i + 1].double(), e_u, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        ExactMixtureDenoiser(mix)(x, torch.zeros(3), abar, torch.tensor([0, 3, 1]))


def test_exact_classifier_logits_are_the_noised_posterior(mix, params):
    means, covs, weights, labels = params
    sched = VPSchedule.linear(100)
    clf = ExactMixtureClassifier(mix, sched)
    x = torch.randn(5, D, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5, 0.77, 1.0], dtype=torch.float64)
    post = clf(x, t).softmax(-1).numpy()
    for i in range(5):
        a = float(sched.abar(t[i] * 99))  # the schedule's own log-linear interpolation between steps
        joint = _scipy_component_pdfs(x[i:i + 1].numpy(), means, covs, a)[0] * weights
        expected = np.array([joint[labels == k].sum() for k in (0, 1)]) / joint.sum()
        np.testing.assert_allclose(post[i], expected, rtol=1e-9, atol=1e-15)


def test_exact_classifier_gradient_is_cond_minus_uncond_score(mix, params):
    """∇ log p_t(y | x) = ∇ log p_t(x | y) - ∇ log p_t(x), both from the torch.distributions oracle."""
    sched = VPSchedule.cosine(50)
    clf = ExactMixtureClassifier(mix, sched)
    x = torch.randn(3, D, dtype=torch.float32, requires_grad=True)
    t = torch.full((3,), 0.4)
    y = torch.tensor([0, 1, 1])
    logits = clf(x, t)
    assert logits.dtype == torch.float32
    (g,) = torch.autograd.grad(logits.log_softmax(-1).gather(1, y[:, None]).sum(), x)
    a = float(sched.abar(torch.tensor(0.4 * 49)))
    for i in range(3):
        xi = x[i:i + 1].detach()
        expected = _autograd_score(xi, params, a, int(y[i])) - _autograd_score(xi, params, a)
        torch.testing.assert_close(g[i:i + 1].double(), expected, rtol=1e-4, atol=1e-4)


def _oracle_log_prob(means, covs, weights, x, abar):
    """log sum_m w_m N(x; sqrt(abar) mu_m, abar Sigma_m + (1 - abar) I) with scipy, zero weights skipped."""
    out = np.zeros(len(x))
    for i, row in enumerate(x):
        out[i] = np.log(sum(w * stats.multivariate_normal.pdf(row, math.sqrt(abar) * m,
                                                              abar * c + (1 - abar) * np.eye(2))
                            for m, c, w in zip(means, covs, weights) if w > 0))
    return out


def test_a_class_without_components_and_a_zero_weight_component():
    """num_classes larger than the labels (class 2 owns nothing) and a component of weight 0: the noised mixture
    keeps num_classes; p_t(x | y) of each real class equals scipy's mixture of the class's components; class 2
    gets posterior 0 (log -inf) and is refused for sampling and densities with its message; the null id (3) is
    the unconditional law; sampling never picks the zero-weight component; the default number of classes is the
    largest label + 1; y as int32 or a scalar. Catches: num_classes dropped when noising, conditional densities
    computed unconditionally, a zero-weight component drawn, labels validated against the wrong bound."""
    means = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    covs = np.array([np.eye(2) * 0.5, np.eye(2), [[1.0, 0.3], [0.3, 0.8]]])
    weights, labels = np.array([0.6, 0.0, 0.4]), np.array([0, 0, 1])
    mix = GaussianMixture(torch.tensor(means), torch.tensor(covs), torch.tensor(weights), torch.tensor(labels),
                          num_classes=3)
    assert GaussianMixture(torch.tensor(means), torch.tensor(covs), torch.tensor(weights),
                           torch.tensor(labels)).num_classes == 2
    x = torch.tensor([[0.5, -0.2], [1.0, 2.0], [-1.0, 3.5]], dtype=torch.float64)
    for abar in (1.0, 0.3):
        noised, a = mix.noised(abar), torch.tensor(abar, dtype=torch.float64)
        assert noised.num_classes == 3
        for k in (0, 1):
            keep = labels == k
            expected = _oracle_log_prob(means[keep], covs[keep], weights[keep] / weights[keep].sum(), x.numpy(), abar)
            np.testing.assert_allclose(mix.noised_log_prob(x, a, torch.tensor([k] * 3)).numpy(),
                                       expected, rtol=1e-10)
            np.testing.assert_allclose(noised.log_prob(x, torch.tensor(k, dtype=torch.int32)).numpy(), expected,
                                       rtol=1e-10)
        unconditional = _oracle_log_prob(means, covs, weights, x.numpy(), abar)
        np.testing.assert_allclose(mix.noised_log_prob(x, a, torch.tensor([3, 3, 3])).numpy(),
                                   unconditional, rtol=1e-10)
        post = mix.noised_log_posterior(x, a)
        assert post.shape == (3, 3) and torch.isinf(post[:, 2]).all() and bool((post[:, 2] < 0).all())
        torch.testing.assert_close(post[:, :2].exp().sum(1), torch.ones(3, dtype=torch.float64))
    _, comps = mix.sample(400, labels=torch.zeros(400, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    x0, _ = mix.sample(400, labels=torch.zeros(400, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert (comps == 0).all() and float(x0[:, 0].max()) < 2.5  # the zero-weight component at (3, 0) never drawn
    with pytest.raises(ValueError, match=r"^cannot sample a class that owns no mixture component$"):
        mix.sample(2, labels=torch.tensor([2, 2]))
    with pytest.raises(ValueError, match=r"^p\(x \| y\) is undefined for a class that owns no mixture component$"):
        mix.log_prob(x, torch.tensor([2, 0, 0]))
    with pytest.raises(ValueError, match=r"^class ids must lie in 0\.\.3 for this mixture, got \[4\]$"):
        mix.log_prob(x, torch.tensor([4, 4, 4]))
    with pytest.raises(TypeError, match=r"^class labels must be an integer tensor, got torch\.float32$"):
        mix.log_prob(x, torch.tensor([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"^y must have one class id per row \(3\), got 2$"):
        mix.log_prob(x, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"^abar must be a scalar or have one entry per row \(3\), got 2$"):
        mix.noised_log_prob(x, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"^abar must lie in \(0, 1\]$"):
        mix.noised_log_prob(x, torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"^num_classes=1 is smaller than the largest component label \+ 1 \(2\)$"):
        GaussianMixture(torch.tensor(means), torch.tensor(covs), torch.tensor(weights), torch.tensor(labels),
                        num_classes=1)


# ---- precision and broadcasting contracts (each found by a mutation run: see docs/testing.md) -----------------


def test_exact_denoiser_cfg_scale_per_sample_and_in_float64(mix, params):
    """``eps = eps_u + s (eps_c - eps_u)`` row by row against the torch.distributions oracle at float64 precision,
    with s a Python float (0.1 and 7.3 have no exact float32 value) and a per-sample float64 tensor on a batch of
    two 2D points (batch = dim, so a wrongly shaped s still broadcasts). Catches: s built as float32 (the combination
    off by ~1e-8 relative), a per-sample s shaped (B,) instead of (B, 1) (row i's scale applied to coordinate i)."""
    x = torch.tensor([[0.3, -1.2], [1.5, 0.4]], dtype=torch.float64)
    abar = torch.tensor([0.6, 0.25], dtype=torch.float64)
    y = torch.tensor([0, 1])
    b = (1 - abar).sqrt()
    e_c = torch.cat([-b[i] * _autograd_score(x[i:i + 1], params, float(abar[i]), int(y[i])) for i in range(2)])
    e_u = torch.cat([-b[i] * _autograd_score(x[i:i + 1], params, float(abar[i])) for i in range(2)])
    for s in (0.1, 7.3, torch.tensor([0.1, 7.3], dtype=torch.float64)):
        out = ExactMixtureDenoiser(mix, cfg_scale=s)(x, torch.zeros(2), abar, y)
        expected = e_u + torch.as_tensor(s, dtype=torch.float64).reshape(-1, 1) * (e_c - e_u)
        torch.testing.assert_close(out.eps, expected, rtol=1e-12, atol=1e-13)


def test_exact_denoiser_eps_of_float32_input_is_exact_in_float64(mix, params):
    """``ExactMixtureDenoiser.eps`` promises the exact eps in float64 whatever the input dtype: a float32 x_t is
    evaluated as the float64 number it is. Catches: the score computed in the input's float32 (~1e-7 off)."""
    x = torch.tensor([[0.3, -1.2], [1.5, 0.4], [-0.7, 0.9]], dtype=torch.float32)
    abar = torch.tensor([0.6, 0.25, 0.9], dtype=torch.float64)
    got = ExactMixtureDenoiser(mix).eps(x, abar, None)
    assert got.dtype == torch.float64
    expected = torch.cat([-math.sqrt(1 - float(abar[i])) * _autograd_score(x[i:i + 1], params, float(abar[i]))
                          for i in range(3)])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)


def test_noised_density_at_a_python_float_abar_is_float64(mix, params):
    """A Python-float abar (0.3 has no exact float32 value) is used as the float64 number, checked against scipy.
    Catches: abar turned into a float32 tensor (log-density off by ~1e-8)."""
    means, covs, weights, labels = params
    x = np.random.default_rng(11).normal(size=(4, D))
    expected = np.log(_scipy_component_pdfs(x, means, covs, 0.3) @ (weights / weights.sum()))
    np.testing.assert_allclose(mix.noised_log_prob(torch.tensor(x), 0.3).numpy(), expected, rtol=1e-12)


def test_exact_classifier_with_one_time_for_the_whole_batch(mix, params):
    """``forward(x, t)`` with a scalar t for a batch of 3: every row at that time (scipy's posterior), the same as
    t repeated per row. Catches: the scalar abar not expanded to the batch (refused as one entry for 3 rows)."""
    means, covs, weights, labels = params
    sched = VPSchedule.linear(100)
    clf = ExactMixtureClassifier(mix, sched)
    x = torch.tensor(np.random.default_rng(12).normal(size=(3, D)))
    a = float(sched.abar(torch.tensor(0.3 * 99, dtype=torch.float64)))
    joint = _scipy_component_pdfs(x.numpy(), means, covs, a) * weights
    expected = np.stack([joint[:, labels == k].sum(1) for k in (0, 1)], 1) / joint.sum(1, keepdims=True)
    for t in (torch.tensor(0.3, dtype=torch.float64), 0.3):
        np.testing.assert_allclose(clf(x, t).softmax(-1).numpy(), expected, rtol=1e-9)
    torch.testing.assert_close(clf(x, torch.tensor(0.3, dtype=torch.float64)), clf(x, torch.full((3,), 0.3,
                                                                                                   dtype=torch.float64)))


def test_two_class_mixture_1d_defaults_are_the_calibration_studys():
    """The defaults (mu 1, sigma 0.05: well-separated classes, as Mixture1DDataModule's) against scipy's densities.
    Catches: a changed default sigma (the study's toy silently becoming entangled)."""
    mix = two_class_mixture_1d()
    x = np.array([-1.02, -0.5, 0.0, 0.97])
    expected = np.log(0.5 * stats.norm.pdf(x, -1, 0.05) + 0.5 * stats.norm.pdf(x, 1, 0.05))
    np.testing.assert_allclose(mix.log_prob(torch.tensor(x[:, None])).numpy(), expected, rtol=1e-12)
