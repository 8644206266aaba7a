"""DDPM, DDIM and EDM Heun against diffusers' schedulers and against the exact denoiser of Gaussian data.

Oracles:
- diffusers ``DDPMScheduler`` (variance_type "fixed_small" / "fixed_large" for our variance "small" / "large",
  custom timesteps = our respaced grid) and
  ``DDIMScheduler`` (one step at its own timesteps; whole loops on the respaced betas with
  ``set_alpha_to_one=True``, ``timestep_spacing="leading"``, ``steps_offset=0``, and ``clip_sample`` +
  ``use_clipped_model_output`` matching the denoiser's ``clip_x0``). Both get a list of per-sample
  generators, which diffusers draws row by row like ``PerSampleNoise``.
- For data N(mu, s^2 I): ``x_t ~ N(sqrt(abar) mu, abar s^2 + 1 - abar)``, so the exact noise prediction is
  ``eps = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)`` and the exact EDM denoiser is
  ``D(x; sigma) = s^2 / (s^2 + sigma^2) x`` (mu = 0), whose probability-flow ODE has the closed-form solution
  ``x(sigma) = x(sigma_max) sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2))``.
"""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from lightning_guidance.diffusion.ddim import ddim_sample, ddim_step, eps_shift_gain
from lightning_guidance.diffusion.ddpm import ddpm_posterior, ddpm_sample
from lightning_guidance.diffusion.denoiser import DenoiserOutput, NetDenoiser
from lightning_guidance.diffusion.edm_heun import edm_heun_sample
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.parameterization import eps_to_x0
from lightning_guidance.diffusion.sampling import check_sampling, sample, sampler_options
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.diffusion.plug import GuidanceTerm

T = 1000


@pytest.fixture(autouse=True)
def _one_thread():
    """The samplers are elementwise on 1e5 values here; intra-op threads on a shared CPU only add contention
    (measured: 2 threads 40 s, 1 thread 2 s for 1000 DDPM steps on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- test models -------------------------------------------------------------------------------
class GaussianDenoiser:
    """Exact noise prediction for data N(mu, s^2 I), written from the Gaussian's score (no schedule code)."""

    num_classes = 1
    clip_x0 = False

    def __init__(self, s: float = 1.0, mu: float = 0.0):
        self.s, self.mu, self.calls = s, mu, []

    def __call__(self, x_t, t, abar, y, step=None):
        self.calls.append((t.clone(), abar.clone()))
        a = abar.to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        score = -(x_t - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a)
        eps = -(1 - a).sqrt() * score
        return DenoiserOutput(eps=eps, x0=(x_t - (1 - a).sqrt() * eps) / a.sqrt())


class TinyNet(nn.Module):
    """A small random class-conditional MLP ``net(x, t, y)`` on 1x8x8 images (null class = num_classes)."""

    def __init__(self, num_classes: int = 3, hidden: int = 64):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(num_classes + 1, hidden)
        self.inp, self.time = nn.Linear(64, hidden), nn.Linear(2, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 64))

    def forward(self, x, t, y):
        h = self.inp(x.flatten(1)) + self.time(torch.stack([torch.sin(3 * t), torch.cos(3 * t)], 1)) + self.embed(y)
        return self.out(h).view_as(x)


class ShiftMean(GuidanceTerm):
    """Score of noised N(mu, 1) minus that of noised N(0, 1): ``sqrt(abar) mu`` (exact)."""

    def __init__(self, mu: float):
        super().__init__()
        self.mu = mu

    def gradient(self, state):
        return state.abar.to(state.x_t.dtype).sqrt().reshape(-1, *([1] * (state.x_t.ndim - 1))) * self.mu \
            * torch.ones_like(state.x_t)


def labels(n: int, num_classes: int = 1) -> torch.Tensor:
    return torch.arange(n) % num_classes


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ---- one step against diffusers ----------------------------------------------------------------
def test_ddpm_posterior_step_matches_diffusers():
    schedule = VPSchedule.linear()
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type="fixed_small", clip_sample=False)
    # respaced grid (10 kept steps) as diffusers custom timesteps; pairs (t, prev) incl. the full-schedule step 500->499
    grid = schedule.respaced_indices(10).tolist()
    x_t, eps = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    for timesteps, t, prev in [(list(range(T - 1, -1, -1)), 500, 499), (grid, grid[3], grid[4]),
                               (grid, grid[-2], grid[-1]), (grid, 0, None)]:
        ref.set_timesteps(timesteps=timesteps)
        abar_t = schedule.alphas_cumprod[t].item()
        abar_prev = 1.0 if prev is None else schedule.alphas_cumprod[prev].item()
        x0 = eps_to_x0(eps, x_t, torch.full((4,), abar_t))
        mean, variance = ddpm_posterior(x_t, x0, abar_t, abar_prev)
        # two noise draws pin down both the mean and the standard deviation
        for seed in (0, 1):
            z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed))
            theirs = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(seed)).prev_sample
            expected = mean + math.sqrt(variance) * z if t > 0 else mean
            torch.testing.assert_close(expected, theirs, rtol=1e-4, atol=1e-5)
    assert variance == 0.0  # the last step (t = 0) adds no noise


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_ddim_step_matches_diffusers(eta):
    schedule = VPSchedule.linear()
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(50)  # "leading": t = 980, 960, ..., 0; prev = t - 20, and abar = 1 after t = 0
    x_t, eps, z = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    for t in (980, 500, 0):
        abar_t = schedule.alphas_cumprod[t].item()
        abar_prev = schedule.alphas_cumprod[t - 20].item() if t >= 20 else 1.0
        x0 = eps_to_x0(eps, x_t, torch.full((4,), abar_t))
        ours = ddim_step(x0, eps, abar_t, abar_prev, eta, z)
        theirs = ref.step(eps, t, x_t, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# ---- whole loops against diffusers -------------------------------------------------------------
@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_loop_matches_diffusers_with_custom_timesteps(clip, variance):
    """``variance`` small / large is diffusers' ``fixed_small`` / ``fixed_large``, on a respaced grid."""
    net, seeds, steps = TinyNet(), [3, 1, 4, 1, 5, 9], 20
    y = labels(len(seeds), 3)
    ours = ddpm_sample(NetDenoiser(net, 3, clip_x0=clip), VPSchedule.linear(), y, PerSampleNoise(seeds), (1, 8, 8),
                       num_steps=steps, variance=variance)

    # diffusers: its own "linspace" grid passed as custom timesteps (so prev_t follows the grid: respacing)
    grid = DDPMScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    grid.set_timesteps(steps)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type=f"fixed_{variance}",
                        clip_sample=clip)
    ref.set_timesteps(timesteps=grid.timesteps.tolist())
    x = _diffusers_ddpm_loop(net, ref, seeds, y)
    if clip:  # samples in [-1, 1]: the absolute tolerance of the diffusers equivalence
        assert ours.abs().max() > 0.5 and (ours - x).abs().max() <= 1e-5
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=2e-4)


def _diffusers_ddpm_loop(net, ref: DDPMScheduler, seeds, y) -> torch.Tensor:
    """diffusers' DDPM loop over ``ref.timesteps`` with one generator per sample (time input ``t / (T - 1)``)."""
    T_ref = ref.config.num_train_timesteps
    gens = generators(seeds)
    x = randn_tensor((len(seeds), 1, 8, 8), generator=gens)
    with torch.no_grad():
        for t in ref.timesteps:
            eps = net(x, torch.full((len(seeds),), t.item() / (T_ref - 1)), y)
            x = ref.step(eps, t, x, generator=gens).prev_sample
    return x


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_without_respacing_matches_diffusers(variance):
    """Every training step of a 20-step linear schedule (diffusers' own betas), x0 clipped: ``fixed_small`` /
    ``fixed_large`` to 1e-5 (over 100 or 1000 steps float32 drifts to 4e-5 - 7e-5 in both, so the schedule is
    short). Catches the large variance's noise of the wrong size, or noise added at the last step."""
    net, seeds, T_short = TinyNet(), [3, 1, 4, 1, 5, 9], 20
    y = labels(len(seeds), 3)
    ref = DDPMScheduler(num_train_timesteps=T_short, beta_schedule="linear", variance_type=f"fixed_{variance}",
                        clip_sample=True)
    ref.set_timesteps(T_short)
    ours = ddpm_sample(NetDenoiser(net, 3, clip_x0=True), VPSchedule(ref.betas.double()), y, PerSampleNoise(seeds),
                       (1, 8, 8), variance=variance)
    x = _diffusers_ddpm_loop(net, ref, seeds, y)
    assert ours.abs().max() > 0.5 and (ours - x).abs().max() <= 1e-5


def _respaced_betas(steps: int) -> tuple[list[int], np.ndarray]:
    """Improved-DDPM respacing computed from diffusers' own alphas_cumprod and linspace grid."""
    grid = DDPMScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    grid.set_timesteps(steps)
    kept = sorted(grid.timesteps.tolist())
    abar = grid.alphas_cumprod.double().numpy()[kept]
    return kept, 1 - abar / np.concatenate([[1.0], abar[:-1]])


@pytest.mark.parametrize("eta, clip", [(0.0, False), (0.0, True), (0.5, True)])
def test_ddim_loop_matches_diffusers_on_respaced_betas(eta, clip):
    """diffusers' DDIM on the respaced betas (T' = steps, one inference step per kept index), the network
    called at the original kept index as improved-DDPM's respacing wrapper does."""
    net, seeds, steps = TinyNet(), [2, 7, 1, 8, 2, 8, 1, 8], 20
    y = labels(len(seeds), 3)
    ours = ddim_sample(NetDenoiser(net, 3, clip_x0=clip), VPSchedule.linear(), y, PerSampleNoise(seeds), (1, 8, 8),
                       num_steps=steps, eta=eta)

    kept, betas = _respaced_betas(steps)
    ref = DDIMScheduler(num_train_timesteps=steps, trained_betas=betas, set_alpha_to_one=True,
                        timestep_spacing="leading", steps_offset=0, clip_sample=clip)
    ref.set_timesteps(steps)
    gens = generators(seeds)
    x = randn_tensor((len(seeds), 1, 8, 8), generator=gens)
    with torch.no_grad():
        for t in ref.timesteps:
            eps = net(x, torch.full((len(seeds),), kept[t] / (T - 1)), y)
            x = ref.step(eps, t, x, eta=eta, use_clipped_model_output=clip,
                         generator=gens if eta > 0 else None).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=2e-4)


# ---- exact Gaussian model: the samplers reproduce the data distribution ------------------------
B, D = 4, 25_000  # 1e5 values: standard error of a variance ratio sqrt(2 / 1e5) = 0.45 %
SE_VAR, SE_MEAN = math.sqrt(2 / (B * D)), 1 / math.sqrt(B * D)

# (kwargs, discretisation bias allowed on top of 5 standard errors). Known biases for s = 0.5, linear schedule:
# DDPM 1000 fixed-small steps -1.5 % in variance, DDIM 1000 steps -0.6 %, EDM Heun 100 steps +0.2 %.
EXACT_RUNS = {
    "ddpm": (dict(), 0.02),
    "ddim": (dict(num_steps=1000), 0.01),
    "edm": (dict(num_steps=100, sigma_max=80.0), 0.01),
}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_exact_gaussian_denoiser_reproduces_the_data_variance(sampler):
    kwargs, bias = EXACT_RUNS[sampler]
    s = 0.5
    x = sample(sampler, GaussianDenoiser(s), VPSchedule.linear(), labels(B), PerSampleNoise(range(B)), (D,), **kwargs)
    assert x.dtype == torch.float32 and x.shape == (B, D)
    assert abs(x.var().item() / s**2 - 1) < 5 * SE_VAR + bias
    assert abs(x.mean().item()) < 5 * SE_MEAN * s


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_guidance_conversion_moves_the_mean_exactly(sampler):
    """Unconditional N(0, 1) model + the exact score difference to N(mu, 1) must sample N(mu, 1)."""
    kwargs, bias = EXACT_RUNS[sampler]
    mu = 1.5
    x = sample(sampler, GaussianDenoiser(1.0), VPSchedule.linear(), labels(B), PerSampleNoise(range(B)), (D,),
               guidance=[ShiftMean(mu)], **kwargs)
    # DDPM's mean shift Sigma_t g is first order in the step: ~1 % low at 1000 steps
    assert abs(x.mean().item() - mu) < 5 * SE_MEAN + bias * mu
    assert abs(x.var().item() - 1) < 5 * SE_VAR + bias


@pytest.mark.parametrize("abar_t, abar_prev", [(2.4e-9, 4.3e-3), (4e-5, 9.3e-5), (0.3, 0.5), (0.9, 0.99)])
def test_eps_shift_gain_is_what_a_ddim_step_does_to_a_shifted_eps(abar_t, abar_prev):
    """The gain of an eps shift against the step itself: x0_hat rebuilt from ``eps + d``, then eq. 12."""
    torch.manual_seed(0)
    x, eps, d = torch.randn(3, 1000, dtype=torch.float64)

    def step(e):
        return ddim_step(eps_to_x0(e, x, torch.tensor(abar_t, dtype=torch.float64)), e, abar_t, abar_prev)

    moved = step(eps + 1e-3 * d) - step(eps)
    assert torch.allclose(moved, -eps_shift_gain(abar_t, abar_prev) * 1e-3 * d, rtol=1e-6, atol=1e-12)


class ConstantPush(GuidanceTerm):
    """A push of 1 in every coordinate at every noise level (what a clean classifier on x0_hat can be at x_T)."""

    def gradient(self, state):
        return torch.ones_like(state.x_t)


def test_ddim_warns_when_its_first_step_amplifies_a_guidance_push():
    """A push that does not vanish at pure noise, on the cosine schedule at 25 steps (gain ~1300): warned, naming
    the gain; the same push on the linear schedule (gain 0.5), a push that vanishes with sqrt(abar) (an exact noisy
    score) and no guidance: silent. Bug caught: CFG + classifier digits samples that came out as saturated noise
    without a word."""
    gain = eps_shift_gain(*VPSchedule.cosine().respace(25)[0].alphas_cumprod[[-1, -2]].tolist())
    assert gain > 1000
    run = dict(labels=labels(4), noise=PerSampleNoise(range(4)), shape=(D,), num_steps=25)
    with pytest.warns(UserWarning, match=rf"moves the state by {re.escape(f'{gain:.3g}')} .*multiplies the guidance's eps shift by "
                                         rf"{gain:.0f} .*sample with ddpm"):
        ddim_sample(GaussianDenoiser(), VPSchedule.cosine(), guidance=[ConstantPush()], **run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ddim_sample(GaussianDenoiser(), VPSchedule.linear(), guidance=[ConstantPush()], **run)
        ddim_sample(GaussianDenoiser(), VPSchedule.cosine(), guidance=[ShiftMean(1.0)], **run)
        ddim_sample(GaussianDenoiser(), VPSchedule.cosine(), **run)


def test_edm_stochastic_churn_keeps_the_exact_marginal():
    """EDM's churn (Karras et al. 2022, alg. 2: raise sigma by gamma = S_churn / N, add fresh noise of std
    ``sqrt(t_hat^2 - t^2) S_noise``, then step from t_hat) on data N(mu, s^2) with the exact denoiser: the samples'
    mean and variance are the data's. Catches churn noise of the wrong size (e.g. ``t_hat - t`` for
    ``sqrt(t_hat^2 - t^2)``), a step taken from t instead of t_hat, and S_noise ignored (S_noise = 1.1 must inflate
    the variance: measured +21 %). Measured at 256 steps: variance +0.4 %, mean +0.0016 (64 steps: +3.4 %)."""
    s, mu = 0.5, 0.7
    run = lambda **kw: sample("edm", GaussianDenoiser(s, mu), VPSchedule.linear(), labels(B),  # noqa: E731
                              PerSampleNoise(range(B)), (D,), num_steps=256, sigma_max=80.0, **kw)
    churned = run(S_churn=40.0)
    assert abs(churned.var().item() / s**2 - 1) < 5 * SE_VAR + 0.01
    assert abs(churned.mean().item() - mu) < 5 * SE_MEAN * s
    assert not torch.equal(churned, run())  # the churn did draw noise
    assert run(S_churn=40.0, S_noise=1.1).var().item() / s**2 > 1.1


def test_edm_heun_follows_the_exact_probability_flow_and_is_second_order():
    s, seeds = 0.5, [0, 1, 2]
    latent = torch.stack([torch.randn(6, generator=g) for g in generators(seeds)]).double()

    def relative_error(num_steps):
        x = edm_heun_sample(GaussianDenoiser(s), VPSchedule.linear(), labels(3), PerSampleNoise(seeds), (6,),
                            num_steps=num_steps, sigma_max=80.0)
        exact = 80.0 * latent * s / math.sqrt(s**2 + 80.0**2)  # x(0) from x(80) = 80 * latent
        return ((x.double() - exact).abs() / exact.abs()).max().item()

    e18, e36, e100 = relative_error(18), relative_error(36), relative_error(100)
    assert e100 < 3e-3
    assert e36 < e18 / 3  # Heun: error ~ h^2, so doubling the steps cuts it about 4x (Euler: 2x)


def _mixture_flow_reference(mixture, latent: torch.Tensor, sigma_max: float, sigma_min: float) -> np.ndarray:
    """What EDM's sampler approximates, solved tightly: the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) /
    sigma`` from ``x(sigma_max) = sigma_max latent`` to sigma_min (scipy's DOP853, rtol 1e-12), then the sampler's
    last step, ``D(x; sigma_min)``. ``D = x + sigma^2 grad log p_sigma(x)`` from the mixture's exact VP score:
    ``p_sigma`` is the VP marginal at ``abar = 1 / (1 + sigma^2)`` seen at ``x sqrt(abar)``."""
    from scipy.integrate import solve_ivp

    def denoise(x, sigma):
        abar = 1 / (1 + sigma**2)
        x_vp = torch.as_tensor(x, dtype=torch.float64).reshape(len(latent), -1) * math.sqrt(abar)
        score = mixture.noised_score(x_vp, torch.full((len(latent),), abar, dtype=torch.float64))
        return (x_vp / math.sqrt(abar) + sigma**2 * math.sqrt(abar) * score).reshape(-1).numpy()

    start = (sigma_max * latent.double()).reshape(-1).numpy()
    sol = solve_ivp(lambda sigma, x: (x - denoise(x, sigma)) / sigma, (sigma_max, sigma_min), start,
                    method="DOP853", rtol=1e-12, atol=1e-12)
    return denoise(sol.y[:, -1], sigma_min).reshape(latent.shape)


def test_edm_heun_is_second_order_on_the_exact_mixture():
    """Heun's method (Karras et al. 2022, alg. 1) is second order: on the study's two-class 1D mixture (exact
    denoiser), against a tight ODE solution of the same flow, the error at N = 18, 36, 72 steps (EDM's rho = 7 grid
    from 80 down to the schedule's smallest sigma) falls by ((2N - 1) / (N - 1))^2 (4.2, 4.1: the grid has N - 1
    intervals) within 30 % (measured: 4.80, 4.35; Euler: ~2). One step alone has a local error of third order: with
    one Heun step from sigma 1 to 1 - h (num_steps = 2: the second-to-last step is the only one), halving h cuts the
    error 8x (measured 8.3 and 9.1 on a wider mixture; an Euler step there: 5.1 and 4.5). Catches: the 2nd-order
    correction skipped on one step, the second-to-last in particular (which only a count of denoiser calls saw
    before), Euler throughout, the correction's weights changed (0.6/0.4: ratio 2.3)."""
    from lightning_guidance.toy.exact_models import ExactMixtureDenoiser
    from lightning_guidance.toy.mixture1d import two_class_mixture_1d

    seeds = list(range(8))
    latent = torch.stack([torch.randn(1, generator=g) for g in generators(seeds)])
    null = torch.full((8,), 2)  # the unconditional mixture

    def error(mixture, num_steps, sigma_max, sigma_min):
        x = edm_heun_sample(ExactMixtureDenoiser(mixture), VPSchedule.linear(), null, PerSampleNoise(seeds), (1,),
                            num_steps=num_steps, sigma_max=sigma_max, sigma_min=sigma_min)
        ref = _mixture_flow_reference(mixture, latent, sigma_max, sigma_min)
        return float(np.abs(x.double().numpy() - ref).max())

    narrow = two_class_mixture_1d(1.0, 0.05)
    smin = VPSchedule.linear().sigma_min
    e18, e36, e72 = (error(narrow, n, 80.0, smin) for n in (18, 36, 72))
    for (n, coarse, fine) in [(18, e18, e36), (36, e36, e72)]:
        second_order = ((2 * n - 1) / (n - 1)) ** 2
        assert second_order / 1.3 < coarse / fine < second_order * 1.3, (n, coarse, fine)
    assert e18 < 0.02
    wide = two_class_mixture_1d(1.0, 0.5)
    one_step = [error(wide, 2, 1.0, 1.0 - h) for h in (0.4, 0.2, 0.1)]
    for coarse, fine in zip(one_step, one_step[1:]):
        assert coarse / fine > 8 / 1.3, one_step


def test_edm_denoiser_sees_vp_coordinates_and_the_schedule_time():
    """The denoiser and every guidance term see the VP time t(sigma) of diffusers' schedule (numpy's interpolation
    of log sigma). Catches: a guidance state without t (an x_t classifier on EDM would get no time)."""

    class RecordTime(GuidanceTerm):
        seen = []

        def gradient(self, state):
            self.seen.append((state.t, state.abar))
            return torch.zeros_like(state.x_t)

    schedule, model = VPSchedule.linear(), GaussianDenoiser(0.5)
    edm_heun_sample(model, schedule, labels(2), PerSampleNoise([0, 1]), (3,), num_steps=10, guidance=[RecordTime()])
    ac = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double().numpy()
    log_sigma = np.log(np.sqrt((1 - ac) / ac))
    assert len(model.calls) == 2 * 10 - 1 == len(RecordTime.seen)  # Heun: two calls per step, one at the last
    for t, abar in model.calls + RecordTime.seen:
        sigma = np.sqrt((1 - abar.double().numpy()) / abar.double().numpy())
        expected_t = np.interp(np.log(sigma), log_sigma, np.arange(T)) / (T - 1)
        np.testing.assert_allclose(t.double().numpy(), expected_t, atol=1e-5)
    # default sigma range: EDM's sigma_max = 80 (inside the linear schedule's 157) down to the schedule's minimum
    first_abar = model.calls[0][1][0].item()
    assert np.sqrt((1 - first_abar) / first_abar) == pytest.approx(80.0, rel=1e-5)
    assert model.calls[-1][1][0].item() == pytest.approx(ac[0], rel=1e-5)


def test_edm_nudge_is_added_before_the_denoiser_call():
    """At the last step (Euler only, to sigma = 0) the output is D(x_hat + delta; sigma_last), so a nudge delta
    there moves the output by s^2 / (s^2 + sigma_last^2) delta, for the exact Gaussian denoiser."""
    s, n, sigma_last, delta = 0.5, 8, 0.05, 0.3

    class NudgeLast(GuidanceTerm):
        def gradient(self, state):
            return torch.zeros_like(state.x_t)

        def edm_nudge(self, x, sigma, step, num_steps, denoise, y=None):
            if step != num_steps - 1:
                return None
            out = denoise(x)  # the VP output at this VE state: its x0 is the exact D(x; sigma)
            torch.testing.assert_close(out.x0, s**2 / (s**2 + sigma[:, None] ** 2) * x, rtol=1e-4, atol=1e-6)
            return torch.full_like(x, delta)

    def run(guidance):
        return edm_heun_sample(GaussianDenoiser(s), VPSchedule.linear(), labels(2), PerSampleNoise([4, 5]), (3,),
                               num_steps=n, sigma_min=sigma_last, sigma_max=80.0, guidance=guidance)

    moved = run([NudgeLast()]) - run([])
    torch.testing.assert_close(moved, torch.full((2, 3), s**2 / (s**2 + sigma_last**2) * delta), rtol=1e-4, atol=1e-6)


# ---- per-sample seeds, guidance state, progress --------------------------------------------------
@pytest.mark.parametrize("sampler, kwargs", [("ddpm", dict(num_steps=50)), ("ddim", dict(num_steps=20, eta=0.8)),
                                             ("edm", dict(S_churn=40.0, S_min=0.05, S_max=50.0))])
def test_a_sample_depends_only_on_its_seed(sampler, kwargs):
    model, schedule = GaussianDenoiser(0.7), VPSchedule.linear()
    few = sample(sampler, model, schedule, labels(3), PerSampleNoise([5, 6, 7]), (2, 3), **kwargs)
    many = sample(sampler, model, schedule, labels(8), PerSampleNoise(range(8)), (2, 3), **kwargs)
    assert torch.equal(few, many[5:8])
    assert not torch.equal(many[0], many[1])


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_guidance_state_and_progress(variance):
    """Terms read the Sigma_t the sampler uses: small, the posterior variance (0 at the last step); large, the
    respaced betas ``1 - abar_k / abar_prev`` of DDPM's linear betas (float64) on diffusers' grid; the first step's
    as ``max_variance``."""
    states, progress = [], []

    class Record(GuidanceTerm):
        def gradient(self, state):
            states.append(state)
            return torch.zeros_like(state.x_t)

    steps = 12
    ddpm_sample(GaussianDenoiser(), VPSchedule.linear(), labels(2), PerSampleNoise([0, 1]), (3,), num_steps=steps,
                guidance=[Record()], variance=variance, on_step=lambda i, n: progress.append((i, n)))
    assert progress == [(i, steps) for i in range(steps)]
    assert [s.step for s in states] == list(range(steps)) and {s.sampler for s in states} == {"ddpm"}
    grid = DDPMScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    grid.set_timesteps(steps)
    np.testing.assert_allclose([s.t[0].item() for s in states], grid.timesteps.numpy() / (T - 1), rtol=1e-6)
    variances = [s.variance[0].item() for s in states]
    assert all(s.max_variance[0].item() == variances[0] for s in states)
    assert variances[0] == max(variances)
    if variance == "small":
        assert variances[-1] == 0.0
    else:
        abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))[grid.timesteps.numpy()[::-1]]
        np.testing.assert_allclose(variances, (1 - abar / np.append(1.0, abar[:-1]))[::-1], rtol=1e-6)


# ---- errors --------------------------------------------------------------------------------------
def test_unknown_sampler_and_option_are_clear_errors():
    args = (GaussianDenoiser(), VPSchedule.linear(), labels(2), PerSampleNoise([0, 1]), (3,))
    with pytest.raises(ValueError, match="unknown sampler 'plms'; choose one of ddpm, ddim, edm"):
        sample("plms", *args)
    with pytest.raises(ValueError, match="the ddim sampler has no option S_churn; it takes: num_steps, eta"):
        sample("ddim", *args, S_churn=1.0)
    assert sampler_options("edm")["num_steps"] == 18 and sampler_options("edm")["rho"] == 7.0
    for call in (lambda: sample("ddpm", *args, variance="fixed_large"), lambda: ddpm_sample(*args, variance="big"),
                 lambda: check_sampling("ddpm", {"variance": "fixed_large"})):  # when a config is built
        with pytest.raises(ValueError, match=r"^unknown DDPM variance '\w+'; choose one of small, large \(small: the "
                                             r"posterior variance beta~_t, large: beta_t\)$"):
            call()
    assert sampler_options("ddpm")["variance"] == "small"  # the posterior variance unless a config says otherwise


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_labels_and_seeds_must_have_the_same_length(sampler):
    with pytest.raises(ValueError, match="3 labels but 2 seeds"):
        sample(sampler, GaussianDenoiser(), VPSchedule.linear(), labels(3), PerSampleNoise([0, 1]), (3,))


@pytest.mark.parametrize("sampler", ["ddim", "edm"])
def test_a_term_refuses_samplers_it_does_not_support(sampler):
    class DDPMOnly(ShiftMean):
        supported_samplers = ("ddpm",)

    with pytest.raises(ValueError, match=rf"^DDPMOnly cannot run on the {sampler} sampler \(supported: ddpm\)$"):
        sample(sampler, GaussianDenoiser(), VPSchedule.linear(), labels(2), PerSampleNoise([0, 1]), (3,),
               guidance=[DDPMOnly(1.0)])

    class TwoKinds(ShiftMean):
        supported_samplers = ("ddpm", "ddim")

    with pytest.raises(ValueError, match=r"^TwoKinds cannot run on the edm sampler \(supported: ddpm, ddim\)$"):
        sample("edm", GaussianDenoiser(), VPSchedule.linear(), labels(2), PerSampleNoise([0, 1]), (3,),
               guidance=[TwoKinds(1.0)])


@pytest.mark.parametrize("sampler, name, kwargs, calls_per_step",
                         [("ddpm", "DDPM", dict(num_steps=30), 1), ("ddim", "DDIM", dict(num_steps=50), 1),
                          ("edm", "EDM", dict(num_steps=18), 2)])
def test_nan_mid_sampling_names_the_step(sampler, name, kwargs, calls_per_step):
    exact, bad_step = GaussianDenoiser(), 7

    def denoiser(x_t, t, abar, y, step=None):
        out = exact(x_t, t, abar, y)
        if len(exact.calls) == bad_step * calls_per_step + 1:  # the first call of step 7
            out.eps, out.x0 = out.eps * float("nan"), out.x0 * float("nan")
        return out

    n = kwargs["num_steps"]
    with pytest.raises(FloatingPointError, match=f"non-finite sample at {name} step {bad_step}/{n}"):
        sample(sampler, denoiser, VPSchedule.linear(), labels(2), PerSampleNoise([0, 1]), (3,), **kwargs)


def test_per_sample_noise_depends_only_on_the_sample_id():
    """PerSampleNoise: row b is torch's draw from a generator seeded with seed b, so a sample's noise does not depend
    on its batch or its position in it, nor on the dtype asked for (drawn in float32, then cast). Catches: one
    generator shared by the batch, rows stacked in another order, float64 drawn directly (other numbers), a batch
    of the wrong size accepted."""
    from lightning_guidance.diffusion.noise import PerSampleNoise

    noise = PerSampleNoise(torch.tensor([5, 7, 11]))
    assert len(noise) == 3 and noise.seeds == [5, 7, 11]
    first = noise.randn((2, 3))
    second = noise.randn((2, 3))  # each generator moves on
    for b, seed in enumerate([5, 7, 11]):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(first[b], torch.randn(2, 3, generator=g))
        assert torch.equal(second[b], torch.randn(2, 3, generator=g))
    alone = PerSampleNoise([11]).randn_like(torch.zeros(1, 2, 3, dtype=torch.float64))
    assert alone.dtype == torch.float64 and torch.equal(alone[0], first[2].double())
    assert PerSampleNoise([7]).randn((2, 3), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="batch of 2 but 3 seeds"):
        PerSampleNoise([1, 2, 3]).randn_like(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="need at least one seed"):
        PerSampleNoise([])


class _NetModel:
    """The DiffusionModel protocol around a small random class-conditional MLP (2 classes, 1D points)."""

    def __init__(self):
        from lightning_guidance.nets import MLPDenoiser

        torch.manual_seed(0)
        self.net = MLPDenoiser(data_dim=1, num_classes=2, hidden_dim=16).eval()
        with torch.no_grad():  # the class embedding and the output layer start at zero: make the classes matter
            for p in self.net.parameters():
                if not p.any():
                    p.copy_(0.1 * torch.randn_like(p))
        self.num_classes, self.data_shape, self.device = 2, (1,), torch.device("cpu")
        self.prediction, self.clip_x0 = "eps", False
        self.schedule = VPSchedule.from_name("linear", 100)


def test_sample_ids_are_label_and_seed_of_the_id_whatever_the_batch():
    """sample_ids: id i gets label classes[i % len(classes)] and the noise of seed + i, so the same id gives the same
    sample alone, in another batch or another order; the guidance setting reaches the denoiser. Oracle: the sampler
    called directly on the model's net under that setting with PerSampleNoise([seed + i]). Catches: labels by
    position instead of id, seed + position, a batch_size that changes the samples, the setting not forwarded,
    on_batch batches that miss rows."""
    from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
    from lightning_guidance.diffusion.sampling import labels_for_ids, sample_ids, seeds_for_ids

    assert labels_for_ids([0, 1, 2, 3, 4], classes=[1, 0, 1]).tolist() == [1, 0, 1, 1, 0]
    assert labels_for_ids(torch.tensor([5]), classes=[7]).dtype == torch.long
    assert seeds_for_ids([2, 5], 10).tolist() == [12, 15]
    model = _NetModel()
    kw = dict(sampler="ddim", sampler_kwargs={"num_steps": 4}, setting=GuidanceSetting(2.0))
    x, y = sample_ids(model, [0, 1, 2, 3, 4], classes=[1, 0], seed=10, batch_size=2, **kw)
    assert y.tolist() == [1, 0, 1, 0, 1]
    again, y2 = sample_ids(model, [3, 0], classes=[1, 0], seed=10, **kw)
    assert y2.tolist() == [0, 1] and torch.equal(again, x[[3, 0]])
    with torch.no_grad():
        direct = sample("ddim", NetDenoiser(model.net, 2, setting=GuidanceSetting(2.0), clip_x0=False),
                        model.schedule, torch.tensor([0]), PerSampleNoise([13]), (1,), num_steps=4)
        unguided = sample("ddim", NetDenoiser(model.net, 2, clip_x0=False), model.schedule, torch.tensor([0]),
                          PerSampleNoise([13]), (1,), num_steps=4)
    torch.testing.assert_close(x[3:4], direct, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(direct, unguided, atol=1e-4)  # the CFG scale matters here, so it was forwarded
    batches = []
    assert sample_ids(model, [0, 1, 2, 3, 4], classes=[1, 0], seed=10, batch_size=3,
                      on_batch=lambda s, lab: batches.append((s, lab)), **kw) is None
    assert [len(b[0]) for b in batches] == [3, 2]
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x, rtol=1e-6, atol=1e-6)


def test_time_buckets_split_the_range_equally_and_are_named_by_their_ends():
    """Catches: buckets off by one (k vs k + 1), the range's start dropped, a name with other rounding."""
    from lightning_guidance.calibration.ece import bucket_name, time_buckets

    assert time_buckets((0.0, 1.0), 4) == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]  # exact in binary
    got = time_buckets([0.2, 0.8], 3)
    assert len(got) == 3 and got[0] == pytest.approx((0.2, 0.4)) and got[2] == pytest.approx((0.6, 0.8))
    assert time_buckets((0.1, 0.3), 1) == [(0.1, 0.3)]
    for bad in [((0.0, 1.0), 0), ((0.5, 0.5), 2), ((-0.1, 0.5), 2), ((0.2, 1.1), 2)]:
        with pytest.raises(ValueError, match=r"need num_buckets >= 1 and 0 <= lo < hi <= 1, got"):
            time_buckets(*bad)
    assert bucket_name(None) == "clean"
    assert bucket_name((0.25, 0.5)) == "t0.25-0.50"


def test_global_batch_draws_default_to_one_process_and_refuse_a_rank_outside_the_world():
    """GlobalBatchDraws() (no DDP) draws exactly what torch draws; a rank outside [0, world_size) or an empty world
    is refused. Catches: a default rank other than 0 (a single process refused or given rows of another rank), a
    check that needs both conditions to fail before it refuses."""
    from lightning_guidance.diffusion.noise import GlobalBatchDraws

    torch.manual_seed(4)
    expected = (torch.randint(0, 10, (5,)), torch.rand(5))
    torch.manual_seed(4)
    d = GlobalBatchDraws()
    assert torch.equal(d.randint(0, 10, 5), expected[0]) and torch.equal(d.rand(5), expected[1])
    for world, rank in [(2, 2), (2, -1), (0, 0), (1, 1)]:
        with pytest.raises(ValueError, match=rf"need world_size >= 1 and 0 <= rank < world_size, got {world}, {rank}"):
            GlobalBatchDraws(world, rank)


def test_edm_churn_window_and_step_indices():
    """EDM churns only at steps whose sigma lies in [S_min, S_max] (Karras et al. 2022, alg. 2), one fresh draw per
    churned step; both denoiser calls of step i (and the guidance states they build) carry step index i, the last
    step having no second call. Oracle: the sigma grid of edm_sigma_steps (diffusers-checked) and counted draws.
    Catches: a window test that ignores S_min or S_max, churn drawn at every step, the second (Heun) call labelled
    with another step (a step-scheduled term or CFG interval then acts at the wrong time)."""
    from lightning_guidance.diffusion.plug import GuidanceTerm
    from lightning_guidance.diffusion.schedules import edm_sigma_steps

    class CountingNoise(PerSampleNoise):
        draws = 0

        def randn(self, shape, dtype=torch.float32):
            CountingNoise.draws += 1
            return super().randn(shape, dtype)

    class StepRecorder(GuidanceTerm):
        def __init__(self):
            super().__init__(1.0)
            self.steps = []

        def gradient(self, state):
            self.steps.append(state.step)
            return torch.zeros_like(state.x_t)

    class StepDenoiser(GaussianDenoiser):
        def __call__(self, x_t, t, abar, y, step=None):
            self.steps.append(step.index)
            return super().__call__(x_t, t, abar, y)

    n, s_min, s_max = 10, 0.5, 5.0
    sigmas = edm_sigma_steps(n, VPSchedule.linear().sigma_min, 80.0)[:-1]
    in_window = int(((sigmas >= s_min) & (sigmas <= s_max)).sum())
    assert 0 < in_window < n
    den, rec = StepDenoiser(0.5), StepRecorder()
    den.steps = []
    CountingNoise.draws = 0
    sample("edm", den, VPSchedule.linear(), labels(3), CountingNoise(range(3)), (4,), num_steps=n, sigma_max=80.0,
           S_churn=5.0, S_min=s_min, S_max=s_max, guidance=[rec])
    assert CountingNoise.draws == 1 + in_window  # the initial latent, then one draw per churned step
    expected = [i for i in range(n) for _ in range(2 if i < n - 1 else 1)]
    assert den.steps == expected and rec.steps == expected
    CountingNoise.draws = 0
    outside = sample("edm", GaussianDenoiser(0.5), VPSchedule.linear(), labels(3), CountingNoise(range(3)), (4,),
                     num_steps=n, sigma_max=80.0, S_churn=5.0, S_min=100.0)
    assert CountingNoise.draws == 1
    plain = sample("edm", GaussianDenoiser(0.5), VPSchedule.linear(), labels(3), PerSampleNoise(range(3)), (4,),
                   num_steps=n, sigma_max=80.0)
    assert torch.equal(outside, plain)


# ---- classifier guidance with a clipping denoiser: guided-diffusion's order -----------------------------------
def _linear_classifier_gradient(x: torch.Tensor, abar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∇_x log softmax(W x / sqrt(1 + abar))_y`` of a fixed linear classifier on 1x8x8 images (autograd)."""
    w = torch.linspace(-1, 1, 3 * 64, dtype=torch.float64).reshape(3, 64).sin() * 0.5
    with torch.enable_grad():
        leaf = x.detach().double().requires_grad_(True)
        logits = leaf.flatten(1) @ w.T / (1 + abar.double().reshape(-1, 1)).sqrt()
        picked = torch.log_softmax(logits, dim=1).gather(1, y.reshape(-1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, leaf)
    return grad.to(x.dtype)


class LinearClassifierGuidance(GuidanceTerm):
    def gradient(self, state):
        return _linear_classifier_gradient(state.x_t, state.abar, state.y)


def _guided_diffusion_loop(net, sampler: str, clip: bool, eta: float, steps: int, scale: float, seeds, y, shape,
                           variance: str = "small"):
    """An independent transcription of openai/guided-diffusion's sampling loops (gaussian_diffusion.py, respace.py),
    float64 arithmetic, the network in float32 at the original step index (t / (T - 1), the suite's time input):

    - respacing: ``space_timesteps(T, [steps])`` keeps ``round(i (T - 1) / (steps - 1))``; the respaced betas are
      ``1 - abar[k] / abar[previous kept]``;
    - ``p_mean_variance``: ``pred_xstart = (x - sqrt(1 - abar) eps) / sqrt(abar)``, clamped to [-1, 1] when
      ``clip_denoised``; the posterior mean of q(x_prev | x, pred_xstart) with the fixed-small variance, or
      fixed-large (``beta``; at the last step guided-diffusion takes the next-to-last ``beta~``, the suite and
      diffusers ``beta``, so the transcription takes ``beta`` there);
    - ``condition_mean`` (p_sample): ``mean + variance * cond_fn``;
    - ``condition_score`` (ddim_sample): ``eps = eps(pred_xstart) - sqrt(1 - abar) cond_fn``, ``pred_xstart`` rebuilt
      from it (no clamp); then eps re-derived from ``pred_xstart`` and DDIM's eq. 12 with eta.
    ``cond_fn`` is the classifier gradient times ``scale``. Each sample draws its noise from its own generator."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)  # get_named_beta_schedule("linear", 1000)
    base = np.cumprod(1.0 - betas)
    stride = (T - 1) / (steps - 1)
    kept = sorted({round(i * stride) for i in range(steps)})
    abar = base[kept]
    abar_prev = np.append(1.0, abar[:-1])
    gens = generators(seeds)
    draw = lambda: torch.stack([torch.randn(shape, generator=g) for g in gens]).double()  # noqa: E731
    x = draw()
    for i in reversed(range(len(kept))):
        a, a_prev = float(abar[i]), float(abar_prev[i])
        with torch.no_grad():
            eps = net(x.float(), torch.full((len(y),), kept[i] / (T - 1)), y).double()
        pred_xstart = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if clip:
            pred_xstart = pred_xstart.clamp(-1, 1)
        cond = scale * _linear_classifier_gradient(x, torch.full((len(y),), a), y).double()
        if sampler == "ddpm":
            beta = 1 - a / a_prev
            mean = (math.sqrt(a_prev) * beta / (1 - a)) * pred_xstart + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)) * x
            sigma2 = beta * (1 - a_prev) / (1 - a) if variance == "small" else beta
            mean = mean + sigma2 * cond
            noise = draw()
            x = mean + (math.sqrt(sigma2) * noise if i > 0 else 0)
        else:
            eps = (x - math.sqrt(a) * pred_xstart) / math.sqrt(1 - a)
            eps = eps - math.sqrt(1 - a) * cond
            pred_xstart = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            eps = (x - math.sqrt(a) * pred_xstart) / math.sqrt(1 - a)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
            x = pred_xstart * math.sqrt(a_prev) + math.sqrt(1 - a_prev - sigma**2) * eps
            if eta > 0:
                noise = draw()
                if i > 0:
                    x = x + sigma * noise
    return x


@pytest.mark.parametrize("sampler, eta, clip, variance", [("ddim", 0.0, True, None), ("ddim", 0.5, True, None),
                                                          ("ddim", 0.0, False, None), ("ddpm", 0.0, True, "small"),
                                                          ("ddpm", 0.0, True, "large")])
def test_classifier_guidance_with_clipping_follows_guided_diffusion(sampler, eta, clip, variance):
    """DDIM + classifier guidance is guided-diffusion's ``condition_score`` (the eps implied by the *clipped* x0_hat
    is shifted by -sqrt(1 - abar) g, x0_hat is rebuilt from it and not clipped again); DDPM + guidance is its
    ``condition_mean``. Oracle: the transcription above, on one random net, seeds and classifier. The guidance is
    strong enough that x0_hat leaves [-1, 1]. Catches: the raw (unclipped) eps shifted, a clip after guidance
    (measured before the fix: 0.79 apart at eta 0), guidance on x0 with another factor."""
    net, seeds, steps, scale = TinyNet(), [3, 1, 4, 1, 5, 9], 10, 4.0
    y = labels(len(seeds), 3)
    kwargs = dict(num_steps=steps, **(dict(eta=eta) if sampler == "ddim" else dict(variance=variance)))
    ours = sample(sampler, NetDenoiser(net, 3, clip_x0=clip), VPSchedule.linear(), y, PerSampleNoise(seeds),
                  (1, 8, 8), guidance=[LinearClassifierGuidance(scale)], **kwargs)
    ref = _guided_diffusion_loop(net, sampler, clip, eta, steps, scale, seeds, y, (1, 8, 8), variance or "small")
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=2e-4)
    # the case matters: without guidance, or with the guided x0_hat clipped again, the samples differ
    plain = sample(sampler, NetDenoiser(net, 3, clip_x0=clip), VPSchedule.linear(), y, PerSampleNoise(seeds),
                   (1, 8, 8), **kwargs)
    assert (plain.double() - ref).abs().max() > 0.1


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_every_sampler_clips_x0_hat_before_guidance_and_never_after(sampler):
    """One rule for all three samplers (docs/math.md §2): a clipping denoiser's x0_hat is clamped to [-1, 1], then
    guidance moves the prediction, and nothing clamps it again. Data N(0, 4^2) puts some of the last x0_hat outside
    [-1, 1]; a correction ``g = 1e3 sign(x0_hat)`` at the last step only then returns the clamped x0_hat moved outward
    by the last step's shift of the clean estimate: (1 - abar_0) / sqrt(abar_0) g for DDIM and EDM (EDM's
    sigma_min^2 sqrt(abar) g is the same number), 0 for DDPM (its last posterior variance is 0). Catches: a re-clip
    after guidance (the samples would end at +-1), EDM stepping with the unclipped estimate."""

    class ClippingGaussian(GaussianDenoiser):
        """Clamps its x0_hat to [-1, 1] and says so (``clip_x0``), as NetDenoiser does; keeps the last call's."""
        clip_x0 = True

        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            self.raw_x0, self.x0 = out.x0, out.x0.clamp(-1, 1)
            return DenoiserOutput(eps=out.eps, x0=self.x0)

    push = 1e3

    class PushOutwardAtTheEnd(GuidanceTerm):
        def gradient(self, state):
            last = state.step == state.num_steps - 1
            return push * state.out.x0.sign() if last else torch.zeros_like(state.x_t)

    den = ClippingGaussian(4.0)
    x = sample(sampler, den, VPSchedule.linear(), labels(4), PerSampleNoise(range(4)), (6,),
               guidance=[PushOutwardAtTheEnd()], num_steps=4)
    assert (den.raw_x0.abs() > 1).sum() >= 3  # the clamp acted on the last estimate
    abar0 = float(np.cumprod(1 - np.linspace(1e-4, 0.02, T))[0])
    shift = 0.0 if sampler == "ddpm" else (1 - abar0) / math.sqrt(abar0) * push  # 0.100005
    torch.testing.assert_close(x, den.x0 + shift * den.x0.sign(), rtol=1e-5, atol=1e-5)
    # without guidance the samples stay inside the data range, and the clip acts (the unclipped model leaves it)
    clipped = sample(sampler, ClippingGaussian(4.0), VPSchedule.linear(), labels(4), PerSampleNoise(range(4)), (6,),
                     num_steps=4)
    free = sample(sampler, GaussianDenoiser(4.0), VPSchedule.linear(), labels(4), PerSampleNoise(range(4)), (6,),
                  num_steps=4)
    assert clipped.abs().max() <= 1.0 and free.abs().max() > 1.0
