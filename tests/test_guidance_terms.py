"""Guidance terms against hand-derived closed forms (docs/math.md §2-4), built from per-class logit gradients
``g_i = ∇_x f_i`` that the test computes itself with autograd."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_guidance.diffusion.denoiser import DenoiserOutput
from lightning_guidance.diffusion.parameterization import eps_to_x0
from lightning_guidance.guidance import (CFGPlusClassifierGuidance, ClassifierGuidance, DivergenceGuidance,
                                         EntropyAdaptiveGuidance, GuidanceState, LinearSchedule,
                                         OffTheShelfGuidance, TiltedGuidance, TimeIntervalSchedule, total_guidance)
from lightning_guidance.diffusion.plug import GuidanceTerm, check_guidance_for_sampler
from lightning_guidance.guidance.log_likelihood import log_likelihood

B, D, K = 6, 5, 4
DT = torch.float64


class TinyClassifier(nn.Module):
    """Smooth MLP on [x, t] (t omitted when None), float64."""

    def __init__(self, num_classes=K, dim=D, seed=1, gain=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.w1 = nn.Parameter(gain * torch.randn(dim + 1, 16, generator=g, dtype=DT))
        self.w2 = nn.Parameter(gain * torch.randn(16, num_classes, generator=g, dtype=DT) / 4)

    def forward(self, x, t=None):
        t_col = torch.zeros(len(x), 1, dtype=x.dtype) if t is None else t.reshape(-1, 1).to(x.dtype)
        return F.softplus(torch.cat([x.flatten(1), t_col], 1) @ self.w1) @ self.w2


class TinyDenoiser:
    """A smooth, non-linear eps predictor (not a real model: only its Jacobian matters)."""

    def __init__(self, num_classes=K, seed=2):
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.a = torch.randn(D, D, generator=g, dtype=DT) / 2

    def __call__(self, x_t, t, abar, y, step=None):
        eps = torch.tanh(x_t @ self.a) + 0.1 * y.to(x_t.dtype).view(-1, 1)
        return DenoiserOutput(eps=eps, x0=eps_to_x0(eps, x_t, abar))


def make_state(x_t=None, sampler="ddim", out=None, denoiser=None, step=3, num_steps=10, abar=0.6, **kw):
    x_t = torch.randn(B, D, dtype=DT) if x_t is None else x_t
    abar = torch.full((B,), abar, dtype=DT)
    if out is None:
        eps = torch.randn(B, D, dtype=DT)
        out = DenoiserOutput(eps=eps, x0=eps_to_x0(eps, x_t, abar))
    y = kw.pop("y", torch.arange(B) % K)
    t = kw.pop("t", torch.linspace(0.1, 0.9, B, dtype=DT))
    return GuidanceState(x_t=x_t, t=t, abar=abar, y=y, out=out, step=step, num_steps=num_steps, sampler=sampler,
                         denoiser=denoiser, **kw)


def logit_jacobian(classifier, x, t):
    """``(f (B, K), G (B, K, D))`` with ``G[b, i] = ∇_{x_b} f_i(x_b)`` (samples are independent)."""
    x = x.detach().requires_grad_(True)
    f = classifier(x, t)
    G = torch.stack([torch.autograd.grad(f[:, i].sum(), x, retain_graph=True)[0] for i in range(f.shape[1])], 1)
    return f.detach(), G


def weighted(coef, G):
    """``sum_i coef[b, i] G[b, i]``."""
    return (coef.unsqueeze(-1) * G).sum(1)


def onehot(y):
    return F.one_hot(y, K).to(DT)


def cg_closed_form(f, G, y, tau1=1.0, tau2=1.0):
    """``∇ [tau1 f_y - logsumexp(tau2 f)] = tau1 g_y - tau2 sum_j softmax(tau2 f)_j g_j``."""
    return weighted(tau1 * onehot(y) - tau2 * torch.softmax(tau2 * f, 1), G)


# ---- temperatures and plain classifier guidance ------------------------------------------------------------

@pytest.mark.parametrize("tau1,tau2", [(1.0, 1.0), (1.0, 0.0), (1.0, 0.5), (0.7, 0.3)])
def test_tempered_log_likelihood_gradient_matches_closed_form(tau1, tau2):
    clf = TinyClassifier()
    state = make_state()
    term = OffTheShelfGuidance(clf, tau1=tau1, tau2=tau2, clip_x0=False)
    f, G = logit_jacobian(clf, state.out.x0, None)  # detached x0_hat, clean classifier (t=None)
    torch.testing.assert_close(term(state), cg_closed_form(f, G, state.y, tau1, tau2))


def test_temperature_special_cases():
    f = torch.randn(B, K, dtype=DT)
    y = torch.arange(B) % K
    torch.testing.assert_close(log_likelihood(f, y), F.log_softmax(f, 1).gather(1, y.view(-1, 1)).squeeze(1))
    torch.testing.assert_close(log_likelihood(f, y, tau2=0.0), f.gather(1, y.view(-1, 1)).squeeze(1) - math.log(K))
    clf = TinyClassifier()
    state = make_state()
    f, G = logit_jacobian(clf, state.out.x0, None)
    g = OffTheShelfGuidance(clf, tau2=0.0, clip_x0=False)(state)
    torch.testing.assert_close(g, G[torch.arange(B), state.y])  # pure logit: ∇ f_y


def test_classifier_guidance_uses_noisy_input_time_scale_and_schedule():
    clf = TinyClassifier()
    state = make_state(step=2, num_steps=5)
    f, G = logit_jacobian(clf, state.x_t, state.t)
    expected = cg_closed_form(f, G, state.y)
    torch.testing.assert_close(ClassifierGuidance(clf)(state), expected)
    weight = 3.0 + (1.0 - 3.0) * 2 / 4  # LinearSchedule(3 -> 1) at step 2 of 5
    got = ClassifierGuidance(clf, scale=2.5, schedule=LinearSchedule(3.0, 1.0))(state)
    torch.testing.assert_close(got, 2.5 * weight * expected)
    interval = ClassifierGuidance(clf, schedule=TimeIntervalSchedule(0.3, 0.7))(state)
    inside = ((state.t >= 0.3) & (state.t <= 0.7)).to(DT).view(-1, 1)
    assert 0 < inside.sum() < B
    torch.testing.assert_close(interval, inside * expected)


def test_offtheshelf_clamps_the_denoised_input():
    """clip_x0=True clamps x0_hat to [-1, 1]; the default (None) takes x0_hat as the denoiser gives it (clamped there
    when the diffusion model clips). Catches: a default that clamps data that is not bounded (the toy mixtures)."""
    clf = TinyClassifier()
    x_t = torch.randn(B, D, dtype=DT)
    x0 = 3 * torch.randn(B, D, dtype=DT)  # well outside [-1, 1]
    state = make_state(x_t=x_t, out=DenoiserOutput(eps=torch.zeros_like(x0), x0=x0))
    f, G = logit_jacobian(clf, x0.clamp(-1, 1), None)
    torch.testing.assert_close(OffTheShelfGuidance(clf, clip_x0=True)(state), cg_closed_form(f, G, state.y))
    f, G = logit_jacobian(clf, x0, None)
    torch.testing.assert_close(OffTheShelfGuidance(clf)(state), cg_closed_form(f, G, state.y))


def test_through_denoiser_is_the_detached_gradient_times_the_denoiser_jacobian():
    clf, den = TinyClassifier(), TinyDenoiser()
    state = make_state(denoiser=den, abar=0.7)
    state.out = den(state.x_t, state.t, state.abar, state.y)
    detached = OffTheShelfGuidance(clf, tau2=0.5, clip_x0=False)(state)
    through = OffTheShelfGuidance(clf, tau2=0.5, clip_x0=False, through_denoiser=True)(state)
    # chain rule, per sample: ∇_{x_t} = (∂x0/∂x_t)^T ∇_{x0_hat}
    for b in range(B):
        def x0_of(row, b=b):
            return den(row.view(1, D), state.t[b:b + 1], state.abar[b:b + 1], state.y[b:b + 1]).x0.view(D)
        jac = torch.autograd.functional.jacobian(x0_of, state.x_t[b])
        torch.testing.assert_close(through[b], jac.T @ detached[b])
    assert not torch.allclose(through, detached)


# ---- sine boost (DDPM) and the EDM nudge ---------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_sine_boost_factor_gives_the_papers_mean_shift(gamma):
    """The sampler's mu + Sigma g equals the paper's mu + (Sigma + gamma Sigma_max sin) g_plain, also at the paper's
    gamma = 1. Catches: the boost skipped for some gamma."""
    clf = TinyClassifier()
    n, step = 10, 3
    variance = torch.linspace(0.01, 0.02, B, dtype=DT)
    max_variance = torch.full((B,), 0.05, dtype=DT)
    state = make_state(sampler="ddpm", step=step, num_steps=n, variance=variance, max_variance=max_variance)
    plain = OffTheShelfGuidance(clf)(state)
    boosted = OffTheShelfGuidance(clf, sine_gamma=gamma)(state)
    i = n - 1 - step  # respaced index, T-1 -> 0
    added = gamma * 0.05 * math.sin(math.pi * i / n)
    # the sampler's mu + Sigma g must equal the paper's mu + (Sigma + gamma Sigma_max sin) g_plain
    torch.testing.assert_close(variance.view(-1, 1) * boosted, (variance.view(-1, 1) + added) * plain)


def test_sine_boost_is_one_where_the_added_term_vanishes():
    clf = TinyClassifier()
    last = make_state(sampler="ddpm", step=9, num_steps=10, variance=torch.zeros(B, dtype=DT),
                      max_variance=torch.full((B,), 0.05, dtype=DT))  # i = 0: sin = 0, zero variance
    torch.testing.assert_close(OffTheShelfGuidance(clf, sine_gamma=0.3)(last), OffTheShelfGuidance(clf)(last))
    mid = make_state(sampler="ddpm", step=4, num_steps=10, variance=torch.full((B,), 0.01, dtype=DT),
                     max_variance=torch.full((B,), 0.05, dtype=DT))
    torch.testing.assert_close(OffTheShelfGuidance(clf, sine_gamma=-0.3)(mid), OffTheShelfGuidance(clf)(mid))


def test_sine_boost_sampler_support():
    clf = TinyClassifier()
    check_guidance_for_sampler([OffTheShelfGuidance(clf, sine_gamma=0.3)], "ddpm")
    with pytest.raises(ValueError, match="ddim"):
        check_guidance_for_sampler([OffTheShelfGuidance(clf, sine_gamma=0.3)], "ddim")
    with pytest.raises(ValueError, match="edm"):
        check_guidance_for_sampler([OffTheShelfGuidance(clf, sine_gamma=0.3)], "edm")
    check_guidance_for_sampler([OffTheShelfGuidance(clf, sine_gamma=0.3, edm_g_max=0.004)], "edm")
    for kind in ("ddpm", "ddim", "edm"):
        check_guidance_for_sampler([OffTheShelfGuidance(clf)], kind)


def test_edm_nudge_is_the_rms_normalised_gradient_times_the_sine_weight():
    clf = TinyClassifier()
    g_max, gamma, n, step, scale = 0.004, 0.3, 18, 5, 1.5
    term = OffTheShelfGuidance(clf, scale=scale, tau2=0.0, sine_gamma=gamma, edm_g_max=g_max, clip_x0=False)
    x = 5 * torch.randn(B, D, dtype=DT)
    sigma = torch.full((B,), 3.0, dtype=DT)
    y = torch.arange(B) % K
    denoise = lambda v: DenoiserOutput(eps=torch.zeros_like(v), x0=torch.sin(v))  # noqa: E731
    nudge = term.edm_nudge(x, sigma, step, n, denoise, y=y)
    f, G = logit_jacobian(clf, torch.sin(x), None)
    direction = cg_closed_form(f, G, y, 1.0, 0.0)
    w = max(g_max * (n + 1 - step) / (n + 1), 1e-5) + gamma * g_max * math.sin(math.pi * step / n)
    rms = lambda v: v.pow(2).mean(1, keepdim=True).sqrt()  # noqa: E731
    torch.testing.assert_close(nudge, scale * w * direction / rms(direction) * rms(x))
    # on EDM the regular correction is zero: the nudge replaces it
    state = make_state(sampler="edm")
    assert torch.count_nonzero(term(state)) == 0
    assert OffTheShelfGuidance(clf).edm_nudge(x, sigma, step, n, denoise, y=y) is None
    with pytest.raises(ValueError, match="labels"):
        term.edm_nudge(x, sigma, step, n, denoise)


def test_edm_nudge_weight_floor():
    clf = TinyClassifier()
    term = OffTheShelfGuidance(clf, sine_gamma=0.0, edm_g_max=1e-9, clip_x0=False)
    x = torch.randn(B, D, dtype=DT)
    nudge = term.edm_nudge(x, None, 0, 10, lambda v: DenoiserOutput(eps=v, x0=v), y=torch.arange(B) % K)
    rms = lambda v: v.pow(2).mean(1).sqrt()  # noqa: E731
    torch.testing.assert_close(rms(nudge), 1e-5 * rms(x))


# ---- CFG + classifier -----------------------------------------------------------------------------------------

def test_cfg_plus_classifier_matches_the_cfg_score_difference_rms():
    clf = TinyClassifier()
    x_t = torch.randn(B, D, dtype=DT)
    eps_c, eps_u = torch.randn(B, D, dtype=DT), 0.3 * torch.randn(B, D, dtype=DT)
    abar = 0.4
    eps = eps_u + 2.0 * (eps_c - eps_u)
    a = torch.full((B,), abar, dtype=DT)
    out = DenoiserOutput(eps=eps, x0=eps_to_x0(eps, x_t, a), eps_cond=eps_c, eps_uncond=eps_u)
    state = make_state(x_t=x_t, out=out, abar=abar)
    g = CFGPlusClassifierGuidance(clf, scale=0.7, tau2=0.5, clip_x0=False)(state)
    f, G = logit_jacobian(clf, out.x0, None)
    direction = cg_closed_form(f, G, state.y, 1.0, 0.5)
    score_diff_rms = ((eps_c - eps_u) / math.sqrt(1 - abar)).pow(2).mean(1, keepdim=True).sqrt()
    expected = 0.7 * direction / direction.pow(2).mean(1, keepdim=True).sqrt() * score_diff_rms
    torch.testing.assert_close(g, expected)


# ---- tilted ---------------------------------------------------------------------------------------------------

def test_tilted_gradient_is_b_times_the_gradient_of_the_tilted_objective():
    clf = TinyClassifier(gain=2.0)
    state = make_state()
    tilt = -0.7
    x = state.x_t.clone().requires_grad_(True)
    log_p = F.log_softmax(clf(x, state.t), 1).gather(1, state.y.view(-1, 1)).squeeze(1)
    tilted = (1 / tilt) * torch.log(torch.exp(tilt * log_p).mean())
    (oracle,) = torch.autograd.grad(B * tilted, x)
    got = TiltedGuidance(clf, tilt=tilt, input="x_t")(state)
    torch.testing.assert_close(got, oracle)
    f, G = logit_jacobian(clf, state.x_t, state.t)
    plain = cg_closed_form(f, G, state.y)
    assert not torch.allclose(got, plain, rtol=1e-3, atol=1e-6)  # the reweighting does something here
    # t -> 0: plain guidance (exactly below 1e-8, continuously above)
    torch.testing.assert_close(TiltedGuidance(clf, tilt=1e-9, input="x_t")(state), plain)
    torch.testing.assert_close(TiltedGuidance(clf, tilt=-1e-7, input="x_t")(state), plain, rtol=1e-5, atol=1e-7)


def test_negative_tilt_upweights_the_least_likely_sample():
    clf = TinyClassifier(gain=2.0)
    state = make_state()
    f, _ = logit_jacobian(clf, state.x_t, state.t)
    log_p = F.log_softmax(f, 1).gather(1, state.y.view(-1, 1)).squeeze(1)
    g_tilt = TiltedGuidance(clf, tilt=-1.0, input="x_t")(state)
    g_plain = TiltedGuidance(clf, tilt=0.0, input="x_t")(state)
    ratio = (g_tilt.norm(dim=1) / g_plain.norm(dim=1))
    assert int(ratio.argmax()) == int(log_p.argmin())
    torch.testing.assert_close(ratio.sum(), torch.tensor(float(B), dtype=DT))  # mean weight 1


# ---- entropy ------------------------------------------------------------------------------------------------

def test_entropy_scale_mode_matches_its_formula_with_the_clamp():
    clf = TinyClassifier(gain=1.0)
    state = make_state()
    f, G = logit_jacobian(clf, state.x_t, state.t)
    p = torch.softmax(f, 1)
    H = -(p * p.log()).sum(1)
    max_factor = 3.0
    factor = (math.log(K) / H).clamp(1.0, max_factor)
    assert bool((factor == max_factor).any()) and bool((factor < max_factor).any())  # both branches exercised
    got = EntropyAdaptiveGuidance(clf, scale=2.0, max_factor=max_factor, input="x_t")(state)
    torch.testing.assert_close(got, 2.0 * factor.view(-1, 1) * cg_closed_form(f, G, state.y))


def test_entropy_bonus_mode_adds_the_entropy_gradient():
    clf = TinyClassifier(gain=2.0)
    state = make_state()
    f, G = logit_jacobian(clf, state.x_t, state.t)
    p = torch.softmax(f, 1)
    H = -(p * p.log()).sum(1, keepdim=True)
    grad_H = weighted(-p * (p.log() + H), G)  # ∂H/∂f_k = -p_k (log p_k + H)
    got = EntropyAdaptiveGuidance(clf, mode="bonus", eta=0.4, input="x_t")(state)
    torch.testing.assert_close(got, cg_closed_form(f, G, state.y) + 0.4 * grad_H)


# ---- f-divergences ------------------------------------------------------------------------------------------

def divergence_closed_form(kind, f, G, y, eps):
    """docs/math.md §4's ``-∇_x D(q, p)`` with ``q = (1-eps) e_y + eps/K``."""
    p = torch.softmax(f, 1)
    q = (1 - eps) * onehot(y) + eps / K
    mean_g = weighted(p, G).unsqueeze(1)  # sum_j p_j g_j
    if kind == "reverse_kl":
        log_ratio = (p / q).log()
        kl = (p * log_ratio).sum(1, keepdim=True)
        return -weighted(p * (log_ratio - kl), G)
    if kind == "forward_kl":
        return weighted(q, G) - mean_g.squeeze(1)
    if kind == "js":
        log_ratio = (p / ((p + q) / 2)).log()
        js_p = (p * log_ratio).sum(1, keepdim=True)
        return -0.5 * weighted(p * (log_ratio - js_p), G)
    if kind == "hellinger":
        return 0.5 * weighted((p * q).sqrt(), G - mean_g)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "js", "hellinger"])
@pytest.mark.parametrize("eps", [0.1, 0.0])
def test_divergence_gradients_match_the_closed_forms(kind, eps):
    if kind == "reverse_kl" and eps == 0.0:
        with pytest.raises(ValueError, match="label_smoothing"):
            DivergenceGuidance(TinyClassifier(), divergence=kind, label_smoothing=eps)
        return
    clf = TinyClassifier(gain=2.0)
    state = make_state()
    f, G = logit_jacobian(clf, state.x_t, state.t)
    got = DivergenceGuidance(clf, scale=1.3, divergence=kind, label_smoothing=eps, input="x_t")(state)
    torch.testing.assert_close(got, 1.3 * divergence_closed_form(kind, f, G, state.y, eps))


def test_forward_kl_without_smoothing_is_plain_classifier_guidance():
    clf = TinyClassifier(gain=2.0)
    state = make_state()
    got = DivergenceGuidance(clf, divergence="forward_kl", label_smoothing=0.0, input="x_t")(state)
    torch.testing.assert_close(got, ClassifierGuidance(clf)(state))


# ---- errors -------------------------------------------------------------------------------------------------

def test_class_count_mismatch_is_a_clear_error():
    clf = TinyClassifier(num_classes=K)
    state = make_state(denoiser=TinyDenoiser(num_classes=K + 1))
    with pytest.raises(ValueError, match=f"classifier has {K} classes but the denoiser has {K + 1}"):
        ClassifierGuidance(clf)(state)


def test_label_outside_the_classifier_is_a_clear_error():
    state = make_state(y=torch.full((B,), K))
    with pytest.raises(ValueError, match="out of range"):
        ClassifierGuidance(TinyClassifier())(state)


def test_cfg_plus_classifier_without_cfg_is_a_clear_error():
    with pytest.raises(ValueError, match="cfg_scale"):
        CFGPlusClassifierGuidance(TinyClassifier())(make_state())


def test_bad_options_are_clear_errors():
    clf = TinyClassifier()
    with pytest.raises(ValueError, match="classifier input"):
        OffTheShelfGuidance(clf, input="x_0")
    with pytest.raises(ValueError, match="through_denoiser"):
        TiltedGuidance(clf, input="x_t", through_denoiser=True)
    with pytest.raises(ValueError, match="divergence"):
        DivergenceGuidance(clf, divergence="tv")
    with pytest.raises(ValueError, match="mode"):
        EntropyAdaptiveGuidance(clf, mode="both")
    with pytest.raises(ValueError, match="state.denoiser"):
        OffTheShelfGuidance(clf, through_denoiser=True)(make_state())
    with pytest.raises(ValueError, match="variance"):
        OffTheShelfGuidance(clf, sine_gamma=0.3)(make_state(sampler="ddpm"))


def test_unsupported_sampler_is_refused_before_any_step():
    """The sampler-kind check runs once, when a module/callback is built (check_sampling) and in the sampler's
    prologue, never per step inside a term."""
    from lightning_guidance.diffusion.ddim import ddim_sample
    from lightning_guidance.diffusion.noise import PerSampleNoise
    from lightning_guidance.diffusion.sampling import check_sampling
    from lightning_guidance.diffusion.schedules import VPSchedule

    term = OffTheShelfGuidance(TinyClassifier(), sine_gamma=0.3)
    with pytest.raises(ValueError, match="cannot run on the ddim sampler"):
        check_sampling("ddim", {"num_steps": 5}, [term])
    calls = []

    def denoiser(*args):
        calls.append(args)
        raise AssertionError("the sampler must refuse the term before its first step")

    with pytest.raises(ValueError, match="cannot run on the ddim sampler"):
        ddim_sample(denoiser, VPSchedule.from_name("linear", 100), torch.zeros(2, dtype=torch.long),
                    PerSampleNoise([0, 1]), (D,), num_steps=5, guidance=[term])
    assert calls == []


class SqrtClassifier(nn.Module):
    """Logits ``sqrt(|x|)``: an infinite gradient at x = 0."""

    num_classes = D

    def forward(self, x, t=None):
        return x.abs().sqrt()


def test_non_finite_gradient_raises_with_the_step():
    state = make_state(x_t=torch.zeros(B, D, dtype=DT), step=3, num_steps=10, y=torch.arange(B) % D)
    with pytest.raises(FloatingPointError, match=r"^ClassifierGuidance produced a non-finite guidance gradient at "
                                                 r"sampling step 3/10 \(ddim\); lower its scale or check the "
                                                 r"classifier$"):
        total_guidance([ClassifierGuidance(SqrtClassifier())], state)


def test_terms_run_under_no_grad():
    clf = TinyClassifier()
    state = make_state()
    with torch.no_grad():
        g = ClassifierGuidance(clf)(state)
    assert torch.isfinite(g).all() and g.abs().sum() > 0 and not g.requires_grad


class _FixedTerm(GuidanceTerm):
    """gradient = a fixed tensor, so that the trace's numbers have a hand-computed value."""

    supported_samplers = ("ddim", "edm")

    def __init__(self, grad, scale):
        super().__init__(scale)
        self.grad = grad

    def gradient(self, state):
        return self.grad

    def edm_nudge(self, x, *args, **kwargs):
        return 2 * x


def test_guidance_trace_records_the_hand_computed_sums():
    """GuidanceTrace passes the correction through and adds, per step: count, sum of t, sum of the per-sample RMS of
    g / |scale|, the number below vanishing_rms, and (classifier terms) the summed probability of the requested class
    on x_t. Catches: RMS taken over the batch instead of per sample, the scale not divided out, rows of another
    step written, confidence of the predicted instead of the requested class, a wrong-length trace accepted."""
    from lightning_guidance.guidance.trace import TRACE_COLUMNS, GuidanceTrace

    grad = torch.randn(B, D, dtype=DT)
    grad[0] = 1e-5  # RMS 1e-5 < vanishing_rms
    term = _FixedTerm(grad, scale=-2.0)
    trace = GuidanceTrace(term, vanishing_rms=1e-3)
    assert trace.name == "_FixedTerm" and trace.supported_samplers == ("ddim", "edm")
    x = torch.ones(2, 3)
    assert torch.equal(trace.edm_nudge(x, None, 0, 1, None), 2 * x)
    state = make_state(step=2, num_steps=4)
    g = trace(state)
    assert torch.equal(g, -2.0 * grad)
    assert trace.sums.shape == (4, len(TRACE_COLUMNS)) and trace.sums.dtype == torch.float64
    rms = grad.pow(2).mean(dim=1).sqrt()
    expected = torch.tensor([B, float(state.t.sum()), float(rms.sum()), 1.0, 0.0, 0.0], dtype=DT)
    torch.testing.assert_close(trace.sums[2], expected, rtol=1e-12, atol=0)
    assert not trace.sums[[0, 1, 3]].any()
    trace(make_state(step=2, num_steps=4))
    torch.testing.assert_close(trace.sums[2, 0], torch.tensor(2.0 * B, dtype=DT))
    trace.scale = 0.5  # the setter reaches the wrapped term
    assert term.scale == 0.5 and trace.scale == 0.5
    with pytest.raises(ValueError, match="one trace per sampler setting: it saw 4 steps, now 5"):
        trace(make_state(step=0, num_steps=5))
    with pytest.raises(ValueError, match="vanishing_rms must be > 0, got 0"):
        GuidanceTrace(term, vanishing_rms=0)

    # a classifier term: the probability of the requested class, from the classifier's own softmax on (x_t, t)
    clf = TinyClassifier()
    ctrace = GuidanceTrace(ClassifierGuidance(clf, scale=3.0))
    state = make_state(step=0, num_steps=2, denoiser=TinyDenoiser())
    ctrace(state)
    with torch.no_grad():
        p = torch.softmax(clf(state.x_t, state.t), dim=1)[torch.arange(B), state.y]
    torch.testing.assert_close(ctrace.sums[0, 4], p.sum(), rtol=1e-12, atol=0)
    assert float(ctrace.sums[0, 5]) == B


def test_summarize_trace_is_per_step_means_and_overall_figures():
    """summarize_trace: per-step means (sum / count, a step without samples gives 0, not nan), confidence only
    where recorded (nan elsewhere), overall means weighted by counts. Catches: unweighted means of the per-step
    means, the wrong column, the final confidence read from the first step."""
    from lightning_guidance.guidance.trace import summarize_trace

    sums = torch.tensor([[2, 1.0, 0.4, 1, 1.5, 2],
                         [4, 0.4, 0.2, 4, 0.0, 0],
                         [0, 0.0, 0.0, 0, 0.0, 0],
                         [2, 0.1, 0.6, 0, 0.6, 1]], dtype=DT)
    s = summarize_trace(sums, vanishing_rms=0.01)
    assert s["t"] == pytest.approx([0.5, 0.1, 0.0, 0.05])
    assert s["gradient_rms"] == pytest.approx([0.2, 0.05, 0.0, 0.3])
    assert s["vanishing_fraction"] == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert s["confidence"][0] == pytest.approx(0.75) and s["confidence"][3] == pytest.approx(0.6)
    assert math.isnan(s["confidence"][1]) and math.isnan(s["confidence"][2])
    assert s["vanishing_rms"] == 0.01
    assert s["mean_gradient_rms"] == pytest.approx(1.2 / 8)
    assert s["mean_vanishing_fraction"] == pytest.approx(5 / 8)
    assert s["final_confidence"] == pytest.approx(0.6)
    assert math.isnan(summarize_trace(sums[:2], 0.01)["final_confidence"])
    one = summarize_trace(torch.tensor([[1, 0.3, 0.7, 1, 0.9, 1]], dtype=DT), 0.01)  # a step with one sample
    assert one["t"] == pytest.approx([0.3]) and one["gradient_rms"] == pytest.approx([0.7])
    assert one["vanishing_fraction"] == pytest.approx([1.0]) and one["final_confidence"] == pytest.approx(0.9)
    empty = summarize_trace(torch.zeros(2, 6, dtype=DT), 0.01)
    assert empty["mean_gradient_rms"] == 0.0 and empty["mean_vanishing_fraction"] == 0.0


def test_sweep_descriptions_name_every_setting_that_changes_samples(tmp_path):
    """describe() / identity() feed the report line and the shards' config hash: every setting that changes the
    samples must be in them, by value, and a guide's weights by their content digest (hashlib's sha256 of the
    file). Catches: a term's scale missing (two sweeps with other scales sharing one hash), private state or
    non-plain values in the hash, the classifier described by its path, the class map dropped, the value not
    applied to the term's scale in the report."""
    import hashlib

    from lightning_guidance.diffusion.cfg_rule import ClassifierFreeGuidance
    from lightning_guidance.guidance.cfg_variants import CFGZeroStar
    from lightning_guidance.guidance.sweep import Sweep, describe_classifier, describe_term

    clf = TinyClassifier()
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"some weights")
    clf.checkpoint = str(weights)
    clf.class_index = torch.tensor([3, 1, 2, 0])
    term = ClassifierGuidance(clf, scale=2.0, schedule=LinearSchedule(start=1.0, end=0.25))
    d = describe_term(term)
    assert d["class"] == "ClassifierGuidance" and d["scale"] == 2.0 and d["input"] == "x_t"
    assert not any(k.startswith("_") for k in d) and "classifier" in d and "schedule" in d
    assert d["schedule"] == {"class": "LinearSchedule", "start": 1.0, "end": 0.25}
    assert d["classifier"] == {"class": "TinyClassifier", "settings": "",
                               "sha256": hashlib.sha256(b"some weights").hexdigest()[:16],  # 16 hex digits kept
                               "class_index": [3, 1, 2, 0]}
    plain = TinyClassifier()
    assert describe_classifier(plain) == {"class": "TinyClassifier", "settings": ""}
    assert describe_term(ClassifierGuidance(plain, scale=3.0))["scale"] == 3.0
    assert describe_term(ClassifierGuidance(plain))["schedule"] is None  # no schedule: recorded as such

    class NoSchedule(GuidanceTerm):  # a term class without a schedule attribute at all
        def gradient(self, state):
            return torch.zeros_like(state.x_t)
    assert describe_term(NoSchedule(scale=0.5)) == {"class": "NoSchedule", "scale": 0.5}

    sweep = Sweep("guidance", [0.0, 2.0], 1.5, [term])
    assert sweep.describe(2.0) == "CFG s = 1.5, ClassifierGuidance (scale 4)"
    assert sweep.describe(0.0) == "CFG s = 1.5, ClassifierGuidance (scale 0)"
    assert Sweep("cfg", [1.0, 3.0], 1.0, [term]).describe(3.0) == "CFG s = 3, ClassifierGuidance (scale 2)"
    assert sweep.identity(2.0) == {"target": "guidance", "value": 2.0, "cfg_scale": 1.5, "guidance": [d]}
    # in a CFG sweep the swept value is the CFG scale: the unused fixed cfg_scale is not recorded
    assert Sweep("cfg", [3.0], 1.0, [term]).identity(3.0) == {"target": "cfg", "value": 3.0, "guidance": [d]}
    ruled = Sweep("cfg", [2.0], 1.0, [], cfg_rule=CFGZeroStar(zero_init_steps=1))
    assert ruled.describe(2.0) == "CFGZeroStar s = 2"
    assert ruled.identity(2.0)["cfg_rule"] == CFGZeroStar(zero_init_steps=1).settings()
    assert ruled.identity(2.0)["cfg_rule"] != CFGZeroStar(zero_init_steps=2).settings()
    assert "cfg_rule" not in Sweep("cfg", [2.0], 1.0, [], cfg_rule=None).identity(2.0)
    assert isinstance(ruled.cfg_rule, ClassifierFreeGuidance)
    # a term without a classifier (e.g. a fixed correction) passes the classifier checks untouched
    Sweep("guidance", [1.0], 2.0, [_FixedTerm(torch.zeros(B, D, dtype=DT), 1.0)]).check_against(K, (D,), "linear", 100)


TERMS = [CFGPlusClassifierGuidance, DivergenceGuidance, EntropyAdaptiveGuidance, TiltedGuidance, OffTheShelfGuidance]


@pytest.mark.parametrize("term_cls", TERMS, ids=[t.__name__ for t in TERMS])
def test_every_classifier_term_uses_and_records_the_settings_it_is_given(term_cls):
    """schedule, clip_x0 and through_denoiser reach the shared ClassifierTerm: the schedule's weight multiplies the
    correction (LinearSchedule(1, 0.25) at step 3 of 10: 1 - 0.75 * 3/9), clip_x0=False feeds the classifier the
    unclamped x0_hat (x0_hat outside [-1, 1] here, so the result differs from clip_x0=True) and the config identity
    records each. Catches: a constructor that drops one of them (guidance unscheduled, clipped or not through the
    denoiser while the config hash says otherwise)."""
    from lightning_guidance.guidance.sweep import describe_term

    clf = TinyClassifier()
    x_t = torch.randn(B, D, dtype=DT, generator=torch.Generator().manual_seed(0))
    eps_c, eps_u = torch.randn(B, D, dtype=DT), 0.3 * torch.randn(B, D, dtype=DT)
    a = torch.full((B,), 0.4, dtype=DT)
    eps = eps_u + 2.0 * (eps_c - eps_u)
    out = DenoiserOutput(eps=eps, x0=3.0 * eps_to_x0(eps, x_t, a), eps_cond=eps_c, eps_uncond=eps_u)
    state = make_state(x_t=x_t, out=out, abar=0.4, step=3, num_steps=10, denoiser=TinyDenoiser())
    schedule = LinearSchedule(start=1.0, end=0.25)
    scheduled = term_cls(clf, scale=0.7, clip_x0=False, schedule=schedule)(state)
    plain = term_cls(clf, scale=0.7, clip_x0=False)(state)
    torch.testing.assert_close(scheduled, (1 - 0.75 * 3 / 9) * plain)
    assert not torch.allclose(plain, term_cls(clf, scale=0.7, clip_x0=True)(state))  # clip_x0 matters here
    d = describe_term(term_cls(clf, scale=0.7, clip_x0=False, schedule=schedule, through_denoiser=True))
    assert d["clip_x0"] is False and d["through_denoiser"] is True and d["input"] == "x0_hat"
    assert d["schedule"] == {"class": "LinearSchedule", "start": 1.0, "end": 0.25}


def test_documented_defaults_and_tempered_entropy_guidance():
    """The defaults the docstrings and shipped configs state: Jensen-Shannon with label smoothing 0.1, entropy
    factor capped at 10; entropy guidance tempers log p with tau1, tau2 like every term (its entropy stays the
    untempered one). Catches: another default, tau1 dropped from the entropy term's log-likelihood."""
    clf = TinyClassifier(gain=1.0)
    d = DivergenceGuidance(clf)
    assert (d.divergence, d.label_smoothing) == ("js", 0.1)
    state = make_state()
    f, G = logit_jacobian(clf, state.x_t, state.t)
    torch.testing.assert_close(DivergenceGuidance(clf, input="x_t")(state),
                               DivergenceGuidance(clf, input="x_t", divergence="js", label_smoothing=0.1)(state))
    p = torch.softmax(f, 1)
    H = -(p * p.log()).sum(1)
    factor = (math.log(K) / H).clamp(1.0, 10.0)
    got = EntropyAdaptiveGuidance(clf, scale=2.0, tau1=0.7, tau2=0.3, input="x_t")(state)
    torch.testing.assert_close(got, 2.0 * factor.view(-1, 1) * cg_closed_form(f, G, state.y, 0.7, 0.3))
    sharp = TinyClassifier(gain=8.0)
    fs, Gs = logit_jacobian(sharp, state.x_t, state.t)
    ps = torch.softmax(fs, 1)
    raw = math.log(K) / -(ps * ps.clamp_min(1e-300).log()).sum(1)
    assert bool((raw > 10.0).any())  # the default cap is reached
    got = EntropyAdaptiveGuidance(sharp, input="x_t")(state)
    torch.testing.assert_close(got, raw.clamp(1.0, 10.0).view(-1, 1) * cg_closed_form(fs, Gs, state.y))


def test_divergence_values_equal_scipy_and_vanish_at_equality():
    """The f-divergences themselves (not only their gradients): forward/reverse KL are scipy.stats.entropy(q, p) and
    entropy(p, q), JS is scipy's jensenshannon(p, q)^2 (natural log), squared Hellinger 1 - sum sqrt(p q); every one
    is 0 at p = q. The smoothed target q = (1 - eps) e_y + eps/K comes back in the dtype asked for. Catches: a
    constant added to a divergence (invisible in its gradient, wrong in reports), a target computed in float32."""
    import scipy.spatial.distance
    import scipy.stats

    from lightning_guidance.guidance.divergence import f_divergence, smoothed_target_log

    f = torch.randn(B, K, dtype=DT, generator=torch.Generator().manual_seed(4))
    y = torch.arange(B) % K
    log_p = torch.log_softmax(f, 1)
    log_q = smoothed_target_log(y, K, 0.1, DT)
    assert log_q.dtype == DT
    torch.testing.assert_close(log_q.exp(), 0.9 * onehot(y) + 0.1 / K, rtol=1e-15, atol=0)
    p, q = log_p.exp().numpy(), log_q.exp().numpy()
    expected = {
        "forward_kl": [scipy.stats.entropy(q[i], p[i]) for i in range(B)],
        "reverse_kl": [scipy.stats.entropy(p[i], q[i]) for i in range(B)],
        "js": [scipy.spatial.distance.jensenshannon(p[i], q[i]) ** 2 for i in range(B)],
        "hellinger": [1 - np.sqrt(p[i] * q[i]).sum() for i in range(B)],
    }
    for kind, values in expected.items():
        torch.testing.assert_close(f_divergence(kind, log_p, log_q), torch.tensor(values, dtype=DT),
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f_divergence(kind, log_q, log_q), torch.zeros(B, dtype=DT), rtol=0, atol=1e-12)


def test_refusals_say_exactly_what_is_wrong():
    """Each refusal's whole message (anchored), so that a user reads which setting and what to do. Catches: a
    message emptied, truncated or with its names changed (e.g. "KL" lower-cased, the term's name dropped)."""
    clf = TinyClassifier()
    cases = [
        (lambda: DivergenceGuidance(clf, divergence="reverse_kl", label_smoothing=0.0),
         r"^reverse_kl needs label_smoothing > 0 \(KL\(p \|\| one-hot\) is infinite\)$"),
        (lambda: DivergenceGuidance(clf, label_smoothing=1.0), r"^label_smoothing must be in \[0, 1\), got 1\.0$"),
        (lambda: EntropyAdaptiveGuidance(clf, max_factor=0.5), r"^max_factor must be >= 1, got 0\.5$"),
        (lambda: OffTheShelfGuidance(clf, input="x_t", edm_g_max=0.1),
         r"^edm_g_max \(EluCD's EDM rule\) needs input='x0_hat'$"),
        (lambda: OffTheShelfGuidance(clf, sine_gamma=0.3)(make_state(sampler="ddpm")),
         r"^OffTheShelfGuidance\(sine_gamma != 0\) needs state\.variance and state\.max_variance from the DDPM "
         r"sampler$"),
        (lambda: OffTheShelfGuidance(clf, edm_g_max=0.1).edm_nudge(torch.zeros(B, D, dtype=DT),
                                                                   torch.ones(B, dtype=DT), 0, 4, None),
         r"^OffTheShelfGuidance\.edm_nudge needs the class labels y; the EDM sampler must pass y=$"),
        (lambda: OffTheShelfGuidance(clf, through_denoiser=True)(make_state()),
         r"^OffTheShelfGuidance\(through_denoiser=True\) needs state\.denoiser; the sampler did not provide one$"),
        (lambda: ClassifierGuidance(TinyClassifier(num_classes=3))(make_state(denoiser=TinyDenoiser(),
                                                                              y=torch.zeros(B, dtype=torch.long))),
         r"^ClassifierGuidance: the classifier has 3 classes but the denoiser has 4; use a classifier trained on "
         r"the same label set$"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message):
            build()
