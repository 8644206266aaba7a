"""DDPM ancestral sampling (Ho et al. 2020, alg. 2) with improved-DDPM respacing (Nichol & Dhariwal 2021, §4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .plug import GuidanceState, GuidanceTerm, denoise_for_guidance, total_guidance
from .cfg_rule import SamplingStep
from .denoiser import Denoiser
from .noise import PerSampleNoise
from .schedules import VPSchedule
from .sampler_steps import begin_sampling, end_of_step


#: the reverse-step variances ``ddpm_sample`` takes (Ho et al. 2020, §3.2): ``small`` the posterior variance
#: ``beta~_t`` (diffusers' ``fixed_small``), ``large`` the step's beta ``beta_t`` (diffusers' ``fixed_large``)
DDPM_VARIANCES = ("small", "large")


def check_ddpm_variance(variance: str) -> str:
    """``variance`` if it is one of :data:`DDPM_VARIANCES`, else one line naming them."""
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {', '.join(DDPM_VARIANCES)} (small: the "
                         "posterior variance beta~_t, large: beta_t)")
    return variance


def ddpm_step_variance(abar_t: float, abar_prev: float, variance: str = "small") -> float:
    """The reverse step's ``sigma_t^2`` (Ho et al. 2020, §3.2) between two kept steps, with
    ``beta = 1 - abar_t / abar_prev``: ``small``: ``beta~ = beta (1 - abar_prev) / (1 - abar_t)`` (0 at the last
    step); ``large``: ``beta``, as diffusers' ``fixed_large`` (at the last step, which adds no noise and where only
    guidance reads it, Ho et al.'s and ADM's code take the next-to-last step's ``beta~`` instead)."""
    beta = 1.0 - abar_t / abar_prev
    return beta * (1.0 - abar_prev) / (1.0 - abar_t) if check_ddpm_variance(variance) == "small" else beta


def ddpm_posterior(x_t: Tensor, x0: Tensor, abar_t: float, abar_prev: float) -> tuple[Tensor, float]:
    """Mean and variance of ``q(x_prev | x_t, x0)`` (Ho et al. 2020, eqs. 6-7) between two kept steps.

    With ``beta = 1 - abar_t / abar_prev`` (respaced beta):
    ``mean = sqrt(abar_prev) beta / (1 - abar_t) x0 + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) x_t`` and
    ``variance = beta (1 - abar_prev) / (1 - abar_t)`` (the "fixed small" choice sigma_t^2 = beta~_t).
    ``abar_prev = 1`` at the last step, where the variance is 0 and the mean is ``x0``.
    """
    beta = 1.0 - abar_t / abar_prev
    mean = (math.sqrt(abar_prev) * beta / (1.0 - abar_t)) * x0 \
        + (math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)) * x_t
    return mean, ddpm_step_variance(abar_t, abar_prev, "small")


def ddpm_sample(denoiser: Denoiser, schedule: VPSchedule, labels: Tensor, noise: PerSampleNoise,
                shape: tuple[int, ...], *, num_steps: int | None = None, guidance: Sequence[GuidanceTerm] = (),
                on_step: Callable[[int, int], None] | None = None, variance: str = "small") -> Tensor:
    """Ancestral sampling ``x_prev = mu(x_t, x0_hat) + Sigma_t g + sqrt(Sigma_t) z`` from x_T to x_0.

    ``num_steps < T`` respaces the schedule (betas from ``schedule.respace``) while the network still sees the
    original kept step indices, as improved-DDPM does. ``x0_hat`` is the denoiser's ``out.x0`` (clipped if the
    denoiser clips). ``variance``: ``Sigma_t = sigma_t^2`` is ``small`` (the posterior ``beta~_t``) or ``large``
    (``beta_t`` of the respaced step), :func:`ddpm_step_variance`. Guidance ``g`` shifts the mean by ``Sigma_t g``
    with that ``Sigma_t`` (Dhariwal & Nichol 2021, alg. 1); terms read it as ``state.variance``, and the first step's
    as ``state.max_variance``.
    Randomness: x_T is each sample's first draw, then one draw per step except the last, so a sample depends
    only on its seed. Steps count from 0 (the noisiest); ``on_step(step, num_steps)`` runs after each.
    """
    check_ddpm_variance(variance)
    batch = begin_sampling("ddpm", labels, noise, guidance, torch.float32, noise.device)
    respaced, kept = schedule.respace(schedule.num_train_steps if num_steps is None else num_steps)
    abars = respaced.alphas_cumprod.tolist()
    n = len(abars)

    # x_T ~ N(0, I), the first draw of every sample's generator
    x = noise.randn(shape)
    max_variance = None
    for step, k in enumerate(range(n - 1, -1, -1)):
        abar_t, abar_prev = abars[k], (abars[k - 1] if k > 0 else 1.0)
        t, abar = batch(schedule.model_time(kept[k])), batch(abar_t)

        # Posterior q(x_prev | x_t, x0_hat) with the model's clean-data estimate
        out, graph = denoise_for_guidance(denoiser, guidance, x, t, abar, labels, SamplingStep(step, n))
        mean, _ = ddpm_posterior(x, out.x0, abar_t, abar_prev)
        sigma2 = ddpm_step_variance(abar_t, abar_prev, variance)
        if max_variance is None:
            max_variance = sigma2

        # Guidance: mean shift by Sigma_t g
        state = GuidanceState(x_t=x, t=t, abar=abar, y=labels, out=out, step=step, num_steps=n, sampler="ddpm",
                              denoiser=denoiser, denoiser_graph=graph, variance=batch(sigma2), max_variance=batch(max_variance))
        g = total_guidance(guidance, state)
        if g is not None:
            mean = mean + sigma2 * g

        # Sample x_prev; the last step returns the mean (no noise, as in Ho et al. alg. 2)
        x = mean + math.sqrt(sigma2) * noise.randn_like(mean) if k > 0 else mean
        end_of_step(x, "DDPM", step, n, on_step)
    return x
